"""fsar.ops.matrix_sqrt: Newton–Schulz square root against an eigen-decomposition root; covariance helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fsar.ops import centred_covariance, newton_schulz_sqrt, upper_triangle


def random_spd(batch: int, d: int, condition: float, seed: int) -> torch.Tensor:
    """SPD matrices with log-uniform spectrum in [1, condition], both ends attained (fp64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=torch.float64))
    spectrum = torch.exp(torch.rand(batch, d, generator=g, dtype=torch.float64) * math.log(condition))
    spectrum[:, 0], spectrum[:, 1] = 1.0, condition
    return (q * spectrum.unsqueeze(-2)) @ q.transpose(-1, -2)


def eigen_sqrt(mat: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(mat.double())
    return (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Largest relative Frobenius error over the batch."""
    diff = torch.linalg.matrix_norm(approx.double() - exact.double())
    return (diff / torch.linalg.matrix_norm(exact.double())).max()


# Largest relative Frobenius error measured over d ∈ {8, 16, 32, 64}, condition number ≤ 100, eps = 0, fp32:
#   5 iterations 0.24 (at d = 64) | 10 iterations 4.4e-3 | 15 iterations 7e-7 (fp32 rounding).
# Trace normalisation puts the spectrum near 1/d, and the iteration grows a small eigenvalue by at most ×1.5
# per step towards its root, so the iSQRT default of 5 iterations is a deliberate truncation (a shrinkage of
# the weak directions), not a converged root; a bigger d needs more steps. Bounds below have ≥ 2× margin.
BOUNDS = {5: 0.5, 10: 1e-2, 15: 1e-5}


@pytest.mark.parametrize("d", [8, 16, 32, 64])
def test_matches_eigen_sqrt_and_improves_with_iterations(d: int) -> None:
    cov = random_spd(8, d, condition=100.0, seed=d)
    exact = eigen_sqrt(cov)
    errors = [relative_error(newton_schulz_sqrt(cov.float(), iterations=k, eps=0.0), exact) for k in BOUNDS]
    for error, bound in zip(errors, BOUNDS.values(), strict=True):
        assert error < bound
    assert errors[0] > errors[1] > errors[2]


def test_default_eps_shifts_the_root_slightly() -> None:
    # The relative ridge eps·trace·I moves the converged root by ~eps·d/2 relative (measured 8e-4 at d = 64).
    cov = random_spd(4, 64, condition=100.0, seed=1)
    assert relative_error(newton_schulz_sqrt(cov.float(), iterations=20), eigen_sqrt(cov)) < 2e-3
    ridged = cov + 1e-5 * cov.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None] * torch.eye(64, dtype=cov.dtype)
    assert relative_error(newton_schulz_sqrt(cov.float(), iterations=20), eigen_sqrt(ridged)) < 1e-5


def test_rank_deficient_covariance_is_stable() -> None:
    """4 samples in d = 32: rank 3, 29 zero eigenvalues (where an eigen-root's gradient is infinite)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, 32, generator=g, requires_grad=True)
    cov = centred_covariance(x)
    root = newton_schulz_sqrt(cov, iterations=20)
    root.square().sum().backward()  # any scalar that depends on every entry
    assert torch.isfinite(root).all() and x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # Converged: root² = cov + eps·trace·I; the zero eigenvalues converge slowly (root ~sqrt(eps)), so the
    # residual is checked relative to ‖cov‖ (measured 1.5e-5 at 20 iterations).
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None, None]
    target = cov + 1e-5 * trace * torch.eye(32)
    residual = torch.linalg.matrix_norm(root @ root - target) / torch.linalg.matrix_norm(cov)
    assert residual.max() < 1e-4
    # At the iSQRT default of 5 steps the result is finite too, and symmetric.
    short = newton_schulz_sqrt(cov.detach(), iterations=5)
    assert torch.isfinite(short).all()
    torch.testing.assert_close(short, short.transpose(-1, -2), atol=1e-5 * short.abs().max().item(), rtol=0)


def test_zero_matrix_gives_zero() -> None:
    root = newton_schulz_sqrt(torch.zeros(2, 5, 5))
    assert torch.isfinite(root).all() and root.abs().max() < 1e-7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_fp32(dtype: torch.dtype) -> None:
    cov = random_spd(4, 16, condition=10.0, seed=3).to(dtype)
    root = newton_schulz_sqrt(cov, iterations=10)
    assert root.dtype == torch.float32  # half inputs give an fp32 root (fsar.ops.precision)
    # Identical to the fp32 computation on the same (rounded) input.
    expected = newton_schulz_sqrt(cov.float(), iterations=10)
    torch.testing.assert_close(root, expected, atol=0, rtol=0)


def test_bf16_autocast_does_not_reach_the_root() -> None:
    """Under bf16 autocast the products still run in fp32: the same root as without autocast."""
    cov = random_spd(4, 16, condition=10.0, seed=3).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        root = newton_schulz_sqrt(cov, iterations=10)
    assert root.dtype == torch.float32
    torch.testing.assert_close(root, newton_schulz_sqrt(cov, iterations=10), atol=0, rtol=0)


def test_centred_covariance_matches_numpy() -> None:
    x = torch.randn(3, 2, 10, 7, dtype=torch.float64)
    expected = np.stack([np.cov(sample.numpy(), rowvar=False, bias=True) for sample in x.reshape(-1, 10, 7)])
    np.testing.assert_allclose(centred_covariance(x).reshape(-1, 7, 7).numpy(), expected, atol=1e-12, rtol=0)


def test_upper_triangle_count_and_order() -> None:
    d = 4
    mat = torch.arange(d * d, dtype=torch.float32).reshape(d, d).expand(2, 3, d, d)
    vec = upper_triangle(mat)
    assert vec.shape == (2, 3, d * (d + 1) // 2)
    expected = [row * d + col for row in range(d) for col in range(row, d)]  # row-major, diagonal included
    assert vec[1, 2].tolist() == expected


def test_rejects_non_square() -> None:
    with pytest.raises(ValueError, match="square"):
        newton_schulz_sqrt(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="square"):
        upper_triangle(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="iterations"):
        newton_schulz_sqrt(torch.eye(3), iterations=0)
