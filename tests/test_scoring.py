"""fsar.evaluation.scoring: encode-once scoring, the pair table, and episodes gathered on the features' device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.data.episodes import EpisodeSampler
from fsar.devices import episode_class_text
from fsar.evaluation.scoring import FeatureSplit, episode_accuracies, episode_scorer, gather_episodes
from fsar.methods import build_method, list_methods, method_info
from fsar.methods.base import FewShotMethod, FrameEncoding, HeadOutput


class LabelOracle(FewShotMethod):
    """Scores a query by the class whose support has the same first feature value: a perfect classifier."""

    config = None

    def encode(self, videos):
        return FrameEncoding(videos)

    def head(self, support, support_labels, query, way, *, class_text=None, supervision=None):
        s = support.frames[..., 0, 0]  # (E, Ns)
        q = query.frames[..., 0, 0]  # (E, Nq)
        match = (q[..., :, None] == s[..., None, :]).float()  # (E, Nq, Ns)
        onehot = torch.nn.functional.one_hot(support_labels, way).float()  # (E, Ns, way)
        return HeadOutput(match @ onehot)


class Constant(LabelOracle):
    def head(self, support, support_labels, query, way, *, class_text=None, supervision=None):
        out = torch.zeros(*query.frames.shape[:2], way)
        out[..., 0] = 1.0
        return HeadOutput(out)


def test_gather_and_score_with_a_perfect_and_a_constant_method():
    labels = np.repeat(np.arange(10), 6)
    feats = torch.from_numpy(labels.astype(np.float32))[:, None, None].expand(60, 3, 2).clone()
    eps = EpisodeSampler(labels, way=5, shot=2, query=3, seed=0).batch(0, 250)
    support, s_lab, query, q_lab = gather_episodes(feats, eps)
    assert support.shape == (250, 10, 3, 2) and query.shape == (250, 15, 3, 2)
    assert torch.equal(s_lab[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    acc = episode_accuracies(LabelOracle(), feats, eps, batch_size=64)
    assert acc.shape == (250,) and acc.min() == 1.0
    assert episode_accuracies(Constant(), feats.half().numpy(), eps) == pytest.approx(np.full(250, 0.2))


def test_feature_split_encodes_in_chunks_what_one_call_encodes():
    torch.manual_seed(0)
    method = build_method("otam", feature_dim=12, proj_dim=8, temporal_centre=True).eval()
    feats = torch.randn(50, 6, 12).half()
    with torch.no_grad():
        whole = method.encode(feats.float())
        chunked = FeatureSplit(feats.numpy(), chunk=7).encode(method, torch.device("cpu"))
    torch.testing.assert_close(chunked.frames, whole.frames)


@pytest.mark.parametrize("knobs", [{}, {"proj_dim": 8}, {"proj_dim": 8, "temporal_centre": True}], ids=str)
def test_fast_scorers_equal_the_plain_forward_for_every_method(knobs):
    """The encode-once paths (pair table and gathered encodings) give the logits of
    ``method(support, labels, query, way)``, for every cached-feature method; text-reading ones get class text."""
    torch.manual_seed(0)
    labels = np.repeat(np.arange(8), 5)
    per_kind = {"frames": torch.randn(40, 6, 12), "patches": torch.randn(40, 6, 2, 2, 12)}
    text = torch.randn(8, 12)
    eps = EpisodeSampler(labels, way=5, shot=2, query=2, seed=3).batch(0, 30)
    for name in list_methods():
        info = method_info(name)
        if info.input_kind not in per_kind:
            continue  # end-to-end methods are not scored from cached features
        feats = per_kind[info.input_kind]
        support, s_lab, query, _ = gather_episodes(feats, eps)
        fields = info.config.__dataclass_fields__
        chosen = {k: v for k, v in (knobs | {"num_frames": 6}).items() if k in fields}
        method = build_method(name, feature_dim=12, text_dim=12, **chosen).eval()
        class_text = text if method.uses_text else None
        with torch.no_grad():
            expected = method(support, s_lab, query, 5, class_text=episode_class_text(class_text, eps))
            encoded = FeatureSplit(feats).encode(method, torch.device("cpu"))
            for limit in (0, 10**6):  # gathered encodings, and the pair table where the method declares one
                got = episode_scorer(method, encoded, 5, class_text=class_text, pair_limit=limit)(eps)
                torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=f"{name} {knobs} limit={limit}")
    declared = {n for n in list_methods() if method_info(n).cls.pair_table}
    assert {"otam", "bimhm", "a2m2", "i2st"} <= declared and "protonet" not in declared


@pytest.mark.parametrize("width", [1, 2, 5])
def test_pair_rows_hold_every_pair_once_per_query_row(width):
    from fsar.evaluation.scoring import pair_rows

    query = np.array([0, 0, 0, 2, 3, 3, 3, 3, 3, 3])  # sorted, as the table's pairs come
    support = np.array([1, 4, 5, 0, 0, 1, 2, 4, 5, 6])
    queries, supports, slots = pair_rows(query, support, width)
    assert supports.shape == (len(queries), width)
    np.testing.assert_array_equal(np.repeat(queries, width)[slots], query)
    np.testing.assert_array_equal(supports.reshape(-1)[slots], support)
    assert len(queries) == sum(-(-n // width) for n in (3, 1, 6))
