"""fsar.methods.otam: soft-DTW alignment of query and support frames, both directions, class mean."""

from __future__ import annotations

import torch

from fsar.methods import build_method
from fsar.ops import cosine_distance, otam_cumulative


def direct_logits(support, labels, query, way, *, gamma, temperature, bidirectional=True):
    """One pair at a time, one direction at a time: the definition, without the batching."""
    pair = torch.zeros(len(query), len(support), dtype=support.dtype)
    for i, q in enumerate(query):
        for j, s in enumerate(support):
            pair[i, j] = otam_cumulative(cosine_distance(q, s), gamma)
            if bidirectional:
                pair[i, j] += otam_cumulative(cosine_distance(s, q), gamma)
    classes = torch.stack([pair[:, labels == c].mean(dim=1) for c in range(way)], dim=1)
    return -classes / temperature


def test_matches_pair_by_pair_definition():
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(2, 6, 8, 16, generator=gen, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    query = torch.randn(2, 4, 8, 16, generator=gen, dtype=torch.float64)
    for knobs in ({"gamma": 0.1, "temperature": 1.0}, {"gamma": 0.05, "temperature": 0.5, "bidirectional": False}):
        logits = build_method("otam", feature_dim=16, **knobs)(support, labels, query, 3)
        for b in range(2):
            torch.testing.assert_close(logits[b], direct_logits(support[b], labels[b], query[b], 3, **knobs))


def test_query_and_support_lengths_may_differ():
    gen = torch.Generator().manual_seed(1)
    support = torch.randn(3, 8, 16, generator=gen, dtype=torch.float64)
    query = torch.randn(2, 5, 16, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    logits = build_method("otam", feature_dim=16)(support, labels, query, 3)
    torch.testing.assert_close(logits, direct_logits(support, labels, query, 3, gamma=0.1, temperature=1.0))


def test_query_copied_from_a_support_video_gets_its_class():
    gen = torch.Generator().manual_seed(2)
    for shot in (1, 3):
        support = torch.randn(20, 5 * shot, 8, 32, generator=gen)
        labels = torch.stack([torch.randperm(5 * shot, generator=gen) % 5 for _ in range(20)])
        pick = torch.randint(0, 5 * shot, (20,), generator=gen)
        query = support[torch.arange(20), pick][:, None]
        for gamma in (0.1, 0.0):
            predicted = build_method("otam", feature_dim=32, gamma=gamma)(support, labels, query, 5).argmax(-1)[:, 0]
            assert torch.equal(predicted, labels[torch.arange(20), pick]), (shot, gamma)


def test_tells_a_motion_from_its_time_reversal():
    # Class 0 is a sequence, class 1 the same frames reversed: order-blind metrics cannot separate them.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(50, 1, 8, 32, generator=gen)
    support = torch.cat([x, x.flip(2)], dim=1)
    labels = torch.tensor([0, 1]).expand(50, 2)
    query = x + 0.3 * torch.randn(x.shape, generator=gen)
    otam = build_method("otam", feature_dim=32)(support, labels, query, 2).argmax(-1)
    assert (otam == 0).all()
    proto = build_method("protonet", feature_dim=32)(support, labels, query, 2)
    torch.testing.assert_close(proto[..., 0], proto[..., 1])


def test_gradient_flows_to_features_and_projection():
    gen = torch.Generator().manual_seed(4)
    support = torch.randn(2, 4, 6, 8, generator=gen, requires_grad=True)
    labels = torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]])
    query = torch.randn(2, 2, 6, 8, generator=gen, requires_grad=True)
    method = build_method("otam", feature_dim=8, proj_dim=4)
    logits = method(support, labels, query, 2)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 2), torch.tensor([0, 1, 1, 0])).backward()
    for grad in (support.grad, query.grad, method.proj.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0



def test_a_video_against_itself_is_explained_by_the_diagonal_path():
    """OTAM's explanation is the expected soft-DTW path: for a video and itself, each frame meets its own frame."""
    torch.manual_seed(0)
    method = build_method("otam", feature_dim=16).eval()
    video = method.encode(torch.randn(1, 6, 16))
    one = type(video)(video.frames[0])
    explanation = method.explain(one, one)
    assert explanation.kind == "frame alignment" and explanation.weights.shape == (6, 6)
    assert explanation.weights.argmax(dim=1).tolist() == list(range(6))
    torch.testing.assert_close(explanation.query_items[:, 0], (torch.arange(6) + 0.5) / 6)
    assert build_method("protonet", feature_dim=16).explain(one, one) is None  # aligns nothing
