"""fsar.methods.bimhm: bidirectional mean nearest-frame distance."""

from __future__ import annotations

import torch

from fsar.methods import build_method


def reference_distance(q: torch.Tensor, s: torch.Tensor) -> float:
    """Bi-MHM written out frame by frame: mean over each side's frames of the nearest other-side frame."""
    def dist(a, b):
        return 1 - float(a @ b) / (float(a.norm()) * float(b.norm()))

    forward = sum(min(dist(qf, sf) for sf in s) for qf in q) / len(q)
    backward = sum(min(dist(sf, qf) for qf in q) for sf in s) / len(s)
    return forward + backward


def test_matches_frame_by_frame_reference():
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(2, 5, 6, 16, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 0, 0], [1, 2, 0, 2, 1]])
    query = torch.randn(2, 3, 4, 16, generator=gen, dtype=torch.float64)  # query shorter than support
    logits = build_method("bimhm", feature_dim=16, temperature=0.25)(support, labels, query, 3)
    for b in range(2):
        for i in range(3):
            pair = torch.tensor([reference_distance(query[b, i], support[b, j]) for j in range(5)], dtype=torch.float64)
            expected = torch.stack([pair[labels[b] == c].mean() for c in range(3)]) / -0.25
            torch.testing.assert_close(logits[b, i], expected)


def test_query_copied_from_a_support_video_gets_its_class():
    gen = torch.Generator().manual_seed(1)
    for shot in (1, 3):
        support = torch.randn(20, 5 * shot, 8, 32, generator=gen)
        labels = torch.stack([torch.randperm(5 * shot, generator=gen) % 5 for _ in range(20)])
        pick = torch.randint(0, 5 * shot, (20,), generator=gen)
        query = support[torch.arange(20), pick][:, None]
        predicted = build_method("bimhm", feature_dim=32)(support, labels, query, 5).argmax(-1)[:, 0]
        assert torch.equal(predicted, labels[torch.arange(20), pick]), shot


def test_ignores_frame_order():
    gen = torch.Generator().manual_seed(2)
    support, query = torch.randn(3, 8, 16, generator=gen), torch.randn(2, 8, 16, generator=gen)
    labels = torch.tensor([0, 1, 2])
    method = build_method("bimhm", feature_dim=16)
    shuffled = query[:, torch.randperm(8, generator=gen)]
    torch.testing.assert_close(method(support, labels, shuffled, 3), method(support, labels, query, 3))

