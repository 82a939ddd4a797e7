"""fsar.methods.trx: frame tuples, class-restricted tuple attention, the encode-once path, training, knob errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fsar.config import ConfigError
from fsar.methods import build_method
from fsar.methods.base import index_encoding
from fsar.methods.parts import sinusoid_code
from fsar.methods.trx_tuples import tuple_counts


def small(**knobs):
    torch.manual_seed(0)
    return build_method("trx", feature_dim=knobs.pop("feature_dim", 6), **({"trans_linear_out_dim": 10} | knobs))


def reference_logits(method, support, labels, query, way):
    """One episode, one class at a time, the prototype formed explicitly: the paper's definition."""
    enc_s, enc_q = method.encode(support), method.encode(query)
    counts = tuple_counts(enc_q.keys.shape[-2], method.config.temporal_set)
    logits = torch.zeros(len(query), way, dtype=support.dtype)
    start = 0
    for count in counts:
        part = slice(start, start + count)
        start += count
        for c in range(way):
            k = enc_s.keys[labels == c, part].reshape(-1, enc_s.keys.shape[-1])  # all shots' tuples of class c
            v = enc_s.values[labels == c, part].reshape(-1, enc_s.values.shape[-1])
            for i in range(len(query)):
                attn = torch.softmax(enc_q.keys[i, part] @ k.T / math.sqrt(k.shape[-1]), dim=-1)
                prototype = attn @ v
                logits[i, c] -= ((enc_q.values[i, part] - prototype) ** 2).sum() / count
    return logits / len(counts)


def test_tuples_are_pairs_and_triples_in_combinations_order():
    method = small(pe_scale=0.0).eval()
    video = torch.randn(8, 6, dtype=torch.float64)
    method = method.double()
    enc = method.encode(video)
    assert tuple_counts(enc.keys.shape[-2], [2, 3]) == [28, 56] and enc.values.shape == (84, 10)
    pairs = [(0, 1), (0, 2), (0, 7), (1, 2), (6, 7)]  # positions 0, 1, 6, 7 and 27 of the pairs
    for row, (a, b) in zip([0, 1, 6, 7, 27], pairs, strict=True):
        torch.testing.assert_close(enc.values[row], method.value_maps[0](torch.cat([video[a], video[b]])))
    for row, (a, b, c) in zip([0, 1, 55], [(0, 1, 2), (0, 1, 3), (5, 6, 7)], strict=True):
        concat = torch.cat([video[a], video[b], video[c]])
        torch.testing.assert_close(enc.keys[28 + row], method.key_norms[1](method.key_maps[1](concat)))
        torch.testing.assert_close(enc.values[28 + row], method.value_maps[1](concat))


def test_position_code_is_the_released_scaled_sinusoid():
    t, d = torch.arange(8.0)[:, None], 6
    expected = torch.zeros(8, d)
    expected[:, 0::2] = torch.sin(t * torch.exp(torch.arange(0, d, 2) * -(math.log(10000.0) / d)))
    expected[:, 1::2] = torch.cos(t * torch.exp(torch.arange(0, d, 2) * -(math.log(10000.0) / d)))
    torch.testing.assert_close(sinusoid_code(torch.arange(8), d), expected)
    method = small(temporal_set=[1]).eval()
    video = torch.zeros(8, 6)
    torch.testing.assert_close(method.encode(video).values, method.value_maps[0](0.1 * expected))


def test_matches_the_class_by_class_definition():
    gen = torch.Generator().manual_seed(1)
    method = small().double().eval()
    support = torch.randn(2, 6, 5, 6, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[2, 0, 1, 1, 0, 2], [0, 1, 2, 0, 1, 2]])  # 2 shots, shuffled
    query = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        logits = method(support, labels, query, 3)
        for b in range(2):
            torch.testing.assert_close(logits[b], reference_logits(method, support[b], labels[b], query[b], 3))


def test_attention_stays_within_each_class():
    gen = torch.Generator().manual_seed(2)
    method = small(temporal_set=[2]).eval()
    support = torch.randn(6, 8, 6, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    query = torch.randn(3, 8, 6, generator=gen)
    changed = support.clone()
    changed[labels == 1] = 5 * torch.randn(2, 8, 6, generator=gen)
    with torch.no_grad():
        before, after = method(support, labels, query, 3), method(changed, labels, query, 3)
    torch.testing.assert_close(after[:, [0, 2]], before[:, [0, 2]])
    assert (after[:, 1] - before[:, 1]).abs().min() > 1e-3


def test_encode_once_then_head_equals_the_forward():
    from fsar.data.episodes import EpisodeSampler
    from fsar.evaluation.scoring import FeatureSplit, episode_accuracies, episode_scorer, gather_episodes

    torch.manual_seed(3)
    method = small(proj_dim=4).eval()
    labels = np.repeat(np.arange(8), 6)
    feats = torch.randn(48, 8, 6).half().float()  # what a store holds: fp16
    for shot in (1, 3):
        eps = EpisodeSampler(labels, way=5, shot=shot, query=2, seed=shot).batch(0, 40)
        support, s_lab, query, q_lab = gather_episodes(feats, eps)
        with torch.no_grad():
            expected = method(support, s_lab, query, 5)
            encoded = FeatureSplit(feats.half().numpy(), chunk=7).encode(method, torch.device("cpu"))
            s_idx, q_idx = torch.as_tensor(eps.support.reshape(40, -1)), torch.as_tensor(eps.query.reshape(40, -1))
            head = method.head(index_encoding(encoded, s_idx), s_lab, index_encoding(encoded, q_idx), 5).logits
            scored = episode_scorer(method, encoded, 5)(eps)
        torch.testing.assert_close(head, expected, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(scored, expected, atol=1e-4, rtol=1e-5)
        accuracy = episode_accuracies(method, feats, eps, batch_size=16)
        assert accuracy == pytest.approx((expected.argmax(-1) == q_lab).float().mean(-1).numpy())


def test_dropout_only_in_training():
    method = small(dropout=0.5)
    video = torch.randn(3, 8, 6)
    first = method.train().encode(video).values
    assert not torch.equal(first, method.encode(video).values)
    method.eval()
    assert torch.equal(method.encode(video).values, method.encode(video).values)


def test_training_lowers_the_loss(tmp_path):
    from helpers import config, make_signal_store

    from fsar.training.loop import train_worker

    store = make_signal_store(tmp_path / "store", frames=4)
    reports = []
    cfg = config(store, tmp_path / "run", method="trx", knobs={"proj_dim": 16, "trans_linear_out_dim": 32},
                 steps=40, val_every=20, val_episodes=200, lr=1e-2)
    train_worker(cfg, report=lambda m, p: reports.append(m))
    assert [m["step"] for m in reports] == [20, 40]
    assert reports[-1]["train_loss"] < 0.5 * reports[0]["train_loss"]
    assert reports[-1]["val_accuracy"] > 60  # unseen classes, 5-way: chance is 20


@pytest.mark.parametrize(("knobs", "message"), [
    ({"temporal_set": []}, "temporal_set must be a non-empty list"),
    ({"temporal_set": [0, 2]}, r"temporal_set must be .* tuple sizes >= 1 .*got \[0, 2\]"),
    ({"temporal_set": [2, 2]}, "temporal_set must not repeat a cardinality"),
    ({"trans_linear_out_dim": 0}, "trans_linear_out_dim must be >= 1"),
    ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ({"pe_scale": -0.1}, "pe_scale must be >= 0"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"proj_dim": -1}, "proj_dim must be >= 0"),
], ids=str)
def test_bad_knobs_are_refused(knobs, message):
    with pytest.raises(ConfigError, match=f"trx: {message}"):
        build_method("trx", feature_dim=6, **knobs)


def test_too_few_frames_and_unbalanced_shots_are_refused():
    method = small(temporal_set=[2, 4])
    with pytest.raises(ValueError, match=r"trx: 3 frames per video, fewer than the largest tuple size in "
                                         r"temporal_set=\[2, 4\]"):
        method.encode(torch.randn(2, 3, 6))
    support, query = torch.randn(3, 4, 6), torch.randn(2, 4, 6)
    with pytest.raises(ValueError, match="same number of support videos"):
        method(support, torch.tensor([0, 0, 1]), query, 2)


def test_blocks_of_episodes_give_the_same_logits(monkeypatch):
    import fsar.methods.trx as trx

    gen = torch.Generator().manual_seed(5)
    method = small().eval()
    support, query = torch.randn(7, 6, 5, 6, generator=gen), torch.randn(7, 3, 5, 6, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2]).expand(7, 6)
    with torch.no_grad():
        whole = method(support, labels, query, 3)
        monkeypatch.setattr(trx, "ATTENTION_BLOCK", 2 * 3 * 10 * 6 * 10)  # two episodes per block: 4 blocks
        torch.testing.assert_close(method(support, labels, query, 3), whole)


def trained_looking(method):
    """Non-trivial LayerNorm affine parameters (a fresh LayerNorm's γ = 1, β = 0 would hide their terms)."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for norm in method.key_norms:
            norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=gen))
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=gen))
    return method


@pytest.mark.parametrize("temporal_set", [[2, 3], [1, 2, 3]], ids=str)
@pytest.mark.parametrize("shot", [1, 3])
@pytest.mark.parametrize(("feature_dim", "width"), [(16, 1152), (64, 1152), (16, 20)],
                         ids=["D16", "D64", "D16-narrow"])  # narrow: k·D + 1 >= d, no rank to save
def test_factored_evaluation_equals_the_plain_head(temporal_set, shot, feature_dim, width):
    from fsar.methods.trx_tuples import TRXEncoding, TRXFactorEncoding

    gen = torch.Generator().manual_seed(shot + feature_dim)
    method = trained_looking(small(feature_dim=feature_dim, trans_linear_out_dim=width, temporal_set=temporal_set,
                                   pe_scale=0.5)).eval()
    way = 4
    labels = torch.stack([torch.arange(way).repeat(shot)[torch.randperm(way * shot, generator=gen)] for _ in range(2)])
    support = torch.randn(2, way * shot, 8, feature_dim, generator=gen)
    query = torch.randn(2, 3, 8, feature_dim, generator=gen)
    with torch.no_grad():
        factored = [method.encode_for_scoring(x) for x in (support, query)]
        assert all(isinstance(e, TRXFactorEncoding) for e in factored)
        fast = method.head(factored[0], labels, factored[1], way).logits
        plain = method.head(method.encode(support), labels, method.encode(query), way).logits
        reference = torch.stack([reference_logits(method, support[b], labels[b], query[b], way) for b in range(2)])
    scale = plain.abs().max()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4 * scale)
    assert isinstance(method.train().encode_for_scoring(query), TRXEncoding)  # training keeps the plain path


def test_factored_evaluation_scores_episodes_like_the_forward():
    from fsar.data.episodes import EpisodeSampler
    from fsar.evaluation.scoring import FeatureSplit, episode_accuracies, episode_scorer, gather_episodes

    torch.manual_seed(4)
    method = trained_looking(small(feature_dim=16, trans_linear_out_dim=64, proj_dim=8)).eval()
    labels = np.repeat(np.arange(8), 5)
    feats = torch.randn(40, 8, 16).half().float()
    eps = EpisodeSampler(labels, way=5, shot=1, query=1, seed=0).batch(0, 30)
    support, s_lab, query, q_lab = gather_episodes(feats, eps)
    with torch.no_grad():
        expected = method(support, s_lab, query, 5)
        scored = episode_scorer(method, FeatureSplit(feats.half().numpy()).encode(method, torch.device("cpu")), 5)(eps)
    torch.testing.assert_close(scored, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    accuracy = episode_accuracies(method, feats, eps)
    assert accuracy == pytest.approx((expected.argmax(-1) == q_lab).float().mean(-1).numpy())


@pytest.mark.parametrize("frames", [3, 5, 8])
@pytest.mark.parametrize("row", [1, 3, 16])  # supports per query row of the pair table: one, several rows, padded
def test_one_shot_pair_table_equals_the_forward(monkeypatch, frames, row):
    """1-shot episodes read a table of (query, support) distances, each pair solved once; k-shot ones the head."""
    from fsar.data.episodes import EpisodeSampler
    from fsar.evaluation.scoring import FeatureSplit, episode_scorer, gather_episodes
    from fsar.methods.trx import TRX

    monkeypatch.setattr(TRX, "pair_table_row", row)
    torch.manual_seed(frames)
    method = trained_looking(small(feature_dim=16, trans_linear_out_dim=64, pe_scale=0.5)).eval()
    labels = np.repeat(np.arange(7), 4)
    feats = torch.randn(28, frames, 16)
    encoded = FeatureSplit(feats).encode(method, torch.device("cpu"))
    scorer = episode_scorer(method, encoded, 5)
    for shot, seed in ((1, 0), (2, 1), (1, 2)):  # the second 1-shot batch reuses and extends the table
        eps = EpisodeSampler(labels, way=5, shot=shot, query=2, seed=seed).batch(0, 25)
        support, s_lab, query, _ = gather_episodes(feats, eps)
        with torch.no_grad():
            expected = method(support, s_lab, query, 5)
            got = scorer(eps)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    # Shuffled 1-shot labels: class c's logit is its own support video's distance.
    order = torch.stack([torch.randperm(5) for _ in range(3)])
    s_enc, q_enc = (method.encode_for_scoring(torch.randn(3, n, frames, 16)) for n in (5, 2))
    with torch.no_grad():
        head = method.head(s_enc, order, q_enc, 5).logits
        pairs = method.logits_from_pairs(method.pair_distance(s_enc, q_enc), s_enc, order, q_enc, 5)
    torch.testing.assert_close(pairs, head)
    with pytest.raises(ValueError, match="1-shot logits only"):
        method.logits_from_pairs(torch.zeros(1, 2, 4), None, torch.tensor([[0, 1, 0, 1]]), None, 2)


def test_one_shot_pair_table_stays_on_the_features_device():
    from fsar.data.episodes import EpisodeSampler
    from fsar.evaluation.scoring import FeatureSplit, episode_scorer

    meta = torch.device("meta")
    method = small(proj_dim=4).to(meta).eval()
    eps = EpisodeSampler(np.repeat(np.arange(6), 4), way=3, shot=1, query=1, seed=0).batch(0, 5)
    with torch.no_grad():
        logits = episode_scorer(method, FeatureSplit(torch.empty(24, 4, 6, device=meta)).encode(method, meta), 3)(eps)
    assert logits.device == meta and logits.shape == (5, 3, 3)


def test_trx_explains_a_match_by_its_tuple_attention():
    """One block per cardinality; each query tuple's attention over the support's tuples sums to one."""
    torch.manual_seed(0)
    method = build_method("trx", feature_dim=16, temporal_set=[2, 3]).eval()
    with torch.no_grad():
        enc = method.encode(torch.randn(2, 6, 16))
        one = [type(enc)(*(f[i] for f in enc)) for i in range(2)]
        explanation = method.explain(one[0], one[1])
    pairs, triples = math.comb(6, 2), math.comb(6, 3)
    assert explanation.kind == "tuple attention" and explanation.weights.shape == (pairs + triples,) * 2
    torch.testing.assert_close(explanation.weights.sum(dim=1), torch.ones(pairs + triples))
    assert explanation.weights[:pairs, pairs:].abs().sum() == 0  # a pair attends to pairs only
    assert explanation.query_items[0].item() == pytest.approx((0.5 + 1.5) / 2 / 6)  # frames 0 and 1
