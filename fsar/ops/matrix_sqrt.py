"""Second-order pooling helpers: centred covariance, its matrix square root, and the upper-triangle vector.

The square root is the coupled Newton–Schulz iteration of iSQRT-COV (Li et al., CVPR 2018): only
matrix products, so it runs batched on any device and backpropagates through plain autograd, unlike
an eigen- or SVD-based root whose gradient blows up when eigenvalues coincide (which every
rank-deficient covariance of few samples has: many zero eigenvalues).

For ``A`` with spectrum in ``(0, 1]`` the iteration

    ``Y₀ = A, Z₀ = I;  T = (3I − Z Y) / 2;  Y ← Y T;  Z ← T Z``

drives ``Y → A^{1/2}`` and ``Z → A^{-1/2}``. Dividing by the trace (pre-normalisation) puts the
spectrum of an SPD/PSD matrix in ``[0, 1]``; multiplying by ``sqrt(trace)`` afterwards
(post-compensation) restores the scale. Eigenvalue ``λ`` of the normalised matrix converges only once
the iterate has grown from ``λ`` to ``sqrt(λ)`` (by at most ×1.5 per step), so a few iterations are
exact for the dominant directions and under-estimate the root of the weakest ones; that truncation is
the intended behaviour of iSQRT (it acts as a spectral shrinkage), not an error to iterate away.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsar.ops.precision import full_precision

# Floor on the trace: an all-zero covariance (all samples identical) gives a zero root, not NaN.
_TRACE_FLOOR = 1e-12


@full_precision
def centred_covariance(x: Tensor) -> Tensor:
    """Covariance of the ``n`` samples of ``x``: mean-centred, divided by ``n`` (not ``n - 1``).

    Args:
        x: ``(..., n, d)`` samples along ``n``.

    Returns:
        ``(..., d, d)`` symmetric PSD matrices, in ``x``'s dtype (fp32 for fp16/bf16 input, see ``fsar.ops.precision``).
    """
    if x.dim() < 2:
        raise ValueError(f"centred_covariance expects (..., n, d) samples, got shape {tuple(x.shape)}")
    n = x.shape[-2]
    if n == 0:
        raise ValueError("centred_covariance: no samples (n = 0)")
    centred = x - x.mean(dim=-2, keepdim=True)
    return centred.transpose(-1, -2) @ centred / n


@full_precision
def newton_schulz_sqrt(cov: Tensor, *, iterations: int = 5, eps: float = 1e-5) -> Tensor:
    """Approximate square root of symmetric PSD matrices by coupled Newton–Schulz, differentiable.

    Computed in fp32 (or fp64 for fp64 input) whatever the input dtype: fp16/bf16 products lose the
    small eigenvalues within two iterations.

    Rank-deficient input: ``eps`` is added to the spectrum *after* trace normalisation, so the result
    approximates ``sqrt(cov + eps · trace(cov) · I)``: a relative ridge, independent of the feature scale,
    that keeps ``Z`` (the inverse-root iterate) bounded. An all-zero matrix gives (almost exactly) zero.

    Args:
        cov: ``(..., d, d)`` symmetric positive (semi-)definite matrices.
        iterations: number of coupled Newton–Schulz steps, ≥ 1 (iSQRT uses 3–5).
        eps: relative ridge added to the trace-normalised matrix, ≥ 0.

    Returns:
        ``(..., d, d)`` approximate roots in ``cov``'s dtype (fp32 for fp16/bf16 input).
    """
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"newton_schulz_sqrt expects (..., d, d) square matrices, got shape {tuple(cov.shape)}")
    if iterations < 1:
        raise ValueError(f"newton_schulz_sqrt: iterations must be >= 1, got {iterations}")
    if eps < 0:
        raise ValueError(f"newton_schulz_sqrt: eps must be >= 0, got {eps}")
    work = cov.to(torch.promote_types(cov.dtype, torch.float32))
    lead, d = work.shape[:-2], work.shape[-1]
    work = work.reshape(-1, d, d)  # (batch, d, d): baddbmm wants one batch axis
    eye = torch.eye(d, dtype=work.dtype, device=work.device)
    half_three = 1.5 * eye

    trace = work.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(_TRACE_FLOOR)[..., None, None]
    a = work / trace + eps * eye

    # First step written out: with Z₀ = I, T₀ = (3I − A)/2, Y₁ = A T₀ and Z₁ = T₀ (saves two products).
    t = torch.add(half_three, a, alpha=-0.5)
    y = a @ t
    z = t
    for step in range(iterations - 1):
        t = torch.baddbmm(half_three, z, y, alpha=-0.5)  # (3I − ZY)/2 in one fused kernel
        y = y @ t
        if step < iterations - 2:  # the last step's Z is never read
            z = t @ z
    return (y * trace.sqrt()).reshape(*lead, d, d).to(cov.dtype)


def upper_triangle(mat: Tensor) -> Tensor:
    """Row-major upper triangle of square matrices, diagonal included.

    Args:
        mat: ``(..., d, d)``.

    Returns:
        ``(..., d (d + 1) / 2)``: ``mat[0, 0], mat[0, 1], …, mat[0, d-1], mat[1, 1], …, mat[d-1, d-1]``.
    """
    if mat.dim() < 2 or mat.shape[-1] != mat.shape[-2]:
        raise ValueError(f"upper_triangle expects (..., d, d) square matrices, got shape {tuple(mat.shape)}")
    d = mat.shape[-1]
    rows, cols = torch.triu_indices(d, d, device=mat.device)
    return mat[..., rows, cols]
