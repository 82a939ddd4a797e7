"""DMGAL on cached feature maps, registered as ``dmgal``: the released head on a frozen backbone's patch grid.

The cheap way to try DMGAL before fine-tuning: the store's patch grid ``(T, g, g, D)`` stands in for the
backbone's feature maps, and only the head trains, at cached-feature speed::

    per video (encode_videos):  grid (T, g, g, D) → optional temporal centring → maps (T, D, g, g)
                                → S-MGA → time/channel MLP mixer                         [code]
    per task (metric_forward):  C-MGA(supports, queries) → frame vectors (T, ·)           [code]
                                → Bi-MHM distance [code] (or OTAM, ``metric``), class mean,
                                  logits = −distance / temperature

Frame vectors are the spatial mean of the maps, as released (``pool="mean"``). With random-weight
features (the offline default) a pooled frame keeps almost nothing of where things move, so
``pool="flatten"`` keeps the whole g×g grid per frame instead, as the frame methods' ``grid`` view does
[recon]. ``smga``, ``mixer`` and ``cmga`` switch the three modules for ablations. S-MGA keeps the
released BatchNorm (its statistics couple the videos of a training batch; across GPUs the trainer makes
it SyncBatchNorm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from fsar.config import ConfigError
from fsar.methods.base import FewShotMethod, LogitScale, Supervision, TemporalCentre
from fsar.methods.dmgal.mixer import TimeChannelMixer
from fsar.methods.dmgal.motion import CMGA, SMGA
from fsar.methods.registry import register_method
from fsar.ops.frame_distance import mean_hausdorff, pairwise_frame_distance
from fsar.ops.soft_dtw import otam_distance


@dataclass
class DMGALHeadConfig:
    """Knobs of the cached DMGAL head ([code] = as released for DMGAL-FT, [recon] = ours)."""

    num_frames: int = 8  # frames per video; the mixer's time MLP is num_frames x num_frames [code: 8]
    smga: bool = True  # S-MGA on each video's maps [code]
    mixer: bool = True  # time-then-channel MLP mixer after S-MGA [code]
    cmga: bool = True  # C-MGA across the task's videos [code]
    reduction: int = 8  # motion tokens have D / reduction channels [code]
    dropout: float = 0.1  # dropout on motion tokens and attention weights [code]
    pe_scale: float = 0.1  # amplitude of S-MGA's sinusoidal position code [code]
    gate_init: float = 0.0  # initial value of every residual gate [code: 0]
    temporal_centre: bool = False  # subtract each video's temporal mean grid first: motion, not appearance [recon]
    pool: Literal["mean", "flatten"] = "mean"  # frame vector: spatial mean of the maps [code], or the whole grid [recon]
    metric: Literal["bimhm", "otam"] = "bimhm"  # frame-level distance: Bi-MHM [code], or OTAM (both ways; order-aware) [recon]
    otam_gamma: float = 0.1  # OTAM soft-min temperature (metric=otam)
    temperature: float = 0.125  # logits = -Bi-MHM / temperature; 1/8 = the released -sum over 8 frames [code]
    learn_scale: bool = True  # train the logit scale 1/temperature (starts at 1/temperature) [recon]

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"dmgal: {what}")

        need(self.num_frames >= 1, f"num_frames must be >= 1, got {self.num_frames}")
        need(self.reduction >= 1, f"reduction must be >= 1, got {self.reduction}")
        need(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        need(self.pe_scale >= 0.0, f"pe_scale must be >= 0, got {self.pe_scale}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.pool in ("mean", "flatten"), f"pool must be 'mean' or 'flatten', got {self.pool!r}")
        need(self.metric in ("bimhm", "otam"), f"metric must be 'bimhm' or 'otam', got {self.metric!r}")
        need(self.otam_gamma >= 0, f"otam_gamma must be >= 0, got {self.otam_gamma}")


@register_method(
    "dmgal", config=DMGALHeadConfig, input_kind="patches",
    description="DMGAL head on cached patch grids: S-MGA + mixer per video, C-MGA per task, Bi-MHM",
)
class DMGALHead(FewShotMethod):
    """S-MGA, mixer and C-MGA on the store's patch grid (the backbone stays frozen, outside); Bi-MHM."""

    def __init__(self, config: DMGALHeadConfig, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        knobs = {"reduction": c.reduction, "dropout": c.dropout, "gate_init": c.gate_init}
        self.centre = TemporalCentre() if c.temporal_centre else None
        self.smga = SMGA(feature_dim, pe_scale=c.pe_scale, **knobs) if c.smga else None
        self.mixer = TimeChannelMixer(feature_dim, c.num_frames) if c.mixer else None
        self.cmga = CMGA(feature_dim, **knobs) if c.cmga else None
        self.scale = LogitScale(c.temperature, learn=c.learn_scale)

    def encode_videos(self, videos: Tensor) -> Tensor:
        """Per video: grid ``(..., T, g, g, D)`` → maps after S-MGA and the mixer ``(..., T, D, g, g)``."""
        *lead, frames, g, g2, dim = videos.shape
        if frames != self.config.num_frames and self.mixer is not None:
            raise ValueError(f"dmgal: the mixer was built for num_frames={self.config.num_frames} frames, the "
                             f"features have {frames}; set knobs.num_frames={frames}")
        x = videos.reshape(-1, frames, g, g2, dim)
        if self.centre is not None:  # (M, T, g·g·D): the whole grid of a frame is one vector here
            x = self.centre(x.reshape(-1, frames, g * g2 * dim)).view(-1, frames, g, g2, dim)
        maps = x.permute(0, 1, 4, 2, 3)  # (M, T, D, g, g)
        if self.smga is not None:
            maps = self.smga(maps)
        if self.mixer is not None:
            maps = self.mixer(maps)
        return maps.reshape(*lead, frames, dim, g, g2)

    def frames(self, maps: Tensor) -> Tensor:
        """Frame vectors of maps ``(..., T, D, g, g)``: ``(..., T, D)`` (mean) or ``(..., T, D·g·g)`` (flatten)."""
        return maps.mean(dim=(-2, -1)) if self.config.pool == "mean" else maps.flatten(-3)

    def metric_forward(
        self, support: Tensor, support_labels: Tensor, query: Tensor, way: int, *,
        class_text: Tensor | None = None, supervision: Supervision | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """C-MGA over the episode's maps (queries read the supports; no query reads another), Bi-MHM logits."""
        from fsar.methods.base import class_average

        if self.cmga is not None:
            support, query = self.cmga(support, query)
        frames = pairwise_frame_distance(self.frames(query), self.frames(support))
        if self.config.metric == "otam":  # both ways, averaged per aligned frame to stay on Bi-MHM's scale
            distance = otam_distance(frames, self.config.otam_gamma) * (2.0 / (frames.shape[-2] + frames.shape[-1]))
        else:
            distance = mean_hausdorff(frames)
        return self.scale(class_average(distance, support_labels, way)), {}
