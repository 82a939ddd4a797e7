"""I2ST's per-video building blocks: instance perception and the spatial / temporal attention pair.

All blocks are pre-norm residual transformer blocks (``x + Attn(LN x)``, then ``x + MLP(LN x)``), so a
block starts close to the identity and the features the store holds pass through the residual stream.
Shapes: M frames (all videos' frames flattened), P = g·g patches per frame, K instances, T frames per
video, d the token width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fsar.methods.parts import sinusoid_code
from fsar.ops.instance_masks import mask_pool


def grid_code(grid: int, width: int, *, device: torch.device | None = None) -> Tensor:
    """2-D position code of a g×g patch grid, row-major: ``(g·g, width)`` (half the channels per axis)."""
    axis = torch.arange(grid, device=device)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    row_width = width // 2
    return torch.cat([sinusoid_code(rows.flatten(), row_width), sinusoid_code(cols.flatten(), width - row_width)], -1)


class FrameScale(nn.Module):
    """Divide a frame's patch features by their root mean square over the whole frame: ``(M, P, D)`` → same.

    Unlike a per-patch LayerNorm this keeps how the patches of a frame differ in magnitude — which ones
    stand out — and removes only the backbone's overall feature scale.
    """

    def forward(self, patches: Tensor) -> Tensor:
        return patches * patches.pow(2).mean(dim=(-1, -2), keepdim=True).clamp_min(1e-12).rsqrt()


class MultiHeadAttention(nn.Module):
    """Multi-head attention of ``x (M, n, d)`` over ``context (M, m, d)`` → ``(M, n, d)``, batch first.

    I2ST attends over short sequences (4–40 tokens) of very many frames. ``nn.MultiheadAttention`` spends
    most of its time there transposing to and from sequence-first layout; this one projects key and value
    in one matmul and, on CPU, computes the softmax explicitly, which beats the fused kernel at these lengths.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, n, dim = x.shape
        head_dim = dim // self.heads
        query = self.query(x).view(batch, n, self.heads, head_dim).transpose(1, 2)  # (M, h, n, dh)
        key, value = self.key_value(context).view(batch, -1, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        if x.is_cuda:
            mixed = F.scaled_dot_product_attention(query, key, value)
        else:
            weights = (query @ key.transpose(-1, -2) * head_dim**-0.5).softmax(dim=-1)
            mixed = weights @ value  # (M, h, n, dh)
        return self.out(mixed.transpose(1, 2).reshape(batch, n, dim))


class AttentionBlock(nn.Module):
    """Pre-norm residual attention + MLP: ``x (M, n, d)`` attends to ``context (M, m, d)`` when ``cross``,
    else to itself."""

    def __init__(self, dim: int, *, heads: int, mlp_ratio: float, cross: bool) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        # Cross-attention normalises its context on its own; self-attention has no second input to normalise.
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = MultiHeadAttention(dim, heads)
        hidden = max(1, round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        query = self.norm_x(x)
        if (context is None) != (self.norm_context is None):
            raise ValueError("AttentionBlock: pass a context exactly when the block was built with cross=True")
        source = query if self.norm_context is None else self.norm_context(context)
        x = x + self.attn(query, source)
        return x + self.mlp(x)


LOCATION_FREQUENCIES = 4  # Fourier features of an instance's centroid: sin/cos at 1..4 half-periods per axis


def location_features(centroids: Tensor) -> Tensor:
    """Fourier features of ``(..., 2)`` (row, column) positions in [−1, 1] → ``(..., 4·LOCATION_FREQUENCIES)``."""
    k = torch.arange(1, LOCATION_FREQUENCIES + 1, device=centroids.device, dtype=centroids.dtype)
    angle = (math.pi / 2) * centroids[..., None] * k  # (..., 2, F)
    return torch.cat([angle.sin(), angle.cos()], dim=-1).flatten(-2)


def grid_coordinates(grid: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(row, column) of each patch of a g×g grid, row-major, in [−1, 1] (0 for a 1×1 grid): ``(g·g, 2)``."""
    axis = torch.linspace(-1.0, 1.0, grid, device=device, dtype=dtype) if grid > 1 else torch.zeros(1, device=device, dtype=dtype)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


class InstancePerception(nn.Module):
    """K learnable instance queries read one frame's patch tokens; each yields a mask over the patches
    (logits = query · patch / √d) and an instance embedding, the mask-weighted mean of the patch tokens.

    With ``location=True`` each embedding also gets a learned code of its mask's centroid on the grid, so an
    instance says where it is, not only what it looks like: a trajectory of locations is what a motion is.
    """

    def __init__(self, dim: int, *, instances: int, heads: int, mlp_ratio: float, location: bool = False) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(instances, dim) * dim**-0.5)
        self.read = AttentionBlock(dim, heads=heads, mlp_ratio=mlp_ratio, cross=True)
        self.mask_query = nn.Linear(dim, dim)
        self.mask_key = nn.Linear(dim, dim)
        self.location = nn.Linear(4 * LOCATION_FREQUENCIES, dim) if location else None

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """``(M, P, d)`` patch tokens of a g×g grid → instance embeddings ``(M, K, d)`` and mask logits ``(M, K, P)``."""
        queries = self.read(self.queries.expand(patches.shape[0], -1, -1), patches)
        logits = self.mask_query(queries) @ self.mask_key(patches).transpose(-1, -2) / math.sqrt(patches.shape[-1])
        masks = logits.sigmoid()
        instances = mask_pool(patches, masks)
        if self.location is not None:
            grid = math.isqrt(patches.shape[-2])
            centroids = mask_pool(grid_coordinates(grid, device=patches.device, dtype=patches.dtype), masks)  # (M, K, 2)
            instances = instances + self.location(location_features(centroids))
        return instances, logits


class SpatialAttention(nn.Module):
    """Per frame, image ↔ instance: the patch tokens attend to the instance tokens, then the instance
    tokens attend to the updated patch tokens."""

    def __init__(self, dim: int, *, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.image_from_instances = AttentionBlock(dim, heads=heads, mlp_ratio=mlp_ratio, cross=True)
        self.instances_from_image = AttentionBlock(dim, heads=heads, mlp_ratio=mlp_ratio, cross=True)

    def forward(self, image: Tensor, instances: Tensor) -> tuple[Tensor, Tensor]:
        """``(M, P, d)`` patch tokens and ``(M, K, d)`` instance tokens → both updated."""
        image = self.image_from_instances(image, instances)
        return image, self.instances_from_image(instances, image)


class TemporalAttention(nn.Module):
    """Per video, self-attention across frames over each frame's [frame token; instance tokens].

    A learned slot embedding tells the frame token from the K instance slots, and a fixed time code
    (scaled by a learned gain) gives the order of the frames, so the tokens can carry motion direction.
    """

    def __init__(self, dim: int, *, instances: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.slots = nn.Parameter(torch.zeros(1 + instances, dim))
        self.time_gain = nn.Parameter(torch.tensor(0.1))
        self.block = AttentionBlock(dim, heads=heads, mlp_ratio=mlp_ratio, cross=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(V, T, 1 + K, d)`` → same shape (slot 0 is the frame token)."""
        videos, frames, slots, dim = tokens.shape
        time = sinusoid_code(torch.arange(frames, device=tokens.device), dim).to(tokens.dtype)
        x = tokens + self.slots + self.time_gain * time[:, None, :]
        return self.block(x.reshape(videos, frames * slots, dim)).view(videos, frames, slots, dim)
