"""fsar.ops.soft_dtw: the vectorised OTAM recursion against a cell-by-cell reference."""

from __future__ import annotations

import math

import pytest
import torch

from fsar.ops import cosine_distance, otam_cumulative


def reference_otam(dist: torch.Tensor, gamma: float) -> torch.Tensor:
    """The OTAM recursion written out cell by cell, for one (L, M) matrix; differentiable."""
    length, width = dist.shape
    padded = width + 2
    zero = dist.new_zeros(())
    d = [[zero, *[dist[row, col] for col in range(width)], zero] for row in range(length)]

    def softmin(*xs: torch.Tensor) -> torch.Tensor:
        if gamma == 0:
            return torch.stack(xs).min()
        return -gamma * torch.logsumexp(torch.stack(xs) / -gamma, dim=0)

    c = [[zero] * padded for _ in range(length)]
    for col in range(1, padded):
        c[0][col] = d[0][col] + c[0][col - 1]
    for row in range(1, length):
        for col in range(1, padded):
            if col in (1, padded - 1):
                c[row][col] = d[row][col] + softmin(c[row - 1][col - 1], c[row - 1][col], c[row][col - 1])
            else:
                c[row][col] = d[row][col] + softmin(c[row - 1][col - 1], c[row][col - 1])
    return c[length - 1][padded - 1]


def reference_batch(dist: torch.Tensor, gamma: float) -> torch.Tensor:
    flat = dist.reshape(-1, *dist.shape[-2:])
    return torch.stack([reference_otam(x, gamma) for x in flat]).reshape(dist.shape[:-2])


@pytest.mark.parametrize("shape", [(2, 8, 8), (3, 5), (2, 3, 6, 2), (1, 4), (4, 1), (1, 1), (2, 5, 9)])
@pytest.mark.parametrize("gamma", [0.1, 1.0, 0.01, 0.0])
def test_matches_cell_by_cell_reference(shape, gamma):
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[-1] * 10 + shape[-2])
    dist = torch.rand(shape, generator=gen, dtype=torch.float64) * 2
    out = otam_cumulative(dist, gamma)
    assert out.shape == shape[:-2]
    torch.testing.assert_close(out, reference_batch(dist, gamma), atol=1e-6, rtol=0)


def test_gradients_match_reference():
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(2, 5, 7, generator=gen, dtype=torch.float64) * 2
    weights = torch.rand(2, generator=gen, dtype=torch.float64)
    ours = base.clone().requires_grad_()
    (otam_cumulative(ours, 0.1) * weights).sum().backward()
    ref = base.clone().requires_grad_()
    (reference_batch(ref, 0.1) * weights).sum().backward()
    torch.testing.assert_close(ours.grad, ref.grad, atol=1e-6, rtol=0)
    assert ours.grad.abs().sum() > 0


def test_float32_input_matches_float64():
    dist = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(5)) * 2
    out = otam_cumulative(dist, 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), otam_cumulative(dist.double(), 0.1), atol=1e-5, rtol=0)


def test_small_gamma_approaches_hard_dtw():
    dist = torch.rand(6, 8, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    hard = reference_batch(dist, 0.0)
    torch.testing.assert_close(otam_cumulative(dist, 0.0), hard, atol=1e-12, rtol=0)
    errors = [(otam_cumulative(dist, g) - hard).abs().max().item() for g in (0.3, 0.03, 0.003, 0.0003)]
    # soft-min lies within γ·log 3 below the hard min, so the gap shrinks (at least) linearly with γ.
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.0003 * math.log(3) * 8 * 9
    assert errors[-1] < 1e-2


def test_identical_sequences_cost_nothing_under_hard_dtw():
    x = torch.randn(5, 8, 32, generator=torch.Generator().manual_seed(2))
    cost = otam_cumulative(cosine_distance(x, x), 0.0)
    torch.testing.assert_close(cost, torch.zeros(5), atol=1e-5, rtol=0)


def test_time_warped_copy_is_closer_than_shuffled_copy():
    gen = torch.Generator().manual_seed(0)
    trials, frames, dim = 500, 8, 64
    x = torch.randn(trials, frames, dim, generator=gen)
    # Monotone warp: frames repeated and dropped at random, order kept.
    warp = torch.sort(torch.randint(0, frames, (trials, frames), generator=gen), dim=1).values
    shuffle = torch.argsort(torch.rand(trials, frames, generator=gen), dim=1)
    rows = torch.arange(trials)[:, None]
    copies = torch.stack([x[rows, warp], x[rows, shuffle]])  # (2, trials, T, D)

    def cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return otam_cumulative(cosine_distance(a, b), 0.1) + otam_cumulative(cosine_distance(b, a), 0.1)

    wins = int((cost(copies[0], x) < cost(copies[1], x)).sum())
    assert wins >= 0.95 * trials, f"warped copy closer in only {wins}/{trials} trials"


def test_leading_dims_are_independent():
    dist = torch.rand(3, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    full = otam_cumulative(dist, 0.1)
    for i in range(3):
        torch.testing.assert_close(otam_cumulative(dist[i], 0.1), full[i])
    torch.testing.assert_close(otam_cumulative(dist[1, 2], 0.1), full[1, 2])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        otam_cumulative(torch.rand(2, 3, 3), -0.1)
    with pytest.raises(ValueError, match="L, M"):
        otam_cumulative(torch.rand(3), 0.1)
    with pytest.raises(ValueError, match="empty"):
        otam_cumulative(torch.rand(2, 0, 3), 0.1)
