"""fsar.methods.a2m2.alignment: motion summary, candidate weights and the batched OT distance (vs POT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.methods.a2m2.alignment import CandidateWeights, motion_summary, transport_distance

ot = pytest.importorskip("ot")


def test_motion_summary():
    static = torch.randn(2, 1, 3, 3, 4).expand(2, 5, 3, 3, 4)
    assert torch.equal(motion_summary(static), torch.zeros(2, 4))
    ramp = torch.arange(5.0)[:, None, None, None].expand(5, 2, 2, 3) * torch.tensor([1.0, -2.0, 0.0])
    torch.testing.assert_close(motion_summary(ramp), torch.tensor([1.0, 2.0, 0.0]))
    assert motion_summary(torch.randn(3, 1, 2, 2, 4)).shape == (3, 4)


def test_weights_are_per_candidate_and_uniform_when_asked():
    torch.manual_seed(0)
    weights = CandidateWeights(embed_dim=6, motion_dim=3, hidden=8, learned=True)
    cand, motion = torch.randn(4, 7, 6), torch.randn(4, 3)
    logits = weights(cand, motion)
    perm = torch.randperm(7)
    torch.testing.assert_close(weights(cand[:, perm], motion), logits[:, perm])
    uniform = CandidateWeights(embed_dim=6, motion_dim=3, hidden=8, learned=False)
    assert torch.equal(uniform(cand, motion), torch.zeros(4, 7)) and not list(uniform.parameters())


def pot_distance(q: torch.Tensor, ql: torch.Tensor, s: torch.Tensor, sl: torch.Tensor, epsilon: float) -> float:
    """One pair with POT: 1 − cos cost, softmax marginals, log-domain Sinkhorn to convergence, ⟨P, C⟩."""
    qn = q.double() / q.double().norm(dim=-1, keepdim=True)
    sn = s.double() / s.double().norm(dim=-1, keepdim=True)
    cost = (1 - qn @ sn.T).numpy()
    a, b = torch.softmax(ql.double(), -1).numpy(), torch.softmax(sl.double(), -1).numpy()
    plan = ot.sinkhorn(a, b, cost, epsilon, method="sinkhorn_log", numItermax=20_000, stopThr=1e-12)
    return float((plan * cost).sum())


@pytest.mark.parametrize("backend", ["scaling", "torch", "pot"])
def test_transport_distance_matches_pot_pair_by_pair(backend):
    torch.manual_seed(0)
    q, ql = torch.randn(2, 3, 5, 8, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    s, sl = torch.randn(2, 4, 6, 8, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
    dist = transport_distance(q, ql, s, sl, epsilon=0.1, iterations=2000, backend=backend)
    assert dist.shape == (2, 3, 4)
    expected = np.array([[[pot_distance(q[b, i], ql[b, i], s[b, j], sl[b, j], 0.1) for j in range(4)]
                          for i in range(3)] for b in range(2)])
    np.testing.assert_allclose(dist.numpy(), expected, atol=1e-7)


def test_shuffling_a_videos_candidates_leaves_its_distances_unchanged():
    torch.manual_seed(1)
    q, ql = torch.randn(2, 3, 9, 16), torch.randn(2, 3, 9)
    s, sl = torch.randn(2, 5, 9, 16), torch.randn(2, 5, 9)
    base = transport_distance(q, ql, s, sl, epsilon=0.05, iterations=50)
    perm_q, perm_s = torch.randperm(9), torch.randperm(9)
    shuffled = transport_distance(q[:, :, perm_q], ql[:, :, perm_q], s[:, :, perm_s], sl[:, :, perm_s],
                                  epsilon=0.05, iterations=50)
    torch.testing.assert_close(shuffled, base, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["scaling", "torch"])
def test_small_epsilon_is_finite_with_finite_gradients(backend):
    torch.manual_seed(2)
    q = torch.randn(3, 5, 14, 32, requires_grad=True)
    s = torch.randn(3, 5, 14, 32, requires_grad=True)
    ql, sl = torch.randn(3, 5, 14, requires_grad=True), torch.randn(3, 5, 14, requires_grad=True)
    dist = transport_distance(q, ql, s, sl, epsilon=0.01, iterations=50, backend=backend)
    dist.sum().backward()
    assert torch.isfinite(dist).all()
    for t in (q, s, ql, sl):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_identical_sets_are_closer_than_different_ones():
    torch.manual_seed(3)
    a = torch.randn(1, 1, 6, 8)
    logits = torch.zeros(1, 1, 6)
    same = transport_distance(a, logits, a, logits, epsilon=0.01, iterations=200)
    other = transport_distance(a, logits, torch.randn(1, 1, 6, 8), logits, epsilon=0.01, iterations=200)
    assert float(same) < 0.05 < float(other)


def test_transport_plans_carry_the_candidate_weights_and_sum_to_the_distance():
    """The plan A2M2 explains itself with: its marginals are the two videos' candidate weights, and ⟨P, C⟩ is the
    distance ``transport_distance`` reports for the pair."""
    from fsar.methods.a2m2.alignment import transport_plans

    torch.manual_seed(0)
    q, s = torch.randn(1, 1, 5, 8), torch.randn(1, 1, 7, 8)
    ql, sl = torch.randn(1, 1, 5), torch.randn(1, 1, 7)
    plan, total = transport_plans(q, ql, s, sl, epsilon=0.05, iterations=300)
    torch.testing.assert_close(plan[0].sum(dim=1), torch.softmax(ql[0, 0], -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan[0].sum(dim=0), torch.softmax(sl[0, 0], -1), atol=1e-4, rtol=0)
    distance = transport_distance(q, ql, s, sl, epsilon=0.05, iterations=300)
    torch.testing.assert_close(distance.reshape(-1), total.reshape(-1).to(distance.dtype))
