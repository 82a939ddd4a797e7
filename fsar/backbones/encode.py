"""Frames to the views a feature store holds: uint8 clips through a ``ClipBackbone`` into the pooled frame
embedding and the patch grid pooled to G×G, in one batched step on the backbone's device.

``fsar embed`` writes exactly these; a method that trains with its backbone sees the same views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fsar.backbones.open_clip_backbone import BlockHook, ClipBackbone
from fsar.data.transforms import pixels_from_squares


def clips_to_device(clips: Sequence[np.ndarray], device: torch.device) -> tuple[list[torch.Tensor], list[int]]:
    """Move uint8 clips ``(T, s_i, s_i, 3)`` of mixed sides to ``device``, one stacked tensor per side.

    Returns the tensors ``(n_side · T, s, s, 3)`` and ``order``: the clip index of each stacked clip, so
    row ``j`` of the concatenated frames belongs to clip ``order[j // T]``. For CUDA the clips are
    stacked straight into pinned host memory, so the copy is a true asynchronous DMA that overlaps with
    the work already queued on the device (from pageable memory ``non_blocking`` silently waits).
    """
    by_side: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_side.setdefault(int(clip.shape[1]), []).append(i)
    pin = device.type == "cuda"
    tensors, order = [], []
    for side, members in by_side.items():
        t = clips[members[0]].shape[0]
        host = torch.empty((len(members), t, side, side, 3), dtype=torch.uint8, pin_memory=pin)
        np.stack([clips[i] for i in members], out=host.numpy())
        tensors.append(host.to(device, non_blocking=True).reshape(len(members) * t, side, side, 3))
        order.extend(members)
    return tensors, order


def frame_views(backbone: ClipBackbone, pixels: torch.Tensor, *, patch_grid: int = 0, keep_grid: bool = False,
                autograd_from: int = 0, before_block: BlockHook | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised pixels ``(N, 3, S, S)`` → the views a store holds: the pooled frame embedding ``(N, D)`` and,
    with ``patch_grid`` G > 0, the patch grid average-pooled to ``(N, G, G, D)`` (with ``keep_grid``, the encoder's
    own grid ``(N, g_h, g_w, D)``, unpooled).

    ``fsar embed`` (through ``encode_clips``) and the trainable stage (``fsar.backbones.stage``) both call this,
    so a method sees the same input cached or end to end. ``autograd_from``, ``before_block``: ``ClipBackbone.encode``'s.
    """
    pooled, grid = backbone.encode(pixels, patches=patch_grid > 0 or keep_grid, autograd_from=autograd_from,
                                   before_block=before_block)
    if grid is None or keep_grid:
        return pooled, grid
    grid = F.adaptive_avg_pool2d(grid.float().permute(0, 3, 1, 2), patch_grid).permute(0, 2, 3, 1)  # fp32 means
    return pooled, grid


@torch.no_grad()
def encode_clips(
    backbone: ClipBackbone, clips: Sequence[np.ndarray], *, patch_grid: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode uint8 clips → frame features ``(B, T, D)`` and optional patches ``(B, T, g, g, D)``, fp16.

    ``clips`` are B videos' centre squares ``(T, s_i, s_i, 3)`` (``decode_record``); sides may differ. On
    the backbone's device, in one batched step under its autocast: resize per side, normalise, encode
    (``pixels_from_squares``, then ``frame_views``). Features come back in the order of ``clips``.
    """
    if not clips:
        raise ValueError("no clips to encode")
    b, t = len(clips), clips[0].shape[0]
    if any(c.shape[0] != t for c in clips):
        raise ValueError(f"clips must all have {t} frames, got {sorted({c.shape[0] for c in clips})}")
    device = next(backbone.parameters()).device
    squares, order = clips_to_device(clips, device)
    # bf16 autocast on CUDA only: on a CPU bf16 matmuls are slower than fp32.
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pixels = pixels_from_squares(squares, backbone.preprocess)  # (B·T, 3, S, S), clips in `order`
        pooled, grid = frame_views(backbone, pixels, patch_grid=patch_grid)
    back = np.argsort(order)  # stacked position of each clip
    frames = pooled.float().reshape(b, t, -1).cpu().numpy().astype(np.float16)[back]
    if grid is None:
        return frames, None
    patches = grid.float().reshape(b, t, patch_grid, patch_grid, -1).cpu().numpy().astype(np.float16)[back]
    return frames, patches
