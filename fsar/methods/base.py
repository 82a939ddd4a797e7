"""The few-shot method contract and the small pieces every method shares.

A method maps one episode (or a batch of episodes) to class logits::

    logits = method(support, support_labels, query, way)

    support         (N_s, T, ...)  or (B, N_s, T, ...)   the method's input kind per video
    support_labels  (N_s,)         or (B, N_s)           int64 in [0, way)
    query           (N_q, T, ...)  or (B, N_q, T, ...)
    logits          (N_q, way)     or (B, N_q, way)

The per-video trailing shape is (T, D) for ``frames``, (T, g, g, d) for ``patches`` and (T, 3, H, W) for
``pixels``. The base class checks the shapes once, adds the episode axis when it is missing and calls
the subclass's batched ``episode_logits`` (or ``episode_forward`` when it has auxiliary losses), so a
subclass only ever sees batched tensors and evaluation runs thousands of episodes in one call.

Two optional keyword inputs travel beside the episode:

    class_text      (way, E)  or (B, way, E)   text embedding of each episode class's name, in label
                                               order (the store's CLIP text tower); None when absent
    supervision     Supervision or None        training-only targets (query labels, masks); never
                                               given at evaluation, so logits must not depend on it
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# Dimensions of one video per input kind (time first): frames (T, D), patches (T, g, g, d), pixels (T, 3, H, W).
VIDEO_DIMS = {"frames": 2, "patches": 4, "pixels": 4}


Encoded = Tensor | tuple[Tensor, ...]  # what encode_videos returns: one tensor or a tuple, each (..., N, ...)


@dataclass
class Supervision:
    """Training-only targets for auxiliary losses, batched like the episode (B first).

    Logits must never depend on these: evaluation passes no supervision.
    """

    query_labels: Tensor | None = None  # (B, N_q) episode-local labels of the queries
    support_masks: Tensor | None = None  # (B, N_s, T, g, g) in [0, 1]: per-patch foreground masks
    query_masks: Tensor | None = None  # (B, N_q, T, g, g)
    support_mask_valid: Tensor | None = None  # (B, N_s) bool: whether that video has a mask
    query_mask_valid: Tensor | None = None  # (B, N_q) bool


class FewShotMethod(nn.Module):
    """Base of every registered method; see the module docstring for the forward contract.

    Subclasses implement ``episode_logits`` (batched tensors in, ``(B, N_q, way)`` logits out), or
    ``episode_forward`` when they also return auxiliary losses. ``register_method`` fills the class
    attributes below.
    """

    method_name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "frames"
    needs_text: ClassVar[bool] = False
    # Declared capability: the logits read only 1 − cos distances between the frames ``table_frames`` picks out
    # of each video's encoding, so evaluation may compute one split-wide table of frame distances and index it
    # per episode.
    frame_table: ClassVar[bool] = False

    config: Any  # the method's resolved config dataclass, saved next to a run to rebuild the method

    @property
    def uses_text(self) -> bool:
        """Whether this instance reads ``class_text`` when the store has it (``needs_text`` methods must)."""
        return self.needs_text

    def forward(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int, *,
                class_text: Tensor | None = None) -> Tensor:
        """Class logits ``(N_q, way)``, or ``(B, N_q, way)`` for a batch of episodes."""
        return self.forward_with_aux(support, support_labels, query, way, class_text=class_text)[0]

    def forward_with_aux(
        self, support: Tensor, support_labels: Tensor, query: Tensor, way: int, *,
        class_text: Tensor | None = None, supervision: Supervision | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits as ``forward`` plus named auxiliary losses (scalars, averaged over the episodes)."""
        batched = self._check(support, support_labels, query, way)
        if class_text is not None:
            self._check_text(class_text, support, way, batched)
        if not batched:
            support, support_labels, query = support.unsqueeze(0), support_labels.unsqueeze(0), query.unsqueeze(0)
            class_text = None if class_text is None else class_text.unsqueeze(0)
        logits, aux = self.episode_forward(support, support_labels, query, way,
                                           class_text=class_text, supervision=supervision)
        return (logits if batched else logits.squeeze(0)), aux

    def episode_forward(
        self, support: Tensor, support_labels: Tensor, query: Tensor, way: int, *,
        class_text: Tensor | None = None, supervision: Supervision | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Batched logits and auxiliary losses.

        By default ``episode_logits`` when a subclass overrides it, else ``encode_videos`` on each side
        and then ``metric_forward`` — the split evaluation uses to encode every video only once.
        """
        if type(self).episode_logits is not FewShotMethod.episode_logits:
            return self.episode_logits(support, support_labels, query, way), {}
        return self.metric_forward(self.encode_videos(support), support_labels, self.encode_videos(query), way,
                                   class_text=class_text, supervision=supervision)

    def episode_logits(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> Tensor:
        """Batched logits: support ``(B, N_s, T, ...)``, labels ``(B, N_s)``, query ``(B, N_q, T, ...)`` → ``(B, N_q, way)``.

        Override this (or ``episode_forward``) only when the metric cannot be split into a per-video
        ``encode_videos`` and a ``metric_forward``; evaluation is then slower.
        """
        return self.episode_forward(support, support_labels, query, way)[0]

    def encode_videos(self, videos: Tensor) -> Encoded:
        """What the metric compares, per video: ``(..., T, D)`` → ``(..., T', D')``; identity by default.

        It must depend on each video alone (no episode context), so that evaluation can run it once per
        video of a split instead of once per episode the video appears in. It may return a tuple of
        tensors that all share the leading ``(...,)`` video axes.
        """
        return videos

    def metric_forward(
        self, support: Encoded, support_labels: Tensor, query: Encoded, way: int, *,
        class_text: Tensor | None = None, supervision: Supervision | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and auxiliary losses from encoded videos; by default ``metric_logits`` and no losses."""
        return self.metric_logits(support, support_labels, query, way), {}

    def metric_logits(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> Tensor:
        """Logits from encoded videos: support ``(B, N_s, T', D')``, query ``(B, N_q, T', D')`` → ``(B, N_q, way)``."""
        raise NotImplementedError(
            f"{type(self).__name__} implements none of episode_logits, episode_forward, metric_forward and metric_logits"
        )

    def table_frames(self, encoded: Encoded) -> Tensor:
        """``frame_table`` methods: the per-frame vectors ``(N, T, F)`` of encoded videos whose distances the logits read."""
        raise NotImplementedError(f"{type(self).__name__} declares no frame table")

    def logits_from_table(self, dist: Tensor, support_labels: Tensor, way: int) -> Tensor:
        """``frame_table`` methods: logits ``(B, N_q, way)`` from frame distances ``(B, N_q, N_s, L, M)``, equal to
        ``metric_forward``'s logits."""
        raise NotImplementedError(f"{type(self).__name__} declares no frame table")

    def _check_text(self, class_text: Tensor, support: Tensor, way: int, batched: bool) -> None:
        name = self.method_name or type(self).__name__
        expected = ((support.shape[0],) if batched else ()) + (way,)
        if class_text.dim() != len(expected) + 1 or tuple(class_text.shape[:-1]) != expected:
            raise ValueError(
                f"{name}: class_text must be {'(B, way, E)' if batched else '(way, E)'} = "
                f"{expected + ('E',)}, got {tuple(class_text.shape)}"
            )

    def _check(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> bool:
        """Validate one call's shapes and labels; returns whether the inputs carry an episode axis."""
        name = self.method_name or type(self).__name__
        video_dims = VIDEO_DIMS[self.input_kind]
        if support.dim() not in (video_dims + 1, video_dims + 2):
            raise ValueError(
                f"{name}: support must be (N_s, T, ...) or (B, N_s, T, ...) with {self.input_kind} of "
                f"{video_dims} dims per video, got shape {tuple(support.shape)}"
            )
        batched = support.dim() == video_dims + 2
        if query.dim() != support.dim() or support_labels.dim() != (2 if batched else 1):
            raise ValueError(
                f"{name}: support {tuple(support.shape)}, labels {tuple(support_labels.shape)} and query "
                f"{tuple(query.shape)} must all have an episode axis or all lack one"
            )
        lead = 2 if batched else 1
        if support.shape[:lead] != support_labels.shape:
            raise ValueError(f"{name}: {tuple(support_labels.shape)} labels for support of shape {tuple(support.shape)}")
        if batched and query.shape[0] != support.shape[0]:
            raise ValueError(f"{name}: {query.shape[0]} query episodes but {support.shape[0]} support episodes")
        # Time may differ between query and support (OTAM aligns L×M); the per-frame shape may not.
        if support.shape[lead + 1 :] != query.shape[lead + 1 :]:
            raise ValueError(
                f"{name}: per-frame shapes differ: support {tuple(support.shape[lead + 1:])}, "
                f"query {tuple(query.shape[lead + 1:])}"
            )
        if support_labels.dtype.is_floating_point or support_labels.dtype == torch.bool:
            raise ValueError(f"{name}: support_labels must be integers, got {support_labels.dtype}")
        if way < 1:
            raise ValueError(f"{name}: way must be >= 1, got {way}")
        if support_labels.device.type != "cpu":
            # Reading label values on an accelerator waits for the device (a host sync every training step),
            # and meta tensors have no values; labels that reach a device come from the episode sampler.
            return batched
        if support_labels.numel():
            low, high = torch.aminmax(support_labels)
            if low < 0 or high >= way:
                raise ValueError(f"{name}: support labels must lie in [0, {way}), got [{int(low)}, {int(high)}]")
        present = torch.zeros(*support_labels.shape[:-1], way, dtype=torch.bool, device=support_labels.device)
        present.scatter_(-1, support_labels.long(), True)
        if not bool(present.all()):
            raise ValueError(f"{name}: every one of the {way} classes needs at least one support video")
        return batched


class FrameDistanceMethod(FewShotMethod):
    """A method whose metric reads only frame-to-frame cosine distances between encoded videos.

    Subclasses implement ``logits_from_distances``; evaluation may then compute the distances of a whole
    split once (one Gram matrix) and index them per episode instead of gathering features. The config
    must have ``proj_dim``, ``temporal_centre``, ``temperature`` and ``learn_scale``.
    """

    frame_table = True

    def __init__(self, config: Any, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.proj = make_frame_encoder(feature_dim, config.proj_dim, temporal_centre=config.temporal_centre)
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)

    def table_frames(self, encoded: Encoded) -> Tensor:
        return encoded  # type: ignore[return-value]

    def logits_from_table(self, dist: Tensor, support_labels: Tensor, way: int) -> Tensor:
        return self.logits_from_distances(dist, support_labels, way)

    def encode_videos(self, videos: Tensor) -> Tensor:
        """Optional temporal centring and projection, per frame: ``(..., T, D)`` → ``(..., T, D')``."""
        return self.proj(videos)

    def metric_logits(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> Tensor:
        from fsar.ops.frame_distance import pairwise_frame_distance

        return self.logits_from_distances(pairwise_frame_distance(query, support), support_labels, way)

    def logits_from_distances(self, dist: Tensor, support_labels: Tensor, way: int) -> Tensor:
        """``dist`` ``(B, N_q, N_s, L, M)`` of encoded frames (1 − cos), labels ``(B, N_s)`` → ``(B, N_q, way)``."""
        raise NotImplementedError


class PairDistanceMethod(FewShotMethod):
    """A method whose logits come from a distance between each (query, support) video pair, plus parts that
    read only per-video encodings (and class text).

    Evaluation can then compute each pair's distance once for the whole split and reuse it in every
    episode the pair meets in (``fsar.eval.episode_scorer``). Subclasses implement ``pair_distance`` and
    ``logits_from_pairs``.
    """

    # Which parts of a tuple encoding ``logits_from_pairs`` reads (None: all); evaluation gathers only those
    # per episode and passes None for the others.
    logit_parts: ClassVar[tuple[int, ...] | None] = None

    def metric_forward(self, support: Encoded, support_labels: Tensor, query: Encoded, way: int, *,
                       class_text: Tensor | None = None,
                       supervision: Supervision | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.logits_from_pairs(self.pair_distance(support, query), support, support_labels, query, way,
                                        class_text=class_text)
        return logits, self.auxiliary_losses(support, support_labels, query, way, class_text=class_text,
                                             supervision=supervision)

    def pair_distance(self, support: Encoded, query: Encoded) -> Tensor:
        """Encoded support ``(B, N_s, ...)`` and query ``(B, N_q, ...)`` → distances ``(B, N_q, N_s)``.

        Entry [b, i, j] must depend on query i and support j of episode b only."""
        raise NotImplementedError

    def logits_from_pairs(self, distance: Tensor, support: Encoded, support_labels: Tensor, query: Encoded,
                          way: int, *, class_text: Tensor | None = None) -> Tensor:
        """Pair distances ``(B, N_q, N_s)`` (and the encodings, for per-video terms) → logits ``(B, N_q, way)``."""
        raise NotImplementedError

    def auxiliary_losses(self, support: Encoded, support_labels: Tensor, query: Encoded, way: int, *,
                         class_text: Tensor | None = None,
                         supervision: Supervision | None = None) -> dict[str, Tensor]:
        """Training-only losses; none by default."""
        return {}


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


def group_by_class(support: Tensor, support_labels: Tensor, way: int) -> Tensor:
    """Support videos arranged by class, for methods that need equal shots: ``(B, N_s, ...)`` → ``(B, way, shot, ...)``.

    Within a class the original support order is kept. Raises ValueError unless every class of every
    episode has the same number of support videos.
    """
    batch, n_support = support_labels.shape
    counts = torch.nn.functional.one_hot(support_labels.long(), way).sum(dim=1)
    if n_support % way or not bool((counts == n_support // way).all()):
        raise ValueError(
            f"this method needs the same number of support videos in every class; got per-class counts "
            f"{counts[0].tolist()}{' (first episode)' if batch > 1 else ''} for {n_support} support videos"
        )
    order = torch.sort(support_labels, dim=1, stable=True).indices
    index = order.reshape(batch, n_support, *([1] * (support.dim() - 2))).expand_as(support)
    return support.gather(1, index).reshape(batch, way, n_support // way, *support.shape[2:])


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
