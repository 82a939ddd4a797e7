"""fsar.ops.sinkhorn: log-domain batched Sinkhorn against POT, marginals, stability and symmetries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.ops import sinkhorn, sinkhorn_log

ot = pytest.importorskip("ot")

# Sinkhorn's iteration count has a heavy tail: most random problems converge (row marginals within 1e-11)
# in ≤ 500 iterations at ε = 0.1, ≤ 1,000 at 0.05 and ≤ 3,000 at 0.01, but a near-degenerate one (two
# plans of almost equal cost) can need > 10,000 at ε = 0.01. The seeds below were measured to converge
# within: slowest problem 500 / 800 / 2,300 iterations at ε = 0.1 / 0.05 / 0.01.
ITERATIONS = {0.1: 600, 0.05: 1200, 0.01: 3000}
SEEDS = {(5, 7): 4, (12, 9): 21, (16, 16): 11, (10, 13): 21}


def random_problem(batch: int, n: int, m: int, seed: int, dtype: torch.dtype = torch.float64):
    """Costs uniform in [0, 2] (the range of 1 − cos) and random strictly positive marginals."""
    g = torch.Generator().manual_seed(seed)
    cost = 2 * torch.rand(batch, n, m, generator=g, dtype=dtype)
    a = torch.rand(batch, n, generator=g, dtype=dtype) + 0.2
    b = torch.rand(batch, m, generator=g, dtype=dtype) + 0.2
    return cost, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def pot_reference(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, epsilon: float) -> np.ndarray:
    """POT's single-problem log-domain Sinkhorn in float64, run to convergence."""
    return np.stack([
        ot.sinkhorn(
            a[i].double().numpy(), b[i].double().numpy(), cost[i].double().numpy(), epsilon,
            method="sinkhorn_log", numItermax=20_000, stopThr=1e-10,
        )
        for i in range(cost.shape[0])
    ])


@pytest.mark.parametrize("epsilon", [0.1, 0.05, 0.01])
@pytest.mark.parametrize(("n", "m"), [(5, 7), (12, 9), (16, 16)])
def test_matches_pot(epsilon: float, n: int, m: int) -> None:
    cost, a, b = random_problem(4, n, m, seed=SEEDS[n, m])
    ref_plan = pot_reference(cost, a, b, epsilon)
    ref_cost = (ref_plan * cost.numpy()).sum((1, 2))
    # Measured max |Δ|: fp64 ~1e-10 (the reference stops at stopThr = 1e-10), fp32 ~1e-6 (rounding in the
    # log-sum-exps, ε = 0.01). POT's own result is only converged to ~1e-10, hence not tighter in fp64.
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-5)):
        plan, transport = sinkhorn_log(cost.to(dtype), a.to(dtype), b.to(dtype), epsilon=epsilon,
                                       iterations=ITERATIONS[epsilon])
        assert plan.dtype == dtype and transport.shape == (4,)
        np.testing.assert_allclose(plan.double().numpy(), ref_plan, atol=tol, rtol=0)
        np.testing.assert_allclose(transport.double().numpy(), ref_cost, atol=tol, rtol=0)


@pytest.mark.parametrize("epsilon", [0.1, 0.01])
def test_marginals(epsilon: float) -> None:
    cost, a, b = random_problem(4, 10, 13, seed=SEEDS[10, 13])
    plan, _ = sinkhorn_log(cost, a, b, epsilon=epsilon, iterations=ITERATIONS[epsilon])
    torch.testing.assert_close(plan.sum(-1), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(plan.sum(-2), b, atol=1e-12, rtol=0)  # exact after the final v update
    assert (plan >= 0).all()


def test_small_epsilon_is_finite_with_gradients() -> None:
    """ε = 0.01 on [0, 2] costs: exp(−C/ε) reaches e^-200, which underflows fp32 outside the log domain."""
    cost, a, b = random_problem(8, 8, 8, seed=2, dtype=torch.float32)
    cost = cost.requires_grad_()
    logits_a = a.log().requires_grad_()
    logits_b = b.log().requires_grad_()
    plan, transport = sinkhorn_log(cost, logits_a.softmax(-1), logits_b.softmax(-1), epsilon=0.01, iterations=100)
    assert torch.isfinite(plan).all() and torch.isfinite(transport).all()
    transport.sum().backward()
    for grad in (cost.grad, logits_a.grad, logits_b.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradient_matches_finite_differences() -> None:
    cost, a, b = random_problem(2, 4, 5, seed=3)
    inputs = (cost.requires_grad_(), a.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda c, x, y: sinkhorn_log(c, x, y, epsilon=0.1, iterations=30, validate=False)[1], inputs
    )


def test_row_permutation_is_equivariant() -> None:
    cost, a, b = random_problem(3, 9, 6, seed=4)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(5))
    plan, transport = sinkhorn_log(cost, a, b, epsilon=0.05, iterations=ITERATIONS[0.05])
    plan_p, transport_p = sinkhorn_log(cost[:, perm], a[:, perm], b, epsilon=0.05, iterations=ITERATIONS[0.05])
    torch.testing.assert_close(plan_p, plan[:, perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(transport_p, transport, atol=1e-12, rtol=0)


def test_batched_equals_one_by_one() -> None:
    cost, a, b = random_problem(5, 7, 11, seed=6, dtype=torch.float32)
    plan, transport = sinkhorn_log(cost, a, b, epsilon=0.05, iterations=50)
    for i in range(5):
        p, t = sinkhorn_log(cost[i : i + 1], a[i : i + 1], b[i : i + 1], epsilon=0.05, iterations=50)
        torch.testing.assert_close(p[0], plan[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(t[0], transport[i], atol=1e-6, rtol=0)


def test_pot_backend_agrees_with_torch() -> None:
    cost, a, b = random_problem(4, 6, 9, seed=7, dtype=torch.float32)
    cost.requires_grad_()
    plan, transport = sinkhorn(cost, a, b, epsilon=0.05, iterations=40)
    plan_pot, transport_pot = sinkhorn(cost, a, b, epsilon=0.05, iterations=40, backend="pot")
    torch.testing.assert_close(plan_pot, plan, atol=1e-6, rtol=0)
    torch.testing.assert_close(transport_pot, transport, atol=1e-6, rtol=0)
    (grad,) = torch.autograd.grad(transport.sum(), cost)
    (grad_pot,) = torch.autograd.grad(transport_pot.sum(), cost)
    torch.testing.assert_close(grad_pot, grad, atol=1e-5, rtol=0)


# POT's own stopping test (1e-10) is not always reached within its 20,000 iterations on this seed; the
# reference is still converged far below the 1e-5 asserted here.
@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")
@pytest.mark.parametrize("epsilon", [0.1, 0.05, 0.01])
def test_scaling_form_matches_pot_and_the_log_domain(epsilon: float) -> None:
    """The multiplicative iterates equal the log-domain ones; at ε = 0.01 (spread/ε = 200) they run in fp64."""
    cost, a, b = random_problem(4, 12, 9, seed=SEEDS[12, 9], dtype=torch.float32)
    ref_plan = pot_reference(cost, a, b, epsilon)
    plan, transport = sinkhorn(cost, a, b, epsilon=epsilon, iterations=ITERATIONS[epsilon], backend="scaling")
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    np.testing.assert_allclose(plan.double().numpy(), ref_plan, atol=1e-5, rtol=0)
    few_log = sinkhorn_log(cost, a, b, epsilon=epsilon, iterations=7)
    few_scaling = sinkhorn(cost, a, b, epsilon=epsilon, iterations=7, backend="scaling")
    for log_part, scaling_part in zip(few_log, few_scaling, strict=True):
        torch.testing.assert_close(scaling_part, log_part, atol=1e-5, rtol=0)


def test_scaling_form_gradients_match_the_log_domain() -> None:
    cost, a, b = random_problem(3, 6, 8, seed=5, dtype=torch.float32)
    cost.requires_grad_()
    grads = []
    for backend in ("torch", "scaling"):
        _, transport = sinkhorn(cost, a, b, epsilon=0.02, iterations=30, backend=backend)
        grads.append(torch.autograd.grad(transport.sum(), cost)[0])
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=0)


def test_scaling_form_falls_back_to_the_log_domain_for_tiny_epsilon() -> None:
    cost, a, b = random_problem(2, 5, 5, seed=3, dtype=torch.float32)
    plan, _ = sinkhorn(cost, a, b, epsilon=0.002, iterations=20, backend="scaling")
    torch.testing.assert_close(plan, sinkhorn_log(cost, a, b, epsilon=0.002, iterations=20)[0])


def test_rejects_bad_inputs() -> None:
    cost, a, b = random_problem(2, 3, 4, seed=8)
    with pytest.raises(ValueError, match=r"\(B, n, m\)"):
        sinkhorn_log(cost[0], a, b, epsilon=0.1)
    with pytest.raises(ValueError, match="a must have shape"):
        sinkhorn_log(cost, a[:, :2], b, epsilon=0.1)
    with pytest.raises(ValueError, match="b must have shape"):
        sinkhorn_log(cost, a, b[:1], epsilon=0.1)
    with pytest.raises(ValueError, match="strictly positive"):
        sinkhorn_log(cost, torch.tensor([[1.0, 0.0, 0.0]] * 2, dtype=torch.float64), b, epsilon=0.1)
    with pytest.raises(ValueError, match="sum to 1"):
        sinkhorn_log(cost, 2 * a, b, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_log(cost, a, b, epsilon=0.0)
    with pytest.raises(ValueError, match="backend"):
        sinkhorn(cost, a, b, epsilon=0.1, backend="numpy")  # type: ignore[arg-type]
