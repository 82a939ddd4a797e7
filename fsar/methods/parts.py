"""Building blocks the methods share: class averages and prototypes, logit scales, projections, a sinusoidal
position code, and the base of the methods that align frame sequences (OTAM, Bi-MHM)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fsar.methods.base import Explanation, FrameEncoding, PairTableMethod, frame_positions


def class_average(values: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Mean of per-support values over each class's support videos (any number of shots per class).

    Args:
        values: ``(B, N_q, N_s)`` e.g. the distance of each query to each support video.
        support_labels: ``(B, N_s)`` in [0, way), every class present.

    Returns:
        ``(B, N_q, way)``.
    """
    return values @ class_weights(support_labels, way, values.dtype)


def class_prototypes(support: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Mean support embedding per class: ``(B, N_s, *E)`` → ``(B, way, *E)``."""
    weights = class_weights(support_labels, way, support.dtype)  # (B, N_s, way)
    flat = support.reshape(*support.shape[:2], -1)
    return (weights.transpose(1, 2) @ flat).reshape(support.shape[0], way, *support.shape[2:])


def class_weights(support_labels: Tensor, way: int, dtype: torch.dtype) -> Tensor:
    """``(B, N_s, way)`` averaging weights: 1/shots(c) where a support video is of class c, else 0."""
    onehot = torch.nn.functional.one_hot(support_labels.long(), way).to(dtype)
    return onehot / onehot.sum(dim=1, keepdim=True).clamp_min(1)


def check_metric_knobs(method: str, *, temperature: float, proj_dim: int) -> None:
    """The knob checks every metric method shares; raises ConfigError naming the method."""
    from fsar.config import ConfigError

    if not temperature > 0:
        raise ConfigError(f"{method}: temperature must be > 0, got {temperature}")
    if proj_dim < 0:
        raise ConfigError(f"{method}: proj_dim must be >= 0 (0 = no projection), got {proj_dim}")


def make_projection(feature_dim: int, proj_dim: int) -> nn.Module:
    """Learned per-frame linear map ``feature_dim → proj_dim``, or identity when ``proj_dim`` is 0."""
    if proj_dim < 0:
        raise ValueError(f"proj_dim must be >= 0, got {proj_dim}")
    if proj_dim and feature_dim < 1:
        raise ValueError(f"feature_dim must be >= 1 for a projection, got {feature_dim}")
    return nn.Linear(feature_dim, proj_dim) if proj_dim else nn.Identity()


def sinusoid_code(positions: Tensor, width: int) -> Tensor:
    """Fixed sine/cosine code of integer positions: ``(n,)`` → ``(n, width)``.

    It works for any number of positions, so one model reads any patch grid size and any clip length.
    """
    half = (width + 1) // 2
    steps = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = torch.exp(-math.log(10000.0) * steps / max(1, half))
    angles = positions.float().unsqueeze(-1) * freqs
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., :width]


class TemporalCentre(nn.Module):
    """Subtract each video's mean frame feature: ``(..., T, D)`` → ``(..., T, D)``.

    What stays is how the frames differ from each other — the motion — while whatever is constant
    over the clip (background, object colour and shape) is removed. Only order-aware metrics can use
    the result: a temporal mean of centred features is zero.
    """

    def forward(self, frames: Tensor) -> Tensor:
        return frames - frames.mean(dim=-2, keepdim=True)


def make_frame_encoder(feature_dim: int, proj_dim: int, *, temporal_centre: bool = False) -> nn.Module:
    """Per-frame features a metric compares: optional temporal centring, then the optional projection."""
    proj = make_projection(feature_dim, proj_dim)
    return nn.Sequential(TemporalCentre(), proj) if temporal_centre else proj


class LogitScale(nn.Module):
    """``logits = -distance / temperature``; with ``learn=True`` the scale 1/temperature is trained.

    The learned scale lives in log space so it stays positive; it starts at 1/temperature.
    """

    def __init__(self, temperature: float, *, learn: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_scale = torch.tensor(-math.log(temperature))
        if learn:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    def forward(self, distance: Tensor) -> Tensor:
        return -distance * self.log_scale.exp().to(distance.dtype)


class FrameAlignmentMethod(PairTableMethod):
    """A method whose distance between two videos is an alignment of their encoded frames (1 − cos between
    every query and support frame), averaged over each class's support videos.

    Subclasses implement ``alignment_cost``. The config must have ``proj_dim``, ``temporal_centre``,
    ``temperature`` and ``learn_scale``.
    """

    def __init__(self, config: Any, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.proj = make_frame_encoder(feature_dim, config.proj_dim, temporal_centre=config.temporal_centre)
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)

    def encode(self, videos: Tensor) -> FrameEncoding:
        """Optional temporal centring and projection, per frame: ``(..., T, D)`` → frames ``(..., T, D')``."""
        return FrameEncoding(self.proj(videos))

    def alignment_cost(self, dist: Tensor) -> Tensor:
        """``(B, N_q, N_s, L, M)`` frame distances → ``(B, N_q, N_s)`` pair distances."""
        raise NotImplementedError

    def pair_distance(self, support: FrameEncoding, query: FrameEncoding) -> Tensor:
        from fsar.ops.frame_distance import pairwise_frame_distance

        return self.alignment_cost(pairwise_frame_distance(query.frames, support.frames))

    def logits_from_pairs(self, distance: Tensor, support: FrameEncoding, support_labels: Tensor,
                          query: FrameEncoding, way: int, *, class_text: Tensor | None = None) -> Tensor:
        return self.scale(class_average(distance, support_labels, way))

    def explain(self, support: FrameEncoding, query: FrameEncoding, *,
                query_video: Tensor | None = None) -> Explanation:
        """For a soft-DTW alignment (OTAM) the expected alignment path, for a matching (Bi-MHM) the matched pairs
        (``frame_alignment``)."""
        return frame_alignment(query.frames, support.frames, self.alignment_cost)


def frame_alignment(query_frames: Tensor, support_frames: Tensor, cost: Any, *, kind: str = "frame alignment",
                    query_masks: Tensor | None = None) -> Explanation:
    """How much each (query frame, support frame) distance counts in a pair's alignment cost: its gradient.
    ``cost`` maps frame distances ``(1, 1, 1, L, M)`` to pair costs ``(1, 1, 1)``; frames ``(L, E)``, ``(M, E)``."""
    from fsar.ops.frame_distance import pairwise_frame_distance

    with torch.enable_grad():
        dist = pairwise_frame_distance(query_frames[None, None], support_frames[None, None]).detach()
        dist.requires_grad_(True)
        (path,) = torch.autograd.grad(cost(dist).sum(), dist)
    return Explanation(kind, path[0, 0, 0].clamp_min(0).float(), frame_positions(query_frames.shape[0], path.device),
                       frame_positions(support_frames.shape[0], path.device), query_masks)
