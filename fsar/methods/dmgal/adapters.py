"""DMGAL-Adapter's adapters on a frozen open_clip ViT.

*[recon]* (the paper's abstract names the variant; the released code is DMGAL-FT only): bottleneck
adapters that carry the motion-guided attention into a frozen CLIP vision tower. Each adapter acts on
the patch tokens at a block's input, seen as a per-frame grid (the class token passes unchanged)::

    S-MGA adapter (per video, before each chosen early block):
        patches + γ · up(SelfMotionAttention(down(patches)))
    C-MGA adapter (per task, before the last block):
        support + γ₁ · up(self(down(support)))
        query   + γ₁ · up(self(down(query))) + γ₂ · up(cross(down(query) ← down(supports)))

``down``/``up`` are linear maps width ↔ bottleneck and every γ starts at 0, so an untrained adapter leaves
the tower's output exactly unchanged. Patch grids are channel-last: ``(..., T, g_h, g_w, width)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from fsar.backbones.trunks import ClipViTTrunk
from fsar.methods.dmgal.motion import CrossMotionAttention, SelfMotionAttention


def _channels_first(patches: Tensor) -> Tensor:
    """``(..., g_h, g_w, C)`` → ``(..., C, g_h, g_w)``."""
    return patches.movedim(-1, -3)


def _channels_last(maps: Tensor) -> Tensor:
    """``(..., C, g_h, g_w)`` → ``(..., g_h, g_w, C)``."""
    return maps.movedim(-3, -1)


class SMGAAdapter(nn.Module):
    """Per-video motion adapter: patches ``(..., T, g_h, g_w, width)`` → same shape."""

    def __init__(self, width: int, bottleneck: int, *, reduction: int = 8, pe_scale: float = 0.1,
                 dropout: float = 0.1, gate_init: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.attention = SelfMotionAttention(bottleneck, reduction=reduction, pe_scale=pe_scale, dropout=dropout)
        self.up = nn.Linear(bottleneck, width)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, patches: Tensor) -> Tensor:
        update = _channels_last(self.attention(_channels_first(self.down(patches))))
        return patches + self.gate.to(patches.dtype) * self.up(update)


class CMGAAdapter(nn.Module):
    """Per-task cross-video motion adapter.

    ``forward(support (B, N_s, T, g_h, g_w, width), query (B, N_q, T, g_h, g_w, width))`` → both updated.
    """

    def __init__(self, width: int, bottleneck: int, *, reduction: int = 8, dropout: float = 0.1,
                 gate_init: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.attention = CrossMotionAttention(bottleneck, reduction=reduction, dropout=dropout)
        self.up = nn.Linear(bottleneck, width)
        self.self_gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.cross_gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        support_self, query_self, query_cross = self.attention(
            _channels_first(self.down(support)), _channels_first(self.down(query))
        )
        g_self, g_cross = self.self_gate.to(query.dtype), self.cross_gate.to(query.dtype)
        support = support + g_self * self.up(_channels_last(support_self))
        query = query + g_self * self.up(_channels_last(query_self)) + g_cross * self.up(_channels_last(query_cross))
        return support, query


def default_adapter_blocks(depth: int) -> list[int]:
    """The first half of the blocks (at least one)."""
    return list(range(max(1, depth // 2)))


class AdaptedViT(nn.Module):
    """A frozen ``ClipViTTrunk`` with an ``SMGAAdapter`` before each block in ``blocks``.

    Runs in two parts so a per-task module can act before the last block:
    ``encode``: pixels ``(..., T, 3, H, W)`` → the last block's input, as class tokens ``(..., T, width)``
    and patches ``(..., T, g_h, g_w, width)``, each video on its own;
    ``finish``: those → projected final tokens ``(..., T, 1 + g_h·g_w, out_dim)``.

    Only the adapters train, and the trunk's LayerNorms when ``train_layernorm``.
    """

    def __init__(self, trunk: ClipViTTrunk, *, blocks: Iterable[int], bottleneck: int, reduction: int = 8,
                 pe_scale: float = 0.1, dropout: float = 0.1, gate_init: float = 0.0,
                 train_layernorm: bool = False) -> None:
        super().__init__()
        blocks = sorted(set(blocks))
        bad = [b for b in blocks if not 0 <= b < trunk.depth]
        if bad:
            raise ValueError(f"adapter blocks {bad} out of range: the backbone has blocks 0..{trunk.depth - 1}")
        self.trunk = trunk
        for param in trunk.parameters():
            param.requires_grad_(False)
        if train_layernorm:
            for module in trunk.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        self.adapters = nn.ModuleDict({
            str(b): SMGAAdapter(trunk.width, bottleneck, reduction=reduction, pe_scale=pe_scale,
                                dropout=dropout, gate_init=gate_init)
            for b in blocks
        })

    def _adapt(self, index: int, tokens: Tensor, frames: int, grid: tuple[int, int]) -> Tensor:
        """The adapter before block ``index`` (if any) on tokens ``(M·T, 1 + L, width)``."""
        if str(index) not in self.adapters:
            return tokens
        patches = tokens[:, 1:].reshape(-1, frames, *grid, tokens.shape[-1])
        patches = self.adapters[str(index)](patches).reshape(tokens.shape[0], -1, tokens.shape[-1])
        return torch.cat([tokens[:, :1], patches], dim=1)

    def encode(self, videos: Tensor) -> tuple[Tensor, Tensor]:
        *lead, frames, _, height, width = videos.shape
        grid = self.trunk.grid(height, width)
        x = self.trunk.embed(videos.reshape(-1, *videos.shape[-3:]))
        last = self.trunk.depth - 1
        for i in range(last):
            x = self.trunk.block(i, self._adapt(i, x, frames, grid))
        x = self._adapt(last, x, frames, grid)
        cls_tokens = x[:, 0].reshape(*lead, frames, -1)
        patches = x[:, 1:].reshape(*lead, frames, *grid, x.shape[-1])
        return cls_tokens, patches

    def finish(self, cls_tokens: Tensor, patches: Tensor) -> Tensor:
        *lead, frames, gh, gw, width = patches.shape
        tokens = torch.cat([cls_tokens.reshape(-1, 1, width), patches.reshape(-1, gh * gw, width)], dim=1)
        out = self.trunk.head(self.trunk.block(self.trunk.depth - 1, tokens))
        return out.reshape(*lead, frames, *out.shape[1:])
