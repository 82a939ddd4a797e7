"""DMGAL-Adapter's adapters, the block adapters of a frozen open_clip ViT stage (``BackboneStage.put_adapters``).

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

import torch
from torch import Tensor, nn

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
