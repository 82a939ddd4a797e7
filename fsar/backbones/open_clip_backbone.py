"""open_clip wrapper: per-frame embeddings, patch grids and class-name text embeddings.

Weights come from an open_clip pretrained tag (``ViT-B-16`` + ``openai``; downloaded by open_clip and
cached), a local checkpoint file, or nowhere (random init). ``fsar-tiny`` is a small config shipped
inside this package so tests and the offline demo run without any download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fsar.backbones.weights import parse_weights, pretrained_tags, resolve_weights
from fsar.data.transforms import FramePreprocess

TINY_MODEL = "fsar-tiny"
_CONFIG_DIR = Path(__file__).parent / "model_configs"

# before_block(i, tokens (N, 1 + L, W)) → tokens of the same shape, at the input of transformer block i.
BlockHook = Callable[[int, torch.Tensor], torch.Tensor]
_registered = False


class BackboneUnavailableError(RuntimeError):
    """A backbone or its weights cannot be had here; the message says what to pass instead."""


def _register_shipped_configs() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def list_backbones() -> list[str]:
    """Every model name ``build_backbone`` accepts (open_clip's configs plus the shipped ones)."""
    import open_clip

    _register_shipped_configs()
    return list(open_clip.list_models())


def vit_positions(visual: nn.Module, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """An open_clip ``VisionTransformer``'s positional embedding ``(1 + g_h·g_w, width)`` for a patch ``grid``:
    its own at its own grid, else the patch positions resized (bicubic; the class token's is kept)."""
    pos = visual.positional_embedding
    native = tuple(int(g) for g in visual.grid_size)
    if tuple(grid) == native:
        return pos.to(dtype)
    patch_pos = pos[1:].float().reshape(1, *native, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1].float(), patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)]).to(dtype)


def vit_tokens(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """An open_clip ``VisionTransformer``'s input tokens: pixels ``(N, 3, H, W)`` → ``(N, 1 + g_h·g_w, width)`` (class
    token first), as its own ``_embeds`` makes them, but for any input size (``vit_positions``) and without patch
    dropout, which would break the grid."""
    x = visual.conv1(pixels)  # (N, width, g_h, g_w)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls_token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls_token, x], dim=1) + vit_positions(visual, grid, x.dtype)
    return visual.ln_pre(x)


class _VisionTower(nn.Module):
    """An open_clip model without its text tower (what ``ClipBackbone.drop_text`` keeps)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual


class ClipBackbone(nn.Module):
    """An open_clip model seen as a frame encoder.

    ``encode(pixels (N, 3, S, S))`` → pooled ``(N, D)`` and, with ``patches=True``, the patch grid
    ``(N, g, g, D)``: the final tokens after the vision tower's last norm, projected by the same matrix
    as the pooled embedding, so patch and frame features (and text) share one space.
    """

    def __init__(self, model: nn.Module, *, name: str, pretrained: str | None, init_seed: int | None = None) -> None:
        super().__init__()
        import open_clip

        self.model = model
        self.name = name
        self.pretrained = pretrained
        self.init_seed = init_seed if pretrained is None else None
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.preprocess = FramePreprocess(
            size=self.image_size,
            mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )
        visual = model.visual
        patch = getattr(visual, "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.patch_grid = self.image_size // int(patch) if patch else None
        self.embed_dim = int(visual.output_dim)
        self._tokenizer: Any = None

    @property
    def has_text(self) -> bool:
        """Whether class names can be embedded (the model has a text tower)."""
        return hasattr(self.model, "encode_text")

    def drop_text(self) -> None:
        """Free the text tower (a method that reads no class text never needs it: 63M parameters for ViT-B/16)."""
        self.model = _VisionTower(self.model.visual)

    def describe(self) -> dict[str, Any]:
        """What a feature store records to refuse mixing features of different encoders."""
        return {
            "backbone": self.name,
            "pretrained": self.pretrained,
            "init_seed": self.init_seed,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "patch_grid": self.patch_grid,
        }

    @property
    def blocks(self) -> int:
        """Transformer blocks of the vision tower that can run one at a time (0: a tower run only whole)."""
        return len(self.model.visual.transformer.resblocks) if self._runs_in_pieces() else 0

    def _runs_in_pieces(self) -> bool:
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        return isinstance(visual, VisionTransformer) and visual.attn_pool is None

    def encode(self, pixels: torch.Tensor, *, patches: bool = False, autograd_from: int = 0,
               before_block: BlockHook | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled ``(N, D)`` embeddings and, if asked, the projected patch grid ``(N, g, g, D)``.

        ``autograd_from``: the first transformer block that runs with autograd; the patch embedding and the
        blocks before it run without (a frozen prefix keeps no activations for a backward pass). Only towers
        that run in pieces (plain ViTs, ``blocks`` > 0) take a value above 0, or a ``before_block`` hook
        (``tokens_until``'s).
        """
        visual = self.model.visual
        if patches and (self.patch_grid is None or not hasattr(visual, "output_tokens")):
            raise BackboneUnavailableError(f"{self.name}: this vision tower exposes no patch tokens")
        if self._runs_in_pieces():
            pooled, tokens = self._run_in_pieces(pixels, autograd_from, before_block)
        elif autograd_from > 0 or before_block is not None:
            raise BackboneUnavailableError(f"{self.name}: its vision tower runs only whole, so it cannot freeze "
                                           "its first blocks or take adapters; tune it fully, or freeze it")
        elif not patches:
            return visual(pixels), None
        else:
            previous = visual.output_tokens
            visual.output_tokens = True
            try:
                pooled, tokens = visual(pixels)
            finally:
                visual.output_tokens = previous
        if not patches:
            return pooled, None
        proj = getattr(visual, "proj", None)
        if proj is not None:
            tokens = tokens @ proj
        n, length, dim = tokens.shape
        gh, gw = self.grid_of(pixels)
        if length != gh * gw:
            raise BackboneUnavailableError(f"{self.name}: {length} patch tokens do not form a {gh}x{gw} grid")
        return pooled, tokens.reshape(n, gh, gw, dim)

    def grid_of(self, pixels: torch.Tensor) -> tuple[int, int]:
        """The patch grid ``(g_h, g_w)`` of pixels ``(..., H, W)``."""
        patch = self.image_size // self.patch_grid  # type: ignore[operator]
        return pixels.shape[-2] // patch, pixels.shape[-1] // patch

    def tokens_until(self, pixels: torch.Tensor, stop: int, *, autograd_from: int = 0,
                     before_block: BlockHook | None = None) -> torch.Tensor:
        """Pixels ``(N, 3, H, W)`` → the tokens ``(N, 1 + g_h·g_w, W)`` (class token first, batch-first) at the input
        of block ``stop`` (``blocks``: after the last), each piece with autograd only from block ``autograd_from``
        on. ``before_block(i, tokens)``, if given, rewrites the tokens at the input of every block ``i <= stop``."""
        from torch.utils.checkpoint import checkpoint

        visual = self.model.visual
        transformer = visual.transformer
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and autograd_from <= 0):
            x = vit_tokens(visual, pixels)
        for i, block in enumerate(transformer.resblocks[:stop]):
            with torch.set_grad_enabled(grad and i >= autograd_from):
                if before_block is not None:
                    x = before_block(i, x)
                x = x if transformer.batch_first else x.transpose(0, 1)  # older open_clip: sequence-first blocks
                if transformer.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
                x = x if transformer.batch_first else x.transpose(0, 1)
        if before_block is not None and stop < len(transformer.resblocks):
            with torch.set_grad_enabled(grad and stop >= autograd_from):
                x = before_block(stop, x)
        return x

    def finish_tokens(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Tokens ``(N, 1 + L, W)`` at the input of block ``start`` → every token after the remaining blocks, the final
        norm and the projection: ``(N, 1 + L, D)`` (token 0 is the pooled embedding of a class-token ViT)."""
        visual = self.model.visual
        transformer = visual.transformer
        x = tokens if transformer.batch_first else tokens.transpose(0, 1)
        for block in transformer.resblocks[start:]:
            x = block(x)
        x = visual.ln_post(x if transformer.batch_first else x.transpose(0, 1))
        return x @ visual.proj if visual.proj is not None else x

    def _run_in_pieces(self, pixels: torch.Tensor, autograd_from: int,
                       before_block: BlockHook | None) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's ``VisionTransformer.forward`` (embedding, blocks, pooling, projection) one block at a time
        (``tokens_until``): pooled ``(N, D)``, tokens ``(N, L, W)``."""
        visual = self.model.visual
        x = self.tokens_until(pixels, self.blocks, autograd_from=autograd_from, before_block=before_block)
        pooled, tokens = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled, tokens

    def encode_text(self, class_names: list[str], *, template: str = "a video of {}") -> torch.Tensor:
        """Text embeddings ``(C, D)`` of ``template.format(name)`` for each class name."""
        import open_clip

        if not self.has_text:
            raise BackboneUnavailableError(f"{self.name} has no text tower; choose a CLIP model")
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.name)
        device = next(self.model.parameters()).device
        tokens = self._tokenizer([template.format(n.replace("_", " ")) for n in class_names]).to(device)
        return self.model.encode_text(tokens)


def build_backbone(
    name: str, *, pretrained: str | None = None, device: str | torch.device = "cpu", init_seed: int = 0
) -> ClipBackbone:
    """Build ``name`` with weights from ``pretrained`` (read by ``fsar.backbones.weights``: an open_clip tag, a local
    file, ``default``, or None / ``none`` = random).

    A random init is seeded by ``init_seed`` (without touching the global RNG), so every worker of a
    job, and every rerun that resumes a feature store, encodes with the very same weights.

    Raises BackboneUnavailableError, before any heavy work, for an unknown model, a missing checkpoint
    file, or a tag whose weights cannot be downloaded (offline machines).
    """
    import open_clip

    _register_shipped_configs()
    known = open_clip.list_models()
    if name not in known:
        close = [m for m in known if name.lower().replace("/", "-") in m.lower()][:8]
        raise BackboneUnavailableError(
            f"unknown backbone {name!r}; try one of {close or known[:8]} (or {TINY_MODEL!r} offline); "
            "`python -c 'import open_clip; print(open_clip.list_models())'` lists all"
        )
    weights = parse_weights(pretrained)
    if weights.kind == "file" and not Path(weights.value).is_file():
        raise BackboneUnavailableError(f"checkpoint {weights.value} does not exist; pass an existing file")
    if weights.kind == "tag" and weights.value not in pretrained_tags(name):
        raise BackboneUnavailableError(
            f"{name} has no pretrained tag {weights.value!r}; known tags: {pretrained_tags(name) or 'none'}"
        )
    pretrained = resolve_weights(name, pretrained)
    # open_clip logs an ERROR before raising on failed downloads; we raise our own, clearer message.
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = open_clip.create_model(name, pretrained=pretrained, device=device)
    except (RuntimeError, OSError) as exc:
        raise BackboneUnavailableError(
            f"weights {name}/{pretrained} could not be loaded ({str(exc)[:160]}). Offline? Pass a local "
            f"checkpoint (--pretrained /path/to/weights.pt) or use the shipped model (--backbone {TINY_MODEL})"
        ) from exc
    finally:
        logger.setLevel(level)
    model.eval()
    return ClipBackbone(model, name=name, pretrained=pretrained, init_seed=init_seed)
