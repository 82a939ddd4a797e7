"""DMGAL on cached feature maps, registered as ``dmgal``: the released head on a frozen backbone's patch grid.

The cheap way to try DMGAL before fine-tuning: the store's patch grid ``(T, g, g, D)`` stands in for the
backbone's feature maps, and only the head trains, at cached-feature speed::

    per video (encode):         grid (T, g, g, D) → optional temporal centring → maps (T, D, g, g)
                                → S-MGA → time/channel MLP mixer                         [code]
    per task (head):            C-MGA(supports, queries) → frame vectors (T, ·)           [code]
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
from typing import Literal, NamedTuple

from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.methods.base import FewShotMethod, HeadOutput, Supervision
from fsar.methods.dmgal.mixer import TimeChannelMixer
from fsar.methods.dmgal.motion import CMGA, SMGA
from fsar.methods.parts import LogitScale, TemporalCentre, class_average
from fsar.methods.registry import Configuration, register_method
from fsar.ops.frame_distance import mean_hausdorff, pairwise_frame_distance
from fsar.ops.soft_dtw import otam_distance


class DMGALHeadEncoding(NamedTuple):
    """Everything of a video the head reads that does not depend on its episode (leading axes ``(...)``)."""

    frames: Tensor  # (..., T, F) frame vectors of the maps after S-MGA, the mixer and C-MGA's own branch
    forward_tokens: Tensor  # (..., T, g·g, c) C-MGA's forward motion tokens; (..., 0) without C-MGA
    backward_tokens: Tensor  # (..., T, g·g, c) its backward motion tokens
    values: Tensor  # (..., T, g·g, P) C-MGA's depth-wise branch per position, projected


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
    proj_dim: int = 0  # > 0: a learned 1x1 projection of every position's channels to proj_dim before pooling (flatten: proj_dim·g·g per frame) [recon]
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
        need(self.proj_dim >= 0, f"proj_dim must be >= 0 (0 = no projection), got {self.proj_dim}")


DMGAL_CONFIGURATIONS = {
    "paper": Configuration(
        {"temporal_centre": False, "pool": "mean", "metric": "bimhm", "proj_dim": 0},
        "as released for DMGAL-FT: S-MGA, the time-channel mixer and C-MGA on the maps, spatial mean per frame, "
        "Bi-MHM"),
    "fsar": Configuration(
        {"temporal_centre": True, "pool": "flatten", "metric": "otam", "proj_dim": 16},
        "the released head plus fsar's additions",
        {"temporal_centre": "each video's temporal mean grid subtracted first: motion, not appearance",
         "pool": "flatten: the frame vector keeps the whole grid (where things are), not its spatial mean",
         "metric": "otam: an order-aware frame metric; Bi-MHM compares sets of frames, blind to their order "
                   "(43.5 % on order-sensitive data in the seeds issue, released head)",
         "proj_dim": "a learned 1x1 projection of every position before pooling"}),
}


@register_method(
    "dmgal", config=DMGALHeadConfig, input_kind="patches",
    description="DMGAL head on cached patch grids: S-MGA + mixer per video, C-MGA per task, Bi-MHM",
    configurations=DMGAL_CONFIGURATIONS, default_configuration="paper",
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
        # A 1x1 projection of each position's channels: its size does not depend on the grid (the method is built
        # before it sees one), and flattening after it keeps where things are.
        self.proj = nn.Linear(feature_dim, c.proj_dim, bias=False) if c.proj_dim else None  # linear: see cross_tokens
        self.scale = LogitScale(c.temperature, learn=c.learn_scale)

    @property
    def clip_length(self) -> int | None:
        """The time mixer is a ``num_frames`` × ``num_frames`` MLP: every clip has that many frames."""
        return self.config.num_frames

    def encode(self, videos: Tensor) -> DMGALHeadEncoding:
        """Everything of a video that does not depend on its episode, so evaluation computes it once per video:
        grid ``(..., T, g, g, D)`` →

        - ``frames`` ``(..., T, F)``: the frame vectors of its maps after S-MGA, the mixer and C-MGA's own
          branch (``maps + γ₁·self``: all a support's C-MGA update, and a query's before the cross branch);
        - forward and backward motion tokens ``(..., T, g·g, c)`` C-MGA compares (``(..., 0)`` without C-MGA);
        - ``values`` ``(..., T, g·g, P)``: C-MGA's depth-wise branch per position, already projected (attention
          is linear in its values, so the cross branch is computed in the projected, smaller space).
        """
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
        maps = maps.reshape(*lead, frames, dim, g, g2)
        if self.cmga is None:
            empty = maps.new_zeros(*lead, 0)
            return DMGALHeadEncoding(self.frames(self.tokens(maps)), empty, empty, empty)
        forward_tokens, backward_tokens, own = self.cmga.attention.video_parts(maps)
        base = maps + self.cmga.self_gate.to(maps.dtype) * own
        return DMGALHeadEncoding(self.frames(self.tokens(base)), forward_tokens, backward_tokens,
                                 self.project(self.tokens(own)))

    @staticmethod
    def tokens(maps: Tensor) -> Tensor:
        """``(..., T, D, g, g)`` → per-position vectors ``(..., T, g·g, D)``."""
        return maps.flatten(-2).transpose(-1, -2)

    def project(self, tokens: Tensor) -> Tensor:
        """The 1×1 projection of per-position vectors (``proj_dim``), or nothing."""
        return tokens if self.proj is None else self.proj(tokens)

    def frames(self, tokens: Tensor) -> Tensor:
        """Frame vectors of per-position vectors ``(..., T, g·g, D)``: projected, then averaged over the grid
        (``pool=mean``: ``(..., T, P)``) or concatenated position by position (``flatten``: ``(..., T, g·g·P)``)."""
        tokens = self.project(tokens)
        return tokens.mean(dim=-2) if self.config.pool == "mean" else tokens.flatten(-2)

    def frame_vectors(self, support: DMGALHeadEncoding, query: DMGALHeadEncoding) -> tuple[Tensor, Tensor]:
        """C-MGA's cross branch (queries read the supports; no query reads another): frame vectors
        ``(B, N, T, F)`` of the supports and of the queries."""
        s_frames, q_frames = support.frames, query.frames
        if self.cmga is not None:
            cross = self.cmga.attention.cross_tokens((query.forward_tokens, query.backward_tokens),
                                                     (support.forward_tokens, support.backward_tokens),
                                                     support.values)  # (B, N_q, T, hw, P)
            cross = cross.mean(dim=-2) if self.config.pool == "mean" else cross.flatten(-2)
            q_frames = q_frames + self.cmga.cross_gate.to(q_frames.dtype) * cross
        return s_frames, q_frames

    def head(self, support: DMGALHeadEncoding, support_labels: Tensor, query: DMGALHeadEncoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        """C-MGA's cross branch, then the metric."""
        s_frames, q_frames = self.frame_vectors(support, query)
        frames = pairwise_frame_distance(q_frames, s_frames)
        if self.config.metric == "otam":  # both ways, averaged per aligned frame to stay on Bi-MHM's scale
            distance = otam_distance(frames, self.config.otam_gamma) * (2.0 / (frames.shape[-2] + frames.shape[-1]))
        else:
            distance = mean_hausdorff(frames)
        return HeadOutput(self.scale(class_average(distance, support_labels, way)))
