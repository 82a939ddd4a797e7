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
from fsar.data.sections import StoreData
from fsar.devices import episode_class_text, episode_indices, episode_label_tensors, to_device
from fsar.evaluation.scoring import FeatureSplit, episode_correct, episode_scorer
from fsar.methods import build_method, list_methods, method_info
from fsar.methods.base import Supervision
from fsar.sources.base import StepBatch
from fsar.training.config import TrainConfig
from fsar.training.loop import EpisodicLoss, training_step

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
@pytest.mark.parametrize("limit", [0, 1_000_000], ids=["gathered", "pair-table"])
def test_evaluation_scorers_stay_on_the_features_device(name, limit):
    labels, feats = split(name)
    method = build_method(name, feature_dim=6, text_dim=6, **knobs_for(name)).to(META).eval()
    text = torch.empty(6, 6, device=META)  # class-name embeddings, one row per label
    episodes = EpisodeSampler(labels, way=WAY, shot=SHOT, query=1, seed=0).batch(0, 5)
    with torch.no_grad():
        encoded = FeatureSplit(feats).encode(method, META)
        logits = episode_scorer(method, encoded, WAY, class_text=text, pair_limit=limit)(episodes)
    assert logits.device == META and logits.shape == (5, WAY, WAY)
    correct = episode_correct(method, lambda: episode_scorer(method, FeatureSplit(feats).encode(method, META), WAY,
                                                             class_text=text), episodes, batch_size=2)
    assert correct.device == META and correct.shape == (5,)


class MetaSource:
    """The cached-feature source's per-step side, on ``meta`` tensors: inputs cast on the device, class text
    and mask supervision made there."""

    autocast = False
    may_skip_steps = False

    def __init__(self, masks: bool) -> None:
        self.masks = masks

    def method_inputs(self, inputs, method, device):
        return to_device(inputs, device, dtype=torch.float32)

    def episode_extras(self, episodes, method, device):
        text = episode_class_text(torch.empty(6, 6, device=device), episodes) if method.uses_text else None
        supervision = None
        if self.masks:  # mask supervision as the mask-file table delivers it
            e = len(episodes)
            supervision = Supervision(support_masks=torch.empty(e, WAY * SHOT, 4, 2, 2, device=device),
                                      query_masks=torch.empty(e, WAY * 2, 4, 2, 2, device=device))
        return text, supervision


@pytest.mark.parametrize("name", CACHED)
def test_a_training_step_stays_on_the_device(name):
    labels, feats = split(name)
    method = build_method(name, feature_dim=6, text_dim=6, **knobs_for(name)).to(META)
    config = TrainConfig(method=name, out="unused", data=StoreData(store="unused"), way=WAY, shot=SHOT, query=2)
    episodes = EpisodeSampler(labels, way=WAY, shot=SHOT, query=2, seed=0).batch(0, 3)
    s_idx, q_idx = episode_indices(episodes, META)
    batch = StepBatch(torch.cat([feats[s_idx], feats[q_idx]], dim=1), episodes)
    s_lab, q_lab = (lab[0] for lab in episode_label_tensors(episodes, META))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad] or [torch.zeros(1, device=META)], lr=0.1)
    source = MetaSource(masks=method_info(name).input_kind == "patches")
    loss, acc, *_ = training_step(EpisodicLoss(method), opt, method, source, batch, config, s_lab, q_lab,
                                  per_forward=2, device=META)
    assert loss.device == META and acc.device == META


def test_host_features_reach_the_device_per_batch():
    """Features kept on the host (fp16) arrive on the training device as fp32, gathered per episode."""
    labels = np.repeat(np.arange(6), 4)
    host = torch.randn(24, 4, 6).half()
    episodes = EpisodeSampler(labels, way=WAY, shot=SHOT, query=2, seed=0).batch(0, 3)
    s_idx, _ = episode_indices(episodes, host.device)
    support = to_device(host[s_idx], META, dtype=torch.float32)
    assert support.device == META and support.dtype == torch.float32 and support.shape == (3, WAY * SHOT, 4, 6)
    on_cpu = to_device(host[s_idx], torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(on_cpu, host[torch.as_tensor(episodes.support.reshape(3, -1))].float())
