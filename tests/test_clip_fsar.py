"""fsar.methods.clip_fsar: text-modulated supports, text-free queries, OTAM matching, the video–text loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.config import ConfigError
from fsar.data.episodes import EpisodeSampler
from fsar.devices import episode_class_text
from fsar.evaluation.scoring import FeatureSplit, episode_scorer, gather_episodes
from fsar.methods import build_method, method_info
from fsar.methods.base import Supervision
from fsar.ops.frame_distance import pairwise_frame_distance
from fsar.ops.soft_dtw import otam_distance

DIM = 16
SMALL = {"mlp_dim": 32, "heads": 4}


def episode(*, batch: int = 2, way: int = 3, shot: int = 2, n_query: int = 2, frames: int = 5, seed: int = 0):
    """Random episodes, labels shuffled per episode: support, labels, query, query labels, class text."""
    gen = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> torch.Tensor:
        base = torch.arange(way).repeat_interleave(per_class)
        return torch.stack([base[torch.randperm(len(base), generator=gen)] for _ in range(batch)])

    s_lab, q_lab = labels(shot), labels(n_query)
    support = torch.randn(batch, way * shot, frames, DIM, generator=gen)
    query = torch.randn(batch, way * n_query, frames, DIM, generator=gen)
    return support, s_lab, query, q_lab, torch.randn(batch, way, DIM, generator=gen)


def method(**knobs):
    torch.manual_seed(0)
    return build_method("clip_fsar", feature_dim=DIM, text_dim=DIM, **(SMALL | knobs))


def test_registered_as_a_frame_method_that_needs_text():
    info = method_info("clip_fsar")
    assert info.input_kind == "frames" and info.needs_text
    assert method().uses_text
    with pytest.raises(ConfigError, match="clip_fsar: text_loss_weight must be >= 0"):
        method(text_loss_weight=-1.0)
    with pytest.raises(ConfigError, match="clip_fsar: heads must be >= 1"):
        method(heads=0)


def test_refused_without_text():
    support, labels, query, _, _ = episode()
    with pytest.raises(ValueError, match="needs class_text.*CLIP backbone that has a text tower"):
        method().eval()(support, labels, query, 3)


def test_refused_on_a_store_without_class_text(tmp_path):
    from helpers import config, make_signal_store

    from fsar.training.loop import train_worker

    store = make_signal_store(tmp_path / "store")
    with pytest.raises(ConfigError, match="clip_fsar needs class-name text.*text tower"):
        train_worker(config(store, tmp_path / "run", method="clip_fsar", knobs={}), report=lambda m, p: None)


def test_matches_otam_on_the_transformed_frames():
    """Logits = -(class mean of bidirectional OTAM) between text-free query frames and support frames passed
    through the same transformer with their own class's text token appended."""
    net = method(gamma=0.2).eval()
    support, labels, query, _, text = episode()
    with torch.no_grad():
        logits = net(support, labels, query, 3, class_text=text)
        for b in range(2):
            q = net.transformer(query[b])
            s = torch.stack([net.transformer(support[b, j], text[b, labels[b, j]][None]) for j in range(6)])
            pair = otam_distance(pairwise_frame_distance(q[None], s[None])[0], 0.2)
            expected = -torch.stack([pair[:, labels[b] == c].mean(1) for c in range(3)], dim=1)
            torch.testing.assert_close(logits[b], expected)


def test_the_text_token_modulates_the_prototypes():
    net = method().eval()
    support, labels, query, _, text = episode()
    with torch.no_grad():
        logits = net(support, labels, query, 3, class_text=text)
        other = text.clone()
        other[:, 1] = torch.randn(2, DIM)  # another name for class 1 only
        changed = net(support, labels, query, 3, class_text=other)
    assert not torch.allclose(changed[..., 1], logits[..., 1], atol=1e-4)
    torch.testing.assert_close(changed[..., [0, 2]], logits[..., [0, 2]])  # the other classes' prototypes stay


@pytest.mark.parametrize("merge", [False, True])
def test_logits_never_see_query_labels_nor_other_queries(merge):
    net = method(merge_support=merge).eval()
    support, labels, query, q_lab, text = episode()
    with torch.no_grad():
        plain = net(support, labels, query, 3, class_text=text)
        for q in (q_lab, (q_lab + 1) % 3):
            out = net.forward_with_aux(support, labels, query, 3, class_text=text,
                                       supervision=Supervision(query_labels=q))
            torch.testing.assert_close(out.logits, plain)
        alone = net(support, labels, query[:, :1], 3, class_text=text)
        others = query.clone()
        others[:, 1:] = 5 * torch.randn_like(others[:, 1:])
        changed = net(support, labels, others, 3, class_text=text)
    torch.testing.assert_close(alone[:, 0], plain[:, 0])
    torch.testing.assert_close(changed[:, 0], plain[:, 0])


@pytest.mark.parametrize("shot", [1, 3])
def test_encode_once_evaluation_equals_the_plain_forward(shot):
    labels = np.repeat(np.arange(6), 5)
    feats = torch.randn(len(labels), 5, DIM)
    table = torch.randn(6, DIM)
    net = method().eval()
    eps = EpisodeSampler(labels, way=3, shot=shot, query=2, seed=1).batch(0, 20)
    support, s_lab, query, _ = gather_episodes(feats, eps)
    with torch.no_grad():
        expected = net(support, s_lab, query, 3, class_text=episode_class_text(table, eps))
        got = episode_scorer(net, FeatureSplit(feats).encode(net, torch.device("cpu")), 3, class_text=table)(eps)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_video_text_loss_in_training_only_and_off_at_weight_zero():
    support, labels, query, q_lab, text = episode()
    net = method().train()
    out = net.forward_with_aux(support, labels, query, 3, class_text=text, supervision=Supervision(query_labels=q_lab))
    assert set(out.aux) == {"text_ce"} and out.aux["text_ce"] > 0
    # Weighted: twice the weight, twice the loss (dropout off so both passes agree).
    nodrop = {"attn_dropout": 0.0, "ffn_dropout": 0.0}
    one = method(text_loss_weight=1.0, **nodrop).train()
    two = method(text_loss_weight=2.0, **nodrop).train()
    sup = Supervision(query_labels=q_lab)
    torch.testing.assert_close(two.forward_with_aux(support, labels, query, 3, class_text=text, supervision=sup).aux["text_ce"],
                               2 * one.forward_with_aux(support, labels, query, 3, class_text=text, supervision=sup).aux["text_ce"])
    # Query labels enter the loss: wrong ones raise it.
    wrong = one.forward_with_aux(support, labels, query, 3, class_text=text, supervision=Supervision(query_labels=(q_lab + 1) % 3))
    assert not torch.allclose(wrong.aux["text_ce"], one.forward_with_aux(support, labels, query, 3, class_text=text,
                                                                         supervision=sup).aux["text_ce"])
    assert not net.eval().forward_with_aux(support, labels, query, 3, class_text=text).aux
    off = method(text_loss_weight=0.0).train()
    assert off.text_log_scale is None
    assert not off.forward_with_aux(support, labels, query, 3, class_text=text, supervision=sup).aux


def test_a_text_width_other_than_the_frames_gets_a_projection():
    net = build_method("clip_fsar", feature_dim=DIM, text_dim=8, **SMALL).eval()
    support, labels, query, _, _ = episode()
    assert net(support, labels, query, 3, class_text=torch.randn(2, 3, 8)).shape == (2, 6, 3)
    with pytest.raises(ValueError, match="class_text has width 8"):
        method().eval()(support, labels, query, 3, class_text=torch.randn(2, 3, 8))


def test_short_training_run_lowers_the_loss(tmp_path):
    """On a store with class text, a few seconds of training lower the episodic loss (CE + text_ce)."""
    from helpers import config, make_signal_store

    from fsar.training.loop import train_worker

    store = make_signal_store(tmp_path / "store", text=True)
    reports = []
    cfg = config(store, tmp_path / "run", method="clip_fsar", knobs={"mlp_dim": 64, "heads": 4}, steps=40,
                 val_every=10, val_episodes=50, lr=3e-3)
    train_worker(cfg, report=lambda m, p: reports.append(m))
    losses = [m["train_loss"] for m in reports]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
