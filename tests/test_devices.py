"""Device placement without a GPU: every scorer, validation and training step runs on ``meta`` tensors.

A ``meta`` tensor has a shape and a device but no data, and PyTorch refuses to combine it with a tensor on
another device. Running the evaluation scorers, validation and a training step with the method and the
features on ``meta`` therefore fails on any tensor the code creates on the CPU and mixes in — the bug that
breaks the first validation on a GPU — while CI has no GPU. (Reading values, e.g. ``.item()``, also fails on
``meta``, which keeps host syncs out of these paths.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.data.episodes import EpisodeSampler
from fsar.eval import episode_correct, episode_label_tensors, episode_scorer
from fsar.methods import build_method, list_methods, method_info
from fsar.methods.base import Supervision
from fsar.training import EpisodicLoss, TrainConfig, episode_batch, training_step

META = torch.device("meta")
CACHED = [n for n in list_methods() if method_info(n).input_kind != "pixels"]
PER_VIDEO = {"frames": (6,), "patches": (2, 2, 6)}
WAY, SHOT = 3, 2


def split(name: str, *, videos: int = 24, frames: int = 4):
    labels = np.repeat(np.arange(6), videos // 6)
    shape = (videos, frames, *PER_VIDEO[method_info(name).input_kind])
    return labels, torch.empty(shape, device=META)


def knobs_for(name: str) -> dict:
    fields = method_info(name).config.__dataclass_fields__
    return {k: v for k, v in {"proj_dim": 8, "learn_scale": True, "num_frames": 4}.items() if k in fields}


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("limit", [0, 1_000_000], ids=["gathered", "split-table"])
def test_evaluation_scorers_stay_on_the_features_device(name, limit):
    labels, feats = split(name)
    method = build_method(name, feature_dim=6, text_dim=6, **knobs_for(name)).to(META).eval()
    text = torch.empty(6, 6, device=META)  # class-name embeddings, one row per label
    episodes = EpisodeSampler(labels, way=WAY, shot=SHOT, query=1, seed=0).batch(0, 5)
    with torch.no_grad():
        logits = episode_scorer(method, feats, WAY, class_text=text, device=META, table_limit=limit,
                                pair_limit=limit)(episodes)
    assert logits.device == META and logits.shape == (5, WAY, WAY)
    correct = episode_correct(method, lambda: episode_scorer(method, feats, WAY, class_text=text, device=META),
                              episodes, batch_size=2)
    assert correct.device == META and correct.shape == (5,)


@pytest.mark.parametrize("name", CACHED)
def test_a_training_step_stays_on_the_device(name):
    labels, feats = split(name)
    method = build_method(name, feature_dim=6, text_dim=6, **knobs_for(name)).to(META)
    config = TrainConfig(method=name, out="unused", way=WAY, shot=SHOT, query=2)
    sampler = EpisodeSampler(labels, way=WAY, shot=SHOT, query=2, seed=0)
    episodes = sampler.batch(0, 3)
    support, query = episode_batch(feats, episodes, META)
    s_lab, q_lab = episode_label_tensors(episodes, META)
    text = torch.empty(3, WAY, 6, device=META) if method.uses_text else None
    masks = None
    if method_info(name).input_kind == "patches":  # mask supervision as the mask-file table delivers it
        masks = Supervision(support_masks=torch.empty(3, WAY * SHOT, 4, 2, 2, device=META),
                            query_masks=torch.empty(3, WAY * 2, 4, 2, 2, device=META))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad] or [torch.zeros(1, device=META)], lr=0.1)
    loss, acc = training_step(EpisodicLoss(method), opt, method, support, s_lab, query, q_lab, config,
                              class_text=text, supervision=masks)
    assert loss.device == META and acc.device == META


def test_host_features_reach_the_device_per_batch():
    """Features kept on the host (fp16) arrive on the training device as fp32, gathered per episode."""
    labels = np.repeat(np.arange(6), 4)
    host = torch.randn(24, 4, 6).half()
    episodes = EpisodeSampler(labels, way=WAY, shot=SHOT, query=2, seed=0).batch(0, 3)
    support, query = episode_batch(host, episodes, META)
    assert support.device == META and support.dtype == torch.float32 and support.shape == (3, WAY * SHOT, 4, 6)
    on_cpu, _ = episode_batch(host, episodes, torch.device("cpu"))
    expected = host[torch.as_tensor(episodes.support.reshape(3, -1))].float()
    torch.testing.assert_close(on_cpu, expected)
    assert query.shape == (3, WAY * 2, 4, 6)
