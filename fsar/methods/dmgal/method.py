"""DMGAL (dual motion-guided attention), registered as ``dmgal_ft`` and ``dmgal_adapter``; input: pixels.

Both take normalised pixels ``(B, N, T, 3, H, W)`` (the backbone's ``preprocess``, exposed as
``method.preprocess``) and run the backbone inside the model.

``dmgal_ft`` (the released code; whole backbone trainable) is the DMGAL head ``dmgal`` (configuration
``paper``, ``fsar.methods.dmgal.head``) on a ``full`` backbone stage (``fsar.backbones.stage``) that hands it
the encoder's own grid::

    per video (encode):         stage: backbone maps (T, g, g, C) → S-MGA → time/channel MLP mixer
    per task (head):            C-MGA(supports, queries) → spatial mean → frames (T, C)
                                → Bi-MHM distance, class mean, logits = −distance / temperature

``dmgal_adapter`` ([recon]; a ``frozen`` open_clip ViT stage whose block adapters are S-MGA, see ``adapters``)::

    per video:  stage (tokens view): ViT blocks with S-MGA adapters before the chosen early blocks, up to the
                last block's input
    per task:   C-MGA adapter on the patch tokens → the stage's last block, final norm, projection
                (``stage.finish``) → class token (or patch mean) per frame → Bi-MHM as above

Neither side of the per-task step lets a query influence another query or any support, so logits are
transduction-free. (In training mode BatchNorm uses batch statistics, as in the released code, which
couples the videos of one forward call; evaluation uses running statistics.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from fsar.backbones import TINY_MODEL
from fsar.backbones.stage import BackboneStage, StageTokens
from fsar.backbones.trunks import RESNET50
from fsar.config import ConfigError
from fsar.data.sections import StageSettings
from fsar.data.transforms import FramePreprocess
from fsar.methods.base import FewShotMethod, HeadOutput, Supervision
from fsar.methods.dmgal.adapters import CMGAAdapter, SMGAAdapter, default_adapter_blocks
from fsar.methods.dmgal.head import DMGAL_CONFIGURATIONS, DMGALHead, DMGALHeadConfig, DMGALHeadEncoding
from fsar.methods.end_to_end import EndToEnd
from fsar.methods.parts import LogitScale, class_average
from fsar.methods.registry import register_method
from fsar.ops.frame_distance import mean_hausdorff, pairwise_frame_distance


@dataclass
class DMGALShared:
    """Knobs both DMGAL variants have ([code] = as released for DMGAL-FT, [recon] = ours)."""

    _name: ClassVar[str] = "dmgal"  # the method name error messages start with

    backbone: str = TINY_MODEL  # open_clip ViT name, or "resnet50" (torchvision; FT only, as released); fsar-tiny builds offline
    pretrained: str | None = None  # None/"none": seeded random init; a local checkpoint file; an open_clip tag (ViTs)
    init_seed: int = 0  # seed of a random-init backbone, so every worker starts from the same weights
    reduction: int = 8  # motion tokens have C / reduction channels [code]
    dropout: float = 0.1  # dropout on motion tokens and attention weights [code]
    pe_scale: float = 0.1  # amplitude of S-MGA's sinusoidal position code [code]
    gate_init: float = 0.0  # initial value of every residual gate γ [code: 0]
    temperature: float = 0.125  # logits = -Bi-MHM / temperature; 1/8 = the released -sum over 8 frames [code]
    learn_scale: bool = False  # train the logit scale 1/temperature (starts at 1/temperature) [recon]

    def __post_init__(self) -> None:
        name = self._name
        if not self.backbone.strip():
            raise ConfigError(f"{name}: backbone must name a model, e.g. {TINY_MODEL!r} or {RESNET50!r}")
        if self.reduction < 1:
            raise ConfigError(f"{name}: reduction must be >= 1, got {self.reduction}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}: dropout must lie in [0, 1), got {self.dropout}")
        if not self.pe_scale >= 0.0:
            raise ConfigError(f"{name}: pe_scale must be >= 0, got {self.pe_scale}")
        if not math.isfinite(self.gate_init):
            raise ConfigError(f"{name}: gate_init must be finite, got {self.gate_init}")
        if not self.temperature > 0:
            raise ConfigError(f"{name}: temperature must be > 0, got {self.temperature}")


@dataclass
class DMGALFTConfig(DMGALShared):
    """Knobs of DMGAL-FT (released defaults: ResNet-50, 8 frames, SGD lr 1.5e-4, 16 episodes per step)."""

    _name: ClassVar[str] = "dmgal_ft"

    num_frames: int = 8  # frames per video; the mixer's time MLP is num_frames x num_frames [code: 8]
    smga: bool = True  # S-MGA on each video's maps [code]
    mixer: bool = True  # time-then-channel MLP mixer after S-MGA [code]
    cmga: bool = True  # C-MGA across the task's videos [code]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_frames < 1:
            raise ConfigError(f"dmgal_ft: num_frames must be >= 1, got {self.num_frames}")


@dataclass
class DMGALAdapterConfig(DMGALShared):
    """Knobs of DMGAL-Adapter (a frozen open_clip ViT; every knob below is [recon])."""

    _name: ClassVar[str] = "dmgal_adapter"

    adapter_blocks: list[int] | None = None  # blocks with an S-MGA adapter at their input; None = the first half
    bottleneck: int = 0  # adapter bottleneck width; 0 = the ViT's width / 4
    cmga_adapter: bool = True  # C-MGA adapter at the last block's input
    train_layernorm: bool = False  # also train the ViT's LayerNorms
    pool: Literal["cls", "mean"] = "cls"  # frame embedding: projected class token, or mean of the patch tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone == RESNET50:
            raise ConfigError(f"dmgal_adapter: adapters need an open_clip ViT backbone, not {RESNET50!r}")
        if self.bottleneck < 0:
            raise ConfigError(f"dmgal_adapter: bottleneck must be >= 0 (0 = width / 4), got {self.bottleneck}")
        blocks = self.adapter_blocks
        if blocks is not None and (any(b < 0 for b in blocks) or len(set(blocks)) != len(blocks)):
            raise ConfigError(f"dmgal_adapter: adapter_blocks must be distinct block indices >= 0, got {blocks}")


def bimhm_logits(support: Tensor, query: Tensor, support_labels: Tensor, way: int, scale: LogitScale) -> Tensor:
    """Bi-MHM logits of frame embeddings: support ``(B, N_s, T, D)``, query ``(B, N_q, T, D)`` → ``(B, N_q, way)``."""
    distance = mean_hausdorff(pairwise_frame_distance(query, support))  # (B, N_q, N_s)
    return scale(class_average(distance, support_labels, way))


@register_method(
    "dmgal_ft", config=DMGALFTConfig, input_kind="pixels",
    description="DMGAL-FT: the DMGAL head (as released) on a fully tuned backbone stage",
)
class DMGALFT(EndToEnd):
    """DMGAL-FT is the released DMGAL head (``dmgal``, configuration ``paper``) on a backbone stage tuned ``full``
    that hands it the encoder's own grid of projected patch tokens (ViT) or layer4 maps (ResNet-50), unpooled.

    The encoder trains at the method's learning rate (``lr_scale`` 1), as released; ``preprocess`` is the stage's.
    """

    def __init__(self, config: DMGALFTConfig, *, feature_dim: int = 0, text_dim: int | None = None) -> None:
        # feature_dim is unused: the backbone fixes the feature size
        settings = StageSettings(backbone=config.backbone, pretrained=config.pretrained, init_seed=config.init_seed,
                                 tune="full", view="patches", patch_grid=0, lr_scale=1.0)
        stage = BackboneStage(settings, view="patches")
        stage.drop_text()
        head = DMGALHead(DMGALHeadConfig(
            num_frames=config.num_frames, smga=config.smga, mixer=config.mixer, cmga=config.cmga,
            reduction=config.reduction, dropout=config.dropout, pe_scale=config.pe_scale, gate_init=config.gate_init,
            temperature=config.temperature, learn_scale=config.learn_scale,
            **DMGAL_CONFIGURATIONS["paper"].knobs), feature_dim=stage.embed_dim)
        super().__init__(stage, head)
        self.config = config
        self.method_name = "dmgal_ft"
        self.configuration = ""

    def frame_embeddings(self, support: DMGALHeadEncoding, query: DMGALHeadEncoding) -> tuple[Tensor, Tensor]:
        """C-MGA's cross branch, then the spatial mean: encodings of each side → frames ``(B, N, T, C)``."""
        return self.method.frame_vectors(support, query)  # type: ignore[attr-defined]


@register_method(
    "dmgal_adapter", config=DMGALAdapterConfig, input_kind="pixels",
    description="DMGAL-Adapter: frozen CLIP ViT stage with S-MGA adapters early, C-MGA adapter last, Bi-MHM",
)
class DMGALAdapter(FewShotMethod):
    """DMGAL on a frozen open_clip ViT stage whose block adapters are the S-MGA adapters (``BackboneStage.put_adapters``,
    tokens view); the C-MGA adapter acts per task before the stage's last block. Only the adapters train (and the
    LayerNorms with ``train_layernorm``), at the method's learning rate (``lr_scale`` 1)."""

    def __init__(self, config: DMGALAdapterConfig, *, feature_dim: int = 0, text_dim: int | None = None) -> None:
        super().__init__()  # feature_dim is unused: the backbone fixes the feature size
        self.config = config
        settings = StageSettings(backbone=config.backbone, pretrained=config.pretrained, init_seed=config.init_seed,
                                 tune="frozen", view="patches", patch_grid=0, lr_scale=1.0)
        stage = BackboneStage(settings, view="tokens")
        stage.drop_text()
        depth, width = stage.encoder.blocks, stage.width
        blocks = default_adapter_blocks(depth) if config.adapter_blocks is None else config.adapter_blocks
        if any(b >= depth for b in blocks):
            raise ConfigError(
                f"dmgal_adapter: adapter_blocks {blocks} out of range: {config.backbone} has blocks 0..{depth - 1}"
            )
        bottleneck = config.bottleneck or max(1, width // 4)
        knobs = {"reduction": config.reduction, "dropout": config.dropout, "gate_init": config.gate_init}
        stage.put_adapters({b: SMGAAdapter(width, bottleneck, pe_scale=config.pe_scale, **knobs)
                            for b in sorted(set(blocks))})
        if config.train_layernorm:
            stage.train_norms()
        self.stage = stage
        self.cross_adapter = CMGAAdapter(width, bottleneck, **knobs) if config.cmga_adapter else None
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)

    @property
    def preprocess(self) -> FramePreprocess:
        """The pixel pipeline inputs must have been through (open_clip's size, mean and std)."""
        return self.stage.preprocess

    def encode(self, videos: Tensor) -> StageTokens:
        """Per video, up to the last block: pixels ``(..., T, 3, H, W)`` → class tokens ``(..., T, W)``, patches ``(..., T, g_h, g_w, W)``."""
        return self.stage(videos)  # type: ignore[return-value]

    def frame_embeddings(self, support: StageTokens, query: StageTokens) -> tuple[Tensor, Tensor]:
        """C-MGA adapter, last block, pooling: encoded videos of each side → frames ``(B, N, T, D)``."""
        if self.cross_adapter is not None:
            support_patches, query_patches = self.cross_adapter(support.patches, query.patches)
            support, query = StageTokens(support.cls, support_patches), StageTokens(query.cls, query_patches)
        return self._pool(self.stage.finish(support)), self._pool(self.stage.finish(query))

    def _pool(self, tokens: Tensor) -> Tensor:
        """Final tokens ``(..., T, 1 + L, D)`` → frame embeddings ``(..., T, D)``."""
        return tokens[..., 0, :] if self.config.pool == "cls" else tokens[..., 1:, :].mean(dim=-2)

    def head(self, support: StageTokens, support_labels: Tensor, query: StageTokens, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        support_frames, query_frames = self.frame_embeddings(support, query)
        return HeadOutput(bimhm_logits(support_frames, query_frames, support_labels, way, self.scale))
