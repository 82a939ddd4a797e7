"""Batched tensor operations shared by the few-shot methods."""

from fsar.ops.frame_distance import cosine_distance, pairwise_frame_distance
from fsar.ops.matrix_sqrt import centred_covariance, newton_schulz_sqrt, upper_triangle
from fsar.ops.sinkhorn import sinkhorn, sinkhorn_log
from fsar.ops.soft_dtw import otam_cumulative

__all__ = [
    "centred_covariance",
    "cosine_distance",
    "newton_schulz_sqrt",
    "otam_cumulative",
    "pairwise_frame_distance",
    "sinkhorn",
    "sinkhorn_log",
    "upper_triangle",
]
