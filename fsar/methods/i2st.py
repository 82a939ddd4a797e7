"""I2ST: joint image–instance spatial-temporal attention with global-local prototype matching.

What the paper states (DESIGN "I2ST"): an instance perception module yields action-related instance
embeddings, supervised during training by masks from a text-guided segmentation model; a pair of
spatial-temporal attention sub-modules fuses image features and instance embeddings; matching combines a
sequence-level and a frame-level distance. Everything below that is more specific is our reconstruction,
each choice a knob of ``I2STConfig``:

Per video (``encode`` → ``I2STEncoding``, so evaluation runs it once per video of a split):

1. patch grid ``(T, g, g, D)`` from the store → optionally minus its temporal mean per patch position
   (``temporal_centre``: keep only what changes — the motion) → normalised (``input_norm``: by the frame's
   RMS, keeping which patches stand out, or per patch by LayerNorm) → Linear to width ``dim`` + a 2-D
   position code;
2. instance perception (``InstancePerception``): ``instances`` learnable queries cross-attend to each
   frame's patch tokens; mask logits = query · patch / √dim; instance embedding = mask-weighted mean of
   the patch tokens (sigmoid mask);
3. ``layers`` × (spatial sub-module: patch tokens ↔ instance tokens per frame; frame token = mean patch
   token; temporal sub-module: self-attention across frames over [frame token; instance tokens]);
4. per-frame vector: [frame token; mean instance token] (``match_features``), LayerNorm, optional
   ``proj_dim`` projection.

Per episode (``head``): distance = λ·global + (1 − λ)·local, where global is the cosine
distance of the query's temporal-mean vector to the class prototype (mean of the class's support
vectors) and local the frame-level alignment distance (OTAM both ways, or Bi-MHM) averaged over the
class's support videos, with the ops the ``otam`` / ``bimhm`` methods use; logits = −distance·scale.
The OTAM cost sums a path of frame distances (at least L + M of them, both ways) and Bi-MHM two means,
while the global term is one cosine distance: ``local_mean`` divides the local term by those counts so
that both are per-frame distances in [0, 2] and λ weighs what it says (otherwise the local term is ~16×
larger at 8 frames and λ = 0.5 means mostly local).

Mask supervision (training only, ``mask_source``): ``files`` — per-patch foreground masks read by the
training pipeline from ``mask_files`` (``fsar.data.masks``) and passed in ``Supervision``; ``pseudo`` —
masks from the cosine similarity of the store's raw patch features with the class name's text
embedding (support videos: their class; queries: ``supervision.query_labels``); ``none``. Loss: BCE +
Dice after matching queries to the mask (``mask_match``), times ``mask_loss_weight``, returned as
``aux["mask"]``. Mask logits exist only in training mode; at evaluation no mask source is touched, and
I2ST logits never read ``class_text`` or ``supervision`` whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.methods.base import Explanation, MaskRequest, PairTableMethod, Supervision
from fsar.methods.i2st_blocks import (
    FrameScale,
    InstancePerception,
    SpatialAttention,
    TemporalAttention,
    grid_code,
)
from fsar.methods.parts import (
    LogitScale,
    TemporalCentre,
    check_metric_knobs,
    class_average,
    class_prototypes,
    frame_alignment,
    make_projection,
)
from fsar.methods.registry import Configuration, register_method
from fsar.ops.frame_distance import cosine_distance, mean_hausdorff, pairwise_frame_distance
from fsar.ops.instance_masks import instance_matching_loss, matched_mask_loss, text_pseudo_masks
from fsar.ops.soft_dtw import otam_distance

_ENCODE_CHUNK = 512  # videos encoded per step: bounds activation memory when evaluation encodes a whole split


class I2STEncoding(NamedTuple):
    """What I2ST keeps of one video (leading axes ``(...)`` shared)."""

    frames: Tensor  # (..., T, E) the per-frame vectors the metric compares
    mask_logits: Tensor  # (..., T, K, g, g) in training mode with a mask source, else (..., 0)
    patches: Tensor  # the input in training mode with mask_source=pseudo (pseudo-masks come from it), else (..., 0)
    mean: Tensor  # (..., E) the temporal mean of the frames: the global term's view of the video


@dataclass
class I2STConfig:
    """Knobs of I2ST ([recon] choices documented in the module docstring)."""

    instances: int = 4  # K learnable instance queries per frame
    instance_location: bool = True  # add a learned code of each instance mask's centroid to its embedding: where the instance is [recon]
    dim: int = 128  # token width of instance perception and attention (patches are projected D → dim)
    heads: int = 4  # attention heads; dim must be divisible by it
    layers: int = 1  # stacked (spatial, temporal) attention pairs; 0 = instance perception only
    mlp_ratio: float = 2.0  # hidden width of every attention block's MLP, as a multiple of dim
    input_norm: Literal["frame", "patch"] = "frame"  # scale patches by the frame's RMS, or LayerNorm each patch
    match_features: Literal["both", "frame", "instances"] = "both"  # per-frame vector: [frame; mean instance] or one
    proj_dim: int = 0  # 0: match the normalised tokens; > 0: a learned Linear(·, proj_dim) per frame first
    lambda_global: float = 0.5  # distance = λ·global (sequence mean vs class prototype) + (1 − λ)·local
    local_mean: bool = True  # divide the local distance by the frames it aligns (OTAM: L + M; Bi-MHM: 2 means), so both terms are per-frame cosine distances in [0, 2] and λ weighs what it says [recon]
    local_metric: Literal["otam", "bimhm"] = "otam"  # frame-level distance: OTAM (both ways) or Bi-MHM
    otam_gamma: float = 0.1  # OTAM soft-min temperature (local_metric=otam); 0 = hard DTW
    temporal_centre: bool = False  # subtract each video's temporal mean patch grid first: match motion, not appearance
    temperature: float = 0.0625  # logits = -distance / temperature; 1/16 = OTAM's scale at 8 frames both ways when local_mean averages the 16 terms
    learn_scale: bool = True  # train the logit scale 1/temperature (it starts at 1/temperature)
    mask_source: Literal["none", "pseudo", "files"] = "none"  # training-only mask supervision (see docstring)
    mask_files: str = ""  # mask folder (fsar.data.masks format) for mask_source=files; read by training only
    mask_loss_weight: float = 1.0  # weight of the BCE + Dice mask loss in the training loss
    mask_match: Literal["best", "union", "hungarian"] = "best"  # foreground masks: supervise the best-matching query, or the union of all; hungarian: instance masks (ids 1, 2, ...) matched one to one to the queries, every matched query supervised (mask_source=files)
    pseudo_threshold: float = 0.5  # pseudo-masks: binarise min-max-normalised similarity here (0 = keep soft)

    def __post_init__(self) -> None:
        check_metric_knobs("i2st", temperature=self.temperature, proj_dim=self.proj_dim)
        for name in ("instances", "dim", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"i2st: {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ConfigError(f"i2st: dim={self.dim} must be divisible by heads={self.heads}")
        if self.layers < 0:
            raise ConfigError(f"i2st: layers must be >= 0, got {self.layers}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"i2st: mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.lambda_global <= 1.0:
            raise ConfigError(f"i2st: lambda_global must lie in [0, 1], got {self.lambda_global}")
        if self.otam_gamma < 0:
            raise ConfigError(f"i2st: otam_gamma must be >= 0 (0 = hard DTW), got {self.otam_gamma}")
        if self.mask_loss_weight < 0:
            raise ConfigError(f"i2st: mask_loss_weight must be >= 0, got {self.mask_loss_weight}")
        if not 0.0 <= self.pseudo_threshold < 1.0:
            raise ConfigError(f"i2st: pseudo_threshold must lie in [0, 1), got {self.pseudo_threshold}")
        if self.mask_match == "hungarian" and self.mask_source != "files":
            raise ConfigError("i2st: mask_match=hungarian matches the queries to the instances of mask files; "
                              "set mask_source=files (pseudo-masks have one foreground, no instances)")
        if self.mask_source == "files" and not self.mask_files:
            raise ConfigError("i2st: mask_source=files needs mask_files (a folder written by `fsar masks`); "
                              "or use mask_source=pseudo or none")


I2ST_CONFIGURATIONS = {
    "paper": Configuration(
        {"temporal_centre": False, "instance_location": False},
        "as the paper describes it: instance queries on the patch grid, image-instance spatial and temporal "
        "attention, global-local prototype matching; mask supervision (mask_source: files or pseudo, the "
        "paper's text-guided masks) is set by the data, not by the configuration; sizes are [recon]"),
    "fsar": Configuration(
        {"temporal_centre": True, "instance_location": True},
        "the paper's configuration plus fsar's additions",
        {"temporal_centre": "each video's temporal mean patch grid subtracted first: match motion, not appearance",
         "instance_location": "a learned code of each instance mask's centroid added to its embedding: where the "
                              "instance is"}),
}


@register_method(
    "i2st", config=I2STConfig, input_kind="patches",
    description="I2ST: instance queries + image-instance spatial-temporal attention, global+local matching",
    configurations=I2ST_CONFIGURATIONS, default_configuration="paper",
)
class I2ST(PairTableMethod):
    """Instance perception and spatial-temporal attention per video; λ·global + (1 − λ)·local matching."""

    def __init__(self, config: I2STConfig, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        norm = FrameScale() if c.input_norm == "frame" else nn.LayerNorm(feature_dim)
        self.embed = nn.Sequential(norm, nn.Linear(feature_dim, c.dim))
        # A fixed code of the patch position, scaled by a learned gain so it cannot swamp the features at init.
        self.position_gain = nn.Parameter(torch.tensor(0.1))
        # Instances feed the attention layers, the matched vector or the mask loss; with none of those the
        # module would hold parameters that never get a gradient (which DDP refuses), so it is not built.
        uses_instances = c.layers > 0 or c.match_features != "frame" or c.mask_source != "none"
        self.perception = (InstancePerception(c.dim, instances=c.instances, heads=c.heads, mlp_ratio=c.mlp_ratio,
                                              location=c.instance_location) if uses_instances else None)
        self.spatial = nn.ModuleList(
            SpatialAttention(c.dim, heads=c.heads, mlp_ratio=c.mlp_ratio) for _ in range(c.layers))
        self.temporal = nn.ModuleList(
            TemporalAttention(c.dim, instances=c.instances, heads=c.heads, mlp_ratio=c.mlp_ratio)
            for _ in range(c.layers))
        width = 2 * c.dim if c.match_features == "both" else c.dim
        self.norm_out = nn.LayerNorm(width)
        self.proj = make_projection(width, c.proj_dim)
        self.centre = TemporalCentre() if c.temporal_centre else nn.Identity()
        self.scale = LogitScale(c.temperature, learn=c.learn_scale)

    @property
    def uses_text(self) -> bool:
        """Class-name text is read only to make pseudo-masks in training; logits never read it."""
        return self.config.mask_source == "pseudo"

    @property
    def mask_request(self) -> MaskRequest | None:
        source = self.config.mask_source
        instances = self.config.instances if self.config.mask_match == "hungarian" else 0
        return None if source == "none" else MaskRequest(source, self.config.mask_files, instances)

    # ------------------------------------------------------------------ per video
    def encode(self, videos: Tensor) -> I2STEncoding:
        """Per-video encoding: ``(..., T, g, g, D)`` → ``I2STEncoding`` (mask fields empty outside training with a
        mask source, so evaluation gathers nothing mask-related per episode)."""
        lead, (frames, grid, _, dim) = videos.shape[:-4], videos.shape[-4:]
        # Centring works on (..., T, features): the whole patch grid of a frame is one feature vector here.
        flat = self.centre(videos.reshape(-1, frames, grid * grid * dim)).view(-1, frames, grid, grid, dim)
        parts = [self._encode(flat[i : i + _ENCODE_CHUNK]) for i in range(0, flat.shape[0], _ENCODE_CHUNK)]
        vectors = torch.cat([p[0] for p in parts]).view(*lead, frames, -1)
        source = self.config.mask_source
        empty = videos.new_zeros(*lead, 0)
        masks = empty
        if self.training and source != "none":
            masks = torch.cat([p[1] for p in parts]).view(*lead, frames, self.config.instances, grid, grid)
        return I2STEncoding(vectors, masks, videos if self.training and source == "pseudo" else empty, vectors.mean(dim=-2))

    def _encode(self, videos: Tensor) -> tuple[Tensor, Tensor]:
        """``(V, T, g, g, D)`` → per-frame vectors ``(V, T, E)`` and mask logits ``(V·T, K, g·g)``."""
        n_videos, frames, grid, _, feature_dim = videos.shape
        tokens = self.embed(videos.reshape(n_videos * frames, grid * grid, feature_dim))
        tokens = tokens + self.position_gain * grid_code(grid, tokens.shape[-1], device=tokens.device).to(tokens.dtype)
        image, frame = tokens, tokens.mean(dim=1)
        if self.perception is None:  # layers=0, frame tokens matched, no mask loss: instances are not needed
            return self.proj(self.norm_out(frame)).view(n_videos, frames, -1), tokens.new_zeros(0)
        instances, mask_logits = self.perception(tokens)  # (M, K, d), (M, K, P)
        for spatial, temporal in zip(self.spatial, self.temporal, strict=True):
            image, instances = spatial(image, instances)
            frame = image.mean(dim=1)  # (M, d): the frame token summarises the updated patch tokens
            mixed = temporal(torch.cat([frame[:, None], instances], dim=1).view(n_videos, frames, -1, frame.shape[-1]))
            mixed = mixed.reshape(n_videos * frames, -1, frame.shape[-1])
            # The temporal update of the frame token reaches the next layer's patch tokens as a residual.
            image = image + (mixed[:, 0] - frame)[:, None]
            frame, instances = mixed[:, 0], mixed[:, 1:]
        mode = self.config.match_features
        if mode == "both":
            vectors = torch.cat([frame, instances.mean(dim=1)], dim=-1)
        else:
            vectors = frame if mode == "frame" else instances.mean(dim=1)
        vectors = self.proj(self.norm_out(vectors)).view(n_videos, frames, -1)
        return vectors, mask_logits

    # ------------------------------------------------------------------ per episode
    def global_distance(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> Tensor:
        """Sequence level: cosine distance of each query's temporal mean to each class prototype (the mean
        of its support videos' temporal means): ``(B, N_s, M, E)``, ``(B, N_q, L, E)`` → ``(B, N_q, way)``."""
        prototypes = class_prototypes(support.mean(dim=-2), support_labels, way)
        return cosine_distance(query.mean(dim=-2), prototypes)

    def local_distance(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> Tensor:
        """Frame level: OTAM (both directions) or Bi-MHM over 1 − cos frame distances, averaged over each
        class's support videos: → ``(B, N_q, way)``."""
        return class_average(self.local_pairs(support, query), support_labels, way)

    def local_pairs(self, support: Tensor, query: Tensor) -> Tensor:
        """The local distance of every (query, support) pair: frames ``(B, N_s, M, E)``, ``(B, N_q, L, E)`` →
        ``(B, N_q, N_s)``, per aligned frame with ``local_mean``."""
        return self.local_from_distances(pairwise_frame_distance(query, support))

    def local_from_distances(self, dist: Tensor) -> Tensor:
        """Frame distances ``(B, N_q, N_s, L, M)`` → the pairs' local distances ``(B, N_q, N_s)``."""
        if self.config.local_metric == "otam":
            pair = otam_distance(dist, self.config.otam_gamma, bidirectional=True)
            terms = dist.shape[-2] + dist.shape[-1]  # a path of at least L (and M) cells, both ways
        else:
            pair = mean_hausdorff(dist)
            terms = 2  # two means of nearest-frame distances
        return pair / terms if self.config.local_mean else pair

    def distance(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> Tensor:
        """λ·global + (1 − λ)·local from frame vectors ``(B, N, T, E)``; a term whose weight is 0 is not computed."""
        pairs = self.local_pairs(support, query) if self.config.lambda_global < 1 else None
        return self._combine(pairs, support.mean(dim=-2), support_labels, query.mean(dim=-2), way)

    def _combine(self, pairs: Tensor | None, support_means: Tensor, support_labels: Tensor, query_means: Tensor,
                 way: int) -> Tensor:
        """λ·global (from the videos' mean vectors ``(B, N, E)``) + (1 − λ)·local (class mean of ``pairs``)."""
        lam = self.config.lambda_global
        total = query_means.new_zeros(())
        if lam > 0:
            total = total + lam * cosine_distance(query_means, class_prototypes(support_means, support_labels, way))
        if lam < 1:
            total = total + (1.0 - lam) * class_average(pairs, support_labels, way)  # type: ignore[arg-type]
        return total

    # ---------------------------------------------------------------- pair-distance evaluation
    # The local term is a distance per (query, support) pair and the global one reads only each video's mean
    # vector, so evaluation solves each pair's alignment once per split (fsar.eval pair table).
    pair_table_reads = ("mean",)  # logits_from_pairs reads only the mean vectors

    def pair_distance(self, support: I2STEncoding, query: I2STEncoding) -> Tensor:
        if self.config.lambda_global == 1:  # no local term: nothing to align
            return support.frames.new_zeros(query.frames.shape[0], query.frames.shape[1], support.frames.shape[1])
        return self.local_pairs(support.frames, query.frames)

    def explain(self, support: I2STEncoding, query: I2STEncoding, *,
                query_video: Tensor | None = None) -> Explanation:
        """The local term's frame alignment (OTAM's path or Bi-MHM's matches) and, given the query's patch grid
        ``(T, g, g, D)``, its instance masks: per frame, the strongest of the K instances' sigmoid masks."""
        masks = None
        if query_video is not None and self.perception is not None:
            frames, grid = query_video.shape[0], query_video.shape[1]
            flat = self.centre(query_video.reshape(1, frames, -1)).view(1, frames, grid, grid, -1)
            _, logits = self._encode(flat)  # (T, K, g·g)
            masks = logits.sigmoid().amax(dim=1).view(frames, grid, grid).float()
        return frame_alignment(query.frames, support.frames, self.local_from_distances,
                               kind=f"frame alignment ({self.config.local_metric})", query_masks=masks)

    def logits_from_pairs(self, distance: Tensor, support: I2STEncoding, support_labels: Tensor, query: I2STEncoding,
                          way: int, *, class_text: Tensor | None = None) -> Tensor:
        return self.scale(self._combine(distance, support.mean, support_labels, query.mean, way))

    def auxiliary_losses(self, support: I2STEncoding, support_labels: Tensor, query: I2STEncoding, way: int, *,
                         class_text: Tensor | None = None,
                         supervision: Supervision | None = None) -> dict[str, Tensor]:
        """``aux["mask"]`` when training with a mask source and ``supervision`` (evaluation passes none, and
        has no mask logits)."""
        if supervision is None or support.mask_logits.shape[-1] == 0 or self.config.mask_loss_weight == 0:
            return {}
        loss = self.mask_loss((support.mask_logits, query.mask_logits), (support.patches, query.patches),
                              support_labels, class_text=class_text, supervision=supervision)
        return {"mask": self.config.mask_loss_weight * loss}

    def mask_loss(self, mask_logits: tuple[Tensor, Tensor], patches: tuple[Tensor, Tensor], support_labels: Tensor,
                  *, class_text: Tensor | None, supervision: Supervision) -> Tensor:
        """BCE + Dice of support and query mask logits ``(B, N, T, K, g, g)`` against the mask source's
        targets, pooled over the videos that have one."""
        targets, valids = self._mask_targets(patches, support_labels, class_text, supervision)
        total, count = mask_logits[0].new_zeros(()), mask_logits[0].new_zeros(())
        for logits, target, valid in zip(mask_logits, targets, valids, strict=True):
            batch, videos, frames, instances, grid, _ = logits.shape
            per_instance = self.config.mask_match == "hungarian"
            wanted = (batch, videos, frames) + (target.shape[3:4] if per_instance else ()) + (grid, grid)
            if target.shape != wanted:
                raise ValueError(f"i2st: masks must be {'(B, N, T, I, g, g)' if per_instance else '(B, N, T, g, g)'} "
                                 f"to match the patch grid, got {tuple(target.shape)}")
            valid = valid.reshape(-1)
            flat_logits = logits.reshape(batch * videos, frames, instances, grid * grid)
            if per_instance:
                loss = instance_matching_loss(flat_logits, target.reshape(batch * videos, frames, -1, grid * grid), valid)
            else:
                loss = matched_mask_loss(flat_logits, target.reshape(batch * videos, frames, grid * grid), valid,
                                         match=self.config.mask_match)
            n_valid = valid.sum().to(loss.dtype)
            total, count = total + loss * n_valid, count + n_valid
        return total / count.clamp_min(1.0)

    def _mask_targets(self, patches: tuple[Tensor, Tensor], support_labels: Tensor, class_text: Tensor | None,
                      supervision: Supervision) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """(support, query) targets ``(B, N, T, g, g)`` in [0, 1] and validity ``(B, N)``."""
        if self.config.mask_source == "files":
            if supervision.support_masks is None or supervision.query_masks is None:
                raise ValueError("i2st: mask_source=files but the supervision carries no masks; the training "
                                 "pipeline loads them from mask_files (fsar.mask_supervision)")
            targets = (supervision.support_masks, supervision.query_masks)
            valids = tuple(
                torch.ones(m.shape[:2], dtype=torch.bool, device=m.device) if v is None else v
                for m, v in ((targets[0], supervision.support_mask_valid), (targets[1], supervision.query_mask_valid))
            )
            return targets, valids  # type: ignore[return-value]
        if class_text is None or supervision.query_labels is None:
            raise ValueError("i2st: mask_source=pseudo needs class_text (the store's class-name embeddings) and "
                             "supervision.query_labels in training; re-embed with a text tower or use mask_source=none")
        if class_text.shape[-1] != patches[0].shape[-1]:
            raise ValueError(f"i2st: pseudo-masks compare patches of width {patches[0].shape[-1]} with text "
                             f"embeddings of width {class_text.shape[-1]}; they must share the CLIP space")
        targets = tuple(
            self._pseudo(p, class_text, labels) for p, labels in zip(patches, (support_labels, supervision.query_labels),
                                                                   strict=True)
        )
        valids = tuple(torch.ones(t.shape[:2], dtype=torch.bool, device=t.device) for t in targets)
        return targets, valids  # type: ignore[return-value]

    def _pseudo(self, patches: Tensor, class_text: Tensor, labels: Tensor) -> Tensor:
        """Pseudo-masks of ``(B, N, T, g, g, D)`` patches from the text of each video's class (labels ``(B, N)``)."""
        batch, videos, frames, grid, _, dim = patches.shape
        text = class_text.gather(1, labels.long()[..., None].expand(-1, -1, class_text.shape[-1]))  # (B, N, E)
        masks = text_pseudo_masks(patches.reshape(batch, videos, frames, grid * grid, dim), text[:, :, None],
                                  threshold=self.config.pseudo_threshold)
        return masks.view(batch, videos, frames, grid, grid)
