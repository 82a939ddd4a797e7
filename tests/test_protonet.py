"""fsar.methods.protonet: temporal mean pooling, cosine to class prototypes."""

from __future__ import annotations

import torch

from fsar.methods import build_method


def test_matches_direct_computation_with_unequal_shots():
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(5, 4, 16, generator=gen, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 0, 0])  # class 0 has three shots, the others one
    query = torch.randn(3, 4, 16, generator=gen, dtype=torch.float64)
    method = build_method("protonet", feature_dim=16, temperature=0.5)
    logits = method(support, labels, query, 3)
    videos = support.mean(dim=1)
    prototypes = torch.stack([videos[labels == c].mean(dim=0) for c in range(3)])
    cos = torch.nn.functional.cosine_similarity(query.mean(dim=1)[:, None], prototypes[None], dim=-1)
    torch.testing.assert_close(logits, -(1 - cos) / 0.5)


def test_query_copied_from_a_support_video_gets_its_class():
    gen = torch.Generator().manual_seed(1)
    method = build_method("protonet", feature_dim=32)
    support = torch.randn(20, 5, 8, 32, generator=gen)  # 20 episodes, 5-way 1-shot
    labels = torch.stack([torch.randperm(5, generator=gen) for _ in range(20)])
    pick = torch.randint(0, 5, (20,), generator=gen)
    query = support[torch.arange(20), pick][:, None]
    predicted = method(support, labels, query, 5).argmax(-1)[:, 0]
    assert torch.equal(predicted, labels[torch.arange(20), pick])


def test_frame_order_is_ignored():
    gen = torch.Generator().manual_seed(2)
    method = build_method("protonet", feature_dim=8)
    support, query = torch.randn(3, 6, 8, generator=gen), torch.randn(2, 6, 8, generator=gen)
    labels = torch.tensor([0, 1, 2])
    torch.testing.assert_close(method(support, labels, query.flip(1), 3), method(support, labels, query, 3))


def test_projection_maps_frames_before_pooling():
    method = build_method("protonet", feature_dim=8, proj_dim=4)
    assert method.proj.in_features == 8 and method.proj.out_features == 4
    support, query = torch.randn(2, 3, 8), torch.randn(1, 3, 8)
    with torch.no_grad():
        logits = method(support, torch.tensor([0, 1]), query, 2)
        projected = build_method("protonet", feature_dim=4)(method.proj(support), torch.tensor([0, 1]), method.proj(query), 2)
    torch.testing.assert_close(logits, projected)
