"""DMGAL's motion-guided attention: the shared motion pipeline, S-MGA (per video) and C-MGA (per task).

Feature maps are channel-first per frame, ``(..., T, C, h, w)``, on any ``h × w`` grid (ResNet layer4,
a ViT patch grid, an adapter's bottleneck grid).

Motion pipeline (``MotionTokens``), as in the released code: a 1×1 reduction ``C → c = C / reduction``
with BatchNorm; a depth-wise 3×3 smoothing of the reduced map; the forward difference (frame t+1's
smoothed map minus frame t's reduced map, zero at the last frame) and the backward difference (frame
t−1's smoothed map minus frame t's, zero at the first frame); each difference is fused over two scales
(identity, 3×3 conv + BN, and 2× average pool → 3×3 conv + BN → nearest upsampling, averaged) and
mapped by a 1×1 conv. Each grid position of each frame is then a ``c``-dim motion token.

S-MGA: within each frame, the positions attend to each other with queries = keys = motion tokens (plus
a fixed sinusoidal code of the position); the values are a depth-wise 3×3 conv of the input;
``out = x + γ (½ Aᶠ v + ½ Aᵇ v)`` with γ starting at 0.

C-MGA: the same pipeline with its own weights and a LayerNorm on the tokens instead of the position code;
each query frame t attends to the motion tokens of *all* support videos at frame t; the query is updated
by its own depth-wise branch and the cross-attended support values, the support by its own depth-wise
branch only, both through zero-initialised gates. Queries never attend to each other and supports never
see queries, so the logits of one query do not depend on the other queries (no transduction).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(length: int, dim: int, *, scale: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sine/cosine code of positions ``0 … length-1``: ``(length, dim)``, multiplied by ``scale``.

    Even channels hold sines and odd channels cosines of geometrically spaced frequencies (as in the
    Transformer paper); S-MGA numbers a frame's grid positions row by row.
    """
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = position * freq  # (length, ceil(dim / 2))
    code = torch.zeros(length, dim, device=device, dtype=torch.float32)
    code[:, 0::2] = torch.sin(angles)
    code[:, 1::2] = torch.cos(angles[:, : dim // 2])  # an odd dim has one sine more than cosines
    return (code * scale).to(dtype)


def init_motion_weights(module: nn.Module) -> None:
    """The released initialisation: convs ~ N(0, 2 / (k·k·out_channels)), BatchNorm scale 1 and shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def reduced_channels(channels: int, reduction: int) -> int:
    """Width ``c`` of the motion tokens: ``channels // reduction``, at least 1."""
    if channels < 1 or reduction < 1:
        raise ValueError(f"channels and reduction must be >= 1, got {channels} and {reduction}")
    return max(1, channels // reduction)


def _conv_bn(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))


class MotionTokens(nn.Module):
    """Feature maps → forward and backward motion tokens: ``(..., T, C, h, w)`` → two ``(..., T, h·w, c)``."""

    def __init__(self, channels: int, *, reduction: int = 8) -> None:
        super().__init__()
        c = reduced_channels(channels, reduction)
        self.token_dim = c
        self.reduce = nn.Sequential(nn.Conv2d(channels, c, 1, bias=False), nn.BatchNorm2d(c))
        self.smooth = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)  # depth-wise
        self.coarse = _conv_bn(c)  # on the 2×-pooled difference
        self.fine = _conv_bn(c)  # on the difference at full resolution
        self.fuse = nn.Conv2d(c, c, 1, bias=False)
        init_motion_weights(self)

    def forward(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        *lead, frames, channels, h, w = maps.shape
        base = self.reduce(maps.reshape(-1, channels, h, w))
        smooth = self.smooth(base)
        base = base.reshape(-1, frames, *base.shape[1:])  # (M, T, c, h, w)
        smooth = smooth.reshape(base.shape)
        edge = base.new_zeros(base[:, :1].shape)  # no neighbour beyond the clip's ends
        forward_diff = torch.cat([smooth[:, 1:] - base[:, :-1], edge], dim=1)
        backward_diff = torch.cat([edge, smooth[:, :-1] - base[:, 1:]], dim=1)
        # The two directions go through the shared layers one after the other, as released (separate
        # BatchNorm batch statistics in training).
        return (self._tokens(forward_diff).reshape(*lead, frames, h * w, -1),
                self._tokens(backward_diff).reshape(*lead, frames, h * w, -1))

    def _tokens(self, diff: Tensor) -> Tensor:
        """Multi-scale fusion of one difference: ``(M, T, c, h, w)`` → ``(M·T, h·w, c)``."""
        diff = diff.flatten(0, 1)
        h, w = diff.shape[-2:]
        # A 1-wide grid cannot be pooled; its coarse branch then sees the grid as it is.
        pooled = F.avg_pool2d(diff, 2) if min(h, w) >= 2 else diff
        coarse = F.interpolate(self.coarse(pooled), size=(h, w))  # nearest, as released
        fused = self.fuse((diff + coarse + self.fine(diff)) / 3.0)
        return fused.flatten(2).transpose(1, 2)


def _attend(tokens_q: Tensor, tokens_k: Tensor, dropout: nn.Dropout) -> Tensor:
    """Softmax attention weights over the keys: ``(..., n, c)``, ``(..., m, c)`` → ``(..., n, m)``."""
    scores = (tokens_q * (1.0 / math.sqrt(tokens_q.shape[-1]))) @ tokens_k.transpose(-1, -2)
    return dropout(scores.softmax(dim=-1))


def _depthwise(conv: nn.Conv2d, maps: Tensor) -> Tensor:
    """A per-frame 2-d conv on ``(..., C, h, w)`` maps of any leading shape."""
    out = conv(maps.reshape(-1, *maps.shape[-3:]))
    return out.reshape(*maps.shape[:-3], *out.shape[-3:])


def _grid_to_tokens(maps: Tensor) -> Tensor:
    """``(..., C, h, w)`` → ``(..., h·w, C)``."""
    return maps.flatten(-2).transpose(-1, -2)


def _tokens_to_grid(tokens: Tensor, h: int, w: int) -> Tensor:
    """``(..., h·w, C)`` → ``(..., C, h, w)``."""
    return tokens.transpose(-1, -2).reshape(*tokens.shape[:-2], tokens.shape[-1], h, w)


class SelfMotionAttention(nn.Module):
    """S-MGA's update before its gate: ``(..., T, C, h, w)`` → ``½ Aᶠ v + ½ Aᵇ v`` of the same shape.

    Attention runs within each frame over its ``h·w`` positions; each video is processed on its own.
    """

    def __init__(self, channels: int, *, reduction: int = 8, pe_scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.motion = MotionTokens(channels, reduction=reduction)
        self.values = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pe_scale = pe_scale
        self.token_dropout = nn.Dropout(dropout)  # after the position code, as released
        self.attn_dropout = nn.Dropout(dropout)
        init_motion_weights(self.values)

    def forward(self, maps: Tensor) -> Tensor:
        h, w = maps.shape[-2:]
        forward_tokens, backward_tokens = self.motion(maps)
        code = sinusoidal_positions(h * w, self.motion.token_dim, scale=self.pe_scale,
                                    device=maps.device, dtype=forward_tokens.dtype)
        forward_tokens = self.token_dropout(forward_tokens + code)
        backward_tokens = self.token_dropout(backward_tokens + code)
        values = _grid_to_tokens(_depthwise(self.values, maps))  # (..., T, h·w, C)
        attention = 0.5 * _attend(forward_tokens, forward_tokens, self.attn_dropout) \
            + 0.5 * _attend(backward_tokens, backward_tokens, self.attn_dropout)
        return _tokens_to_grid(attention @ values, h, w)


class SMGA(nn.Module):
    """Self motion-guided attention: ``x + γ · SelfMotionAttention(x)`` on ``(..., T, C, h, w)``; γ starts at ``gate_init``."""

    def __init__(self, channels: int, *, reduction: int = 8, pe_scale: float = 0.1, dropout: float = 0.1,
                 gate_init: float = 0.0) -> None:
        super().__init__()
        self.attention = SelfMotionAttention(channels, reduction=reduction, pe_scale=pe_scale, dropout=dropout)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, maps: Tensor) -> Tensor:
        return maps + self.gate.to(maps.dtype) * self.attention(maps)


class CrossMotionAttention(nn.Module):
    """C-MGA's updates before their gates, for a batch of episodes.

    Args (of ``forward``):
        support: ``(B, N_s, T, C, h, w)``; query: ``(B, N_q, T, C, h, w)``.

    Returns:
        ``(support_self, query_self, query_cross)``: the depth-wise branch of each side (same shapes as
        the inputs) and, per query frame t, ``½ Aᶠ V + ½ Aᵇ V`` where the keys are every support video's
        motion tokens at frame t and ``V`` the support's depth-wise branch at frame t.
    """

    def __init__(self, channels: int, *, reduction: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.motion = MotionTokens(channels, reduction=reduction)
        self.norm = nn.LayerNorm(self.motion.token_dim)
        self.values = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.attn_dropout = nn.Dropout(dropout)
        init_motion_weights(self.values)

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if support.dim() != 6 or query.dim() != 6 or support.shape[2:] != query.shape[2:] \
                or support.shape[0] != query.shape[0]:
            raise ValueError(
                "C-MGA needs support (B, N_s, T, C, h, w) and query (B, N_q, T, C, h, w) with equal B, T, C, h, w; "
                f"got {tuple(support.shape)} and {tuple(query.shape)}"
            )
        support_parts, query_parts = self.video_parts(support), self.video_parts(query)
        return support_parts[2], query_parts[2], self.cross(query_parts, support_parts)

    def video_parts(self, maps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """What C-MGA reads of each video on its own, so evaluation can compute it once per video: maps
        ``(..., T, C, h, w)`` → normalised forward and backward motion tokens ``(..., T, h·w, c)`` and the
        depth-wise branch ``(..., T, C, h, w)``."""
        forward_tokens, backward_tokens = (self.norm(t) for t in self.motion(maps))
        return forward_tokens, backward_tokens, _depthwise(self.values, maps)

    def cross(self, query_parts: tuple[Tensor, Tensor, Tensor], support_parts: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The cross branch from ``video_parts`` of a batch of episodes' queries ``(B, N_q, …)`` and supports
        ``(B, N_s, …)``: per query frame t, ``½ Aᶠ V + ½ Aᵇ V`` over every support's positions at frame t
        → ``(B, N_q, T, C, h, w)``."""
        h, w = support_parts[2].shape[-2:]
        values = _grid_to_tokens(support_parts[2])  # (B, N_s, T, hw, C)
        return _tokens_to_grid(self.cross_tokens(query_parts[:2], support_parts[:2], values), h, w)

    def cross_tokens(self, query_tokens: tuple[Tensor, Tensor], support_tokens: tuple[Tensor, Tensor],
                     values: Tensor) -> Tensor:
        """The cross branch on token layouts: queries' forward and backward motion tokens ``(B, N_q, T, hw, c)``,
        the supports' ``(B, N_s, T, hw, c)`` and per-position values ``(B, N_s, T, hw, V)`` (the depth-wise
        branch, or any per-position linear map of it: attention commutes with it) → ``(B, N_q, T, hw, V)``."""
        batch, n_query, frames, positions, _ = query_tokens[0].shape

        def by_frame(tokens: Tensor) -> Tensor:
            """``(B, N, T, hw, k)`` → ``(B, T, N·hw, k)``: every video's positions of frame t together, so that
            one product per frame serves all queries (no copy of the keys per query)."""
            return tokens.transpose(1, 2).reshape(batch, frames, -1, tokens.shape[-1])

        (query_forward, query_backward), (support_forward, support_backward) = query_tokens, support_tokens
        values = by_frame(values)
        # ½ Aᶠ V + ½ Aᵇ V as ½ (Aᶠ V + Aᵇ V): two products with the (small) values instead of sums and scalings
        # of the (N_q·hw) × (N_s·hw) weights of every frame, the bulk of C-MGA's per-episode cost.
        out = 0.5 * (_attend(by_frame(query_forward), by_frame(support_forward), self.attn_dropout) @ values
                     + _attend(by_frame(query_backward), by_frame(support_backward), self.attn_dropout) @ values)
        return out.view(batch, frames, n_query, positions, -1).transpose(1, 2)


class CMGA(nn.Module):
    """Cross motion-guided attention with zero-initialised gates γ₁ (own branch) and γ₂ (cross branch)::

        support' = support + γ₁ · self(support)
        query'   = query + γ₁ · self(query) + γ₂ · cross(query ← supports)

    Shapes as ``CrossMotionAttention``; returns ``(support', query')``.
    """

    def __init__(self, channels: int, *, reduction: int = 8, dropout: float = 0.1, gate_init: float = 0.0) -> None:
        super().__init__()
        self.attention = CrossMotionAttention(channels, reduction=reduction, dropout=dropout)
        self.self_gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.cross_gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        support_self, query_self, query_cross = self.attention(support, query)
        g_self, g_cross = self.self_gate.to(query.dtype), self.cross_gate.to(query.dtype)
        return support + g_self * support_self, query + g_self * query_self + g_cross * query_cross
