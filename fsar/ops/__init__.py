"""Batched tensor operations shared by the few-shot methods."""

from fsar.ops.frame_distance import cosine_distance, pairwise_frame_distance
from fsar.ops.soft_dtw import otam_cumulative

__all__ = ["cosine_distance", "otam_cumulative", "pairwise_frame_distance"]
