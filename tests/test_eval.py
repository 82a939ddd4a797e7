import json

import numpy as np
import pytest
import torch

from fsar.data.episodes import EpisodeSampler
from fsar.eval import (
    RESULT_KEYS,
    ResultRecord,
    accuracy_ci,
    episode_accuracies,
    format_table,
    gather_episodes,
    read_results,
    write_results,
)


def test_accuracy_ci_matches_the_formula():
    acc = np.random.default_rng(0).integers(0, 6, 1000) / 5
    mean, ci = accuracy_ci(acc)
    assert mean == pytest.approx(100 * acc.mean())
    assert ci == pytest.approx(100 * 1.96 * acc.std(ddof=1) / np.sqrt(1000))
    assert accuracy_ci(np.ones(10)) == (100.0, 0.0)


class LabelOracle(torch.nn.Module):
    """Scores a query by the class whose support has the same first feature value: a perfect classifier."""

    def forward(self, support, support_labels, query, way):
        s = support[..., 0, 0]  # (E, Ns)
        q = query[..., 0, 0]  # (E, Nq)
        match = (q[..., :, None] == s[..., None, :]).float()  # (E, Nq, Ns)
        onehot = torch.nn.functional.one_hot(support_labels, way).float()  # (E, Ns, way)
        return match @ onehot


def test_gather_and_score_with_a_perfect_and_a_constant_method():
    labels = np.repeat(np.arange(10), 6)
    feats = torch.from_numpy(labels.astype(np.float32))[:, None, None].expand(60, 3, 2).clone()
    eps = EpisodeSampler(labels, way=5, shot=2, query=3, seed=0).batch(0, 250)
    support, s_lab, query, q_lab = gather_episodes(feats, eps)
    assert support.shape == (250, 10, 3, 2) and query.shape == (250, 15, 3, 2)
    assert torch.equal(s_lab[0], torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    acc = episode_accuracies(LabelOracle(), feats, eps, batch_size=64)
    assert acc.shape == (250,) and acc.min() == 1.0

    class Constant(torch.nn.Module):
        def forward(self, support, support_labels, query, way):
            out = torch.zeros(*query.shape[:2], way)
            out[..., 0] = 1.0
            return out

    assert episode_accuracies(Constant(), feats, eps) == pytest.approx(np.full(250, 0.2))


def test_results_file_schema_and_table(tmp_path):
    rec = ResultRecord("otam", "synth", "test", 5, 1, 100, 55.5, 1.2, 0, "/s", None, 0.3)
    path = write_results([rec], tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert list(data[0]) == list(RESULT_KEYS)
    assert read_results(path) == [rec]
    assert "| otam | synth | test | 5 | 1 | 100 | 55.50 ± 1.20 |" in format_table([rec])


@pytest.mark.parametrize("knobs", [{}, {"proj_dim": 8}, {"proj_dim": 8, "temporal_centre": True}], ids=str)
def test_fast_scorers_equal_the_plain_forward_for_every_method(knobs):
    """The encode-once, distance-table and pair-table paths give the logits of ``method(support, labels, query, way)``.

    Every cached-feature method (frames or patches) is checked; text-reading ones get class-name embeddings."""
    from fsar.eval import episode_class_text, episode_scorer
    from fsar.methods import build_method, list_methods, method_info

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
            for limit in (0, 10**6):  # encoded-gather path, distance/pair-table path
                got = episode_scorer(method, feats, 5, class_text=class_text, table_limit=limit, pair_limit=limit)(eps)
                torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=f"{name} {knobs} limit={limit}")
