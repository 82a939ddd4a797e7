"""Cosine distance matrices between frame sequences, one batched matmul for a whole batch of episodes."""

from __future__ import annotations

import torch
from torch import Tensor

from fsar.ops.precision import full_precision

_EPS = 1e-8  # floor on a vector's norm: an all-zero frame sits at distance 1 from everything, not NaN


@full_precision
def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` between every row of ``a`` and every row of ``b``.

    Args:
        a: ``(..., N, D)``; b: ``(..., M, D)``, leading dims broadcastable.

    Returns:
        ``(..., N, M)`` distances in [0, 2].
    """
    # Scale the (small) product by the inverse norms instead of normalising the (large) inputs:
    # dividing every feature costs more than the matmul itself at D = 512.
    inv_a = torch.linalg.vector_norm(a, dim=-1).clamp_min(_EPS).reciprocal()
    inv_b = torch.linalg.vector_norm(b, dim=-1).clamp_min(_EPS).reciprocal()
    cos = (a @ b.transpose(-1, -2)) * inv_a.unsqueeze(-1) * inv_b.unsqueeze(-2)
    return 1.0 - cos


@full_precision
def pairwise_frame_distance(query: Tensor, support: Tensor) -> Tensor:
    """Frame-to-frame ``1 - cos`` for every (query video, support video) pair of every episode.

    Args:
        query: ``(B, N_q, L, D)``; support: ``(B, N_s, M, D)``.

    Returns:
        ``(B, N_q, N_s, L, M)`` (a permuted view); entry ``[b, i, j, l, m]`` compares frame l of query i
        with frame m of support j in episode b.
    """
    batch, n_query, length, dim = query.shape
    _, n_support, width, _ = support.shape
    # One (N_q·L) × (N_s·M) matmul per episode instead of N_q·N_s small ones.
    dist = cosine_distance(query.reshape(batch, n_query * length, dim), support.reshape(batch, n_support * width, dim))
    return dist.view(batch, n_query, length, n_support, width).permute(0, 1, 3, 2, 4)


@full_precision
def mean_hausdorff(dist: Tensor) -> Tensor:
    """Bidirectional mean nearest-frame distance (Bi-MHM) of ``(..., L, M)`` frame distances → ``(...)``."""
    return dist.amin(dim=-1).mean(dim=-1) + dist.amin(dim=-2).mean(dim=-1)
