"""The trainable backbone stage: an image encoder trained with a few-shot method, end to end on decoded frames.

    pixels (..., T, 3, S, S), normalised (``stage.preprocess``)
      → the encoder, tuned by one knob (``tune``):
           frozen     nothing trains; the whole encoder runs without autograd
           full       every encoder weight trains
           last:K     the last K blocks, the final norm and the projection train; the patch embedding and the
                      blocks before them run without autograd (ResNet-50: its last K of 4 stages)
           lora:R     rank-R LoRA on every block's attention projections (q, k, v and out); the encoder's own
                      weights stay frozen, and only the patch embedding runs without autograd
      → the view a feature store holds, made by ``fsar.backbones.encode.frame_views`` (the code ``fsar embed``
        runs): pooled ``(..., T, D)``, the G×G grid flattened ``(..., T, G·G·D)``, or as a grid ``(..., T, G, G, D)``;
        or (view ``tokens``, ViTs) the tokens at the last block's input, ``StageTokens``, so a per-task module can
        act before ``finish`` runs the last block.

Block adapters (``put_adapters``) are the stage's option for a method that trains its own modules inside the
encoder (DMGAL-Adapter's S-MGA adapters): a module before block i rewrites that block's patch tokens, seen per
video as ``(M, T, g_h, g_w, W)``; the class token passes unchanged.

Why LoRA as the parameter-efficient regime: it acts on the attention weights every open_clip ViT already has
(through ``torch.nn.utils.parametrize``, without editing open_clip's blocks), it starts exactly at the
pretrained encoder (B = 0), it adds about 2·R·(4·width) weights per block, and it can be folded into the weights
after training, so a tuned encoder runs as fast as the original. DMGAL-Adapter's bottleneck adapters stay the
method's own mechanism.

The encoder's parameters form their own optimiser group (``encoder_parameters``), whose learning rate is
``lr × lr_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from fsar.backbones.encode import frame_views
from fsar.backbones.open_clip_backbone import (
    BackboneUnavailableError,
    BlockHook,
    ClipBackbone,
    build_backbone,
)
from fsar.backbones.trunks import RESNET50, ResNetEncoder
from fsar.config import ConfigError
from fsar.data.sections import StageSettings, Tuning
from fsar.data.transforms import FramePreprocess

StageView = Literal["pooled", "grid", "patches", "tokens"]


class StageTokens(NamedTuple):
    """The ``tokens`` view: a ViT's tokens at its last block's input (width W, before the final norm and projection)."""

    cls: Tensor  # (..., T, W) class tokens
    patches: Tensor  # (..., T, g_h, g_w, W)


def stage_view(input_kind: str, requested: str) -> StageView:
    """The view a method of ``input_kind`` reads from the stage, by the rules of a store's ``data.view``: frames
    methods read ``pooled`` (auto) or ``grid`` (flattened), patches methods the grid (auto) or ``pooled`` as 1×1."""
    if input_kind == "patches":
        if requested == "pooled":
            return "pooled"
        return "patches"
    if input_kind != "frames":
        raise ConfigError(f"the stage feeds frames and patches methods, not {input_kind!r} ones")
    if requested == "patches":
        raise ConfigError("data.stage.view=patches is for patch-grid methods; frame methods read pooled or grid")
    return "grid" if requested == "grid" else "pooled"


class LoRA(nn.Module):
    """A weight parametrization ``W → W + (α/R)·B·A``: ``A (R, in)`` random, ``B (out, R)`` zero, so it starts at W."""

    def __init__(self, out_features: int, in_features: int, rank: int, *, alpha: float | None = None) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = (alpha if alpha is not None else rank) / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.up @ self.down).to(weight.dtype)


def add_lora(visual: nn.Module, rank: int) -> None:
    """Put ``LoRA`` on the in- and out-projection weights of every block's ``nn.MultiheadAttention``."""
    for index, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
            raise BackboneUnavailableError(f"lora: block {index} has no packed nn.MultiheadAttention to adapt; "
                                           "tune this encoder with full or last:K")
        out_f, in_f = attn.in_proj_weight.shape
        parametrize.register_parametrization(attn, "in_proj_weight", LoRA(out_f, in_f, rank))
        parametrize.register_parametrization(attn.out_proj, "weight", LoRA(in_f, in_f, rank))


class BackboneStage(nn.Module):
    """An encoder under a tuning regime, giving a method the view a store would hold (module docstring).

    ``forward``: pixels ``(..., T, 3, S, S)`` → ``(..., T, output_dim)`` for the pooled and grid views,
    ``(..., T, G, G, D)`` for the patches view, ``StageTokens`` for the tokens view.
    """

    def __init__(self, settings: StageSettings, *, view: StageView) -> None:
        super().__init__()
        self.settings, self.view, self.tuning = settings, view, settings.tuning
        if settings.backbone == RESNET50:
            self.encoder: ClipBackbone | ResNetEncoder = ResNetEncoder(weights=settings.pretrained,
                                                                       init_seed=settings.init_seed)
        else:
            self.encoder = build_backbone(settings.backbone, pretrained=settings.pretrained,
                                          init_seed=settings.init_seed)
        # The G of the G×G grid handed on; 0 with keep_grid: the encoder's own grid, whatever the input size.
        self.grid = settings.patch_grid if view != "pooled" else 0
        self.keep_grid = view != "pooled" and settings.patch_grid == 0
        if self.keep_grid and view == "grid":
            raise ConfigError("data.stage.view=grid flattens a fixed G×G grid: set data.stage.patch_grid >= 1")
        if view == "tokens" and not (isinstance(self.encoder, ClipBackbone) and self.encoder.blocks > 0):
            raise ConfigError(f"{settings.backbone}: the tokens view needs an open_clip ViT that runs block by block")
        if self.grid and (self.encoder.patch_grid is None or self.grid > self.encoder.patch_grid):
            raise ConfigError(f"data.stage.patch_grid={self.grid} but {settings.backbone} has a "
                              f"{self.encoder.patch_grid}x{self.encoder.patch_grid} patch grid at its input size")
        self.embed_dim = int(self.encoder.embed_dim)
        self.adapters = nn.ModuleDict()
        self._apply_tuning(self.tuning)
        if settings.checkpointing and isinstance(self.encoder, ClipBackbone):
            self.encoder.model.visual.set_grad_checkpointing(True)
        self.train()  # a frozen encoder runs as the store's from the start (BatchNorm on running statistics)

    @property
    def encoder_weights(self) -> str | None:
        """The weights the encoder was built from, as a store records them (None: a seeded random init)."""
        return self.encoder.pretrained

    @property
    def preprocess(self) -> FramePreprocess:
        return self.encoder.preprocess

    @property
    def output_dim(self) -> int:
        """Size of the last axis of the output: D, or G·G·D for the flattened grid."""
        return self.embed_dim * (self.grid**2 if self.view == "grid" else 1)

    @property
    def frozen(self) -> bool:
        """Nothing in the stage trains (``frozen``, and no adapters or norms put in to train)."""
        return not any(p.requires_grad for p in self.parameters())

    @property
    def width(self) -> int:
        """Width W of the encoder's tokens (a ViT's; ResNet-50's maps have 2048 channels)."""
        if isinstance(self.encoder, ResNetEncoder):
            return self.encoder.embed_dim
        return int(self.encoder.model.visual.conv1.out_channels)

    def put_adapters(self, adapters: Mapping[int, nn.Module]) -> None:
        """Insert ``adapters[i]`` before block i: a module on patch tokens ``(M, T, g_h, g_w, W)`` → the same shape."""
        depth = self.encoder.blocks
        if isinstance(self.encoder, ResNetEncoder) or depth == 0:
            raise ConfigError(f"{self.settings.backbone}: block adapters need an open_clip ViT that runs block by block")
        bad = sorted(i for i in adapters if not 0 <= i < depth)
        if bad:
            raise ConfigError(f"adapter blocks {bad} out of range: {self.settings.backbone} has blocks 0..{depth - 1}")
        for index, adapter in sorted(adapters.items()):
            self.adapters[str(index)] = adapter

    def train_norms(self) -> None:
        """Also train the encoder's LayerNorms (a light regime beside adapters)."""
        for module in self.encoder.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)

    @property
    def autograd_from(self) -> int:
        """The first block that runs with autograd: the first with something trainable at or before it (0 when the
        patch embedding trains, the depth when nothing does), so a frozen prefix keeps no activations."""
        encoder = self.encoder
        if isinstance(encoder, ResNetEncoder):
            body = encoder.maps.body
            stem: list[nn.Parameter] = [*body.conv1.parameters(), *body.bn1.parameters()]
            blocks: list[nn.Module] = encoder.stages()
        else:
            if encoder.blocks == 0:  # a tower run only whole
                return 0
            visual = encoder.model.visual
            stem = [visual.class_embedding, visual.positional_embedding, *visual.conv1.parameters(),
                    *visual.ln_pre.parameters()]
            blocks = list(visual.transformer.resblocks)
        if any(p.requires_grad for p in stem):
            return 0
        adapted = {int(key): adapter for key, adapter in self.adapters.items()}
        for index, block in enumerate(blocks):
            parts = [block] + ([adapted[index]] if index in adapted else [])
            if any(p.requires_grad for part in parts for p in part.parameters()):
                return index
        return len(blocks)

    def _apply_tuning(self, tuning: Tuning) -> None:
        """Set ``requires_grad`` for the regime."""
        encoder = self.encoder
        depth = encoder.blocks
        if tuning.kind in ("last", "lora") and depth == 0:
            raise ConfigError(f"tune={self.settings.tune}: {self.settings.backbone}'s vision tower runs only whole; "
                              "tune it full or frozen")
        if tuning.kind == "last" and tuning.number > depth:
            raise ConfigError(f"tune={self.settings.tune}: {self.settings.backbone} has {depth} blocks")
        if tuning.kind == "lora" and isinstance(encoder, ResNetEncoder):
            raise ConfigError(f"tune={self.settings.tune}: LoRA adapts attention, and {RESNET50} has none; "
                              "use full or last:K")
        encoder.requires_grad_(tuning.kind == "full")
        if isinstance(encoder, ClipBackbone):
            # The text tower never trains: it only names classes for the methods that read class text.
            encoder.model.requires_grad_(False)
            visual = encoder.model.visual
            visual.requires_grad_(tuning.kind == "full")
        if tuning.kind == "last":
            first = depth - tuning.number
            if isinstance(encoder, ResNetEncoder):
                for stage in encoder.stages()[first:]:
                    stage.requires_grad_(True)
            else:
                for block in visual.transformer.resblocks[first:]:
                    block.requires_grad_(True)
                visual.ln_post.requires_grad_(True)
                if visual.proj is not None:
                    visual.proj.requires_grad_(True)
        elif tuning.kind == "lora":
            add_lora(visual, tuning.number)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The encoder's trainable parameters (LoRA's included): the optimiser group at ``lr × lr_scale``."""
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> BackboneStage:
        super().train(mode)
        if self.frozen:  # a frozen encoder is the store's encoder: no dropout, BatchNorm on running statistics
            self.encoder.eval()
        return self

    def _before_block(self, frames: int, grid: tuple[int, int]) -> BlockHook:
        """The hook that runs the adapters on tokens ``(M·T, 1 + L, W)`` of videos of ``frames`` frames."""

        def before_block(index: int, tokens: Tensor) -> Tensor:
            if str(index) not in self.adapters:
                return tokens
            patches = tokens[:, 1:].reshape(-1, frames, *grid, tokens.shape[-1])
            patches = self.adapters[str(index)](patches).reshape(tokens.shape[0], -1, tokens.shape[-1])
            return torch.cat([tokens[:, :1], patches], dim=1)

        return before_block

    def forward(self, pixels: Tensor) -> Tensor | StageTokens:
        lead = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        hook = None
        if len(self.adapters):
            hook = self._before_block(lead[-1] if lead else 1, self.encoder.grid_of(flat))  # type: ignore[union-attr]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.view == "tokens":
                encoder: ClipBackbone = self.encoder  # type: ignore[assignment]
                tokens = encoder.tokens_until(flat, encoder.blocks - 1, autograd_from=self.autograd_from,
                                              before_block=hook)
                gh, gw = encoder.grid_of(flat)
                return StageTokens(tokens[:, 0].reshape(*lead, -1), tokens[:, 1:].reshape(*lead, gh, gw, -1))
            pooled, grid = frame_views(self.encoder, flat, patch_grid=self.grid,  # type: ignore[arg-type]
                                       keep_grid=self.keep_grid, autograd_from=self.autograd_from, before_block=hook)
        if self.view == "pooled":
            return pooled.reshape(*lead, -1)
        assert grid is not None
        if self.view == "grid":
            return grid.reshape(*lead, -1)
        return grid.reshape(*lead, *grid.shape[1:])

    def finish(self, tokens: StageTokens) -> Tensor:
        """The tokens view's last step: ``StageTokens`` → every token after the last block, the final norm and the
        projection, ``(..., T, 1 + g_h·g_w, D)`` (token 0: the frame's pooled embedding)."""
        cls, patches = tokens
        *lead, gh, gw, width = patches.shape
        flat = torch.cat([cls.reshape(-1, 1, width), patches.reshape(-1, gh * gw, width)], dim=1)
        out = self.encoder.finish_tokens(flat, self.encoder.blocks - 1)  # type: ignore[union-attr]
        return out.reshape(*lead, *out.shape[1:])

    def drop_text(self) -> None:
        """Free the encoder's text tower, for a method that reads no class text."""
        if isinstance(self.encoder, ClipBackbone) and self.encoder.has_text:
            self.encoder.drop_text()

    @torch.no_grad()
    def class_text(self, class_names: list[str]) -> Tensor | None:
        """Text embeddings ``(C, E)`` of class names from the encoder's own text tower (None without one)."""
        if not isinstance(self.encoder, ClipBackbone) or not self.encoder.has_text:
            return None
        return self.encoder.encode_text(class_names).float()

    @property
    def text_dim(self) -> int | None:
        """Width of ``class_text``'s embeddings, None when the encoder has no text tower."""
        if not isinstance(self.encoder, ClipBackbone) or not self.encoder.has_text:
            return None
        return self.embed_dim
