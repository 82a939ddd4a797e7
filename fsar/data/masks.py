"""Per-video foreground masks on disk (e.g. from a text-guided segmentation model run offline), and
their reduction to a feature store's sampled frames and patch grid.

On-disk format (``fsar-masks/1``): one NumPy ``.npz`` file per video, ``<root>/<video_id>.npz`` (a
``video_id`` containing ``/`` makes subfolders), holding

- ``masks``: uint8 ``(F, H, W)``: 0 = background, any other value = foreground (a label map's instance
  ids all count as foreground); the masks cover the whole decoded frame (any resolution, the video's
  aspect ratio);
- ``frame_indices``: int ``(F,)`` strictly increasing: the decoded frame number (0-based, as in the
  store's ``frame_indices``) each mask belongs to. Any subset of a video's frames may be present.

``convert_png_masks`` (``fsar masks --png DIR --out DIR``) writes this format from per-frame PNG masks
``<png_root>/<video_id>/<frame>.png``, the frame number being the last run of digits in the file name
(``00012.png``, ``frame_12.png``); palette or grey PNGs keep their values, colour PNGs become 0/1.

``load_masks`` reads the masks of a list of videos at each video's sampled frames (the mask of the same
frame number, else the nearest one) and pools each to the store's g×g patch grid the way the embedder
pools patches: centre square crop, then area average, so cell values are foreground fractions in [0, 1].
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fsar.atomic import atomic_path
from fsar.config import ConfigError

logger = logging.getLogger(__name__)

MASK_SUFFIX = ".npz"
_DIGITS = re.compile(r"(\d+)(?!.*\d)")  # the last run of digits in a file stem


class MaskFileError(ValueError):
    """A mask file or PNG folder does not hold what the format requires; the message names it."""


def mask_path(root: str | Path, video_id: str) -> Path:
    """``<root>/<video_id>.npz``; refuses ids that would leave ``root`` (absolute, ``..``)."""
    parts = Path(video_id).parts
    if not video_id or Path(video_id).is_absolute() or ".." in parts:
        raise MaskFileError(f"video id {video_id!r} cannot name a mask file under {root}")
    return Path(root) / f"{video_id}{MASK_SUFFIX}"


def write_mask_file(root: str | Path, video_id: str, masks: np.ndarray, frame_indices: Sequence[int]) -> Path:
    """Write one video's masks ``(F, H, W)`` uint8 and their frame numbers ``(F,)`` atomically."""
    masks = np.asarray(masks)
    indices = np.asarray(frame_indices, dtype=np.int64)
    _check(masks, indices, where=f"video {video_id!r}")
    path = mask_path(root, video_id)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez_compressed(f, masks=masks.astype(np.uint8, copy=False), frame_indices=indices)
    return path


def read_mask_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One video's ``masks`` ``(F, H, W)`` uint8 and ``frame_indices`` ``(F,)`` int64, checked."""
    try:
        with np.load(path, allow_pickle=False) as data:
            masks, indices = data["masks"], data["frame_indices"].astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise MaskFileError(f"{path}: not an fsar mask file ({exc}); rewrite it with `fsar masks`") from exc
    _check(masks, indices, where=str(path))
    return masks, indices


def _check(masks: np.ndarray, indices: np.ndarray, *, where: str) -> None:
    if masks.ndim != 3 or masks.dtype != np.uint8 or 0 in masks.shape:
        raise MaskFileError(f"{where}: masks must be non-empty uint8 (F, H, W), got {masks.dtype} {masks.shape}")
    if indices.shape != masks.shape[:1]:
        raise MaskFileError(f"{where}: {masks.shape[0]} masks but frame_indices of shape {indices.shape}")
    if indices.size > 1 and not bool((np.diff(indices) > 0).all()):
        raise MaskFileError(f"{where}: frame_indices must be strictly increasing, got {indices.tolist()}")


def pool_to_grid(masks: np.ndarray, grid: int) -> np.ndarray:
    """Foreground fraction of each patch cell: ``(F, H, W)`` uint8 → ``(F, g, g)`` float32 in [0, 1].

    The embedder centre-crops a square of the shorter side before resizing, so the same crop is taken
    here; adaptive average pooling then gives each of the g×g cells its share of foreground pixels.
    """
    height, width = masks.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(masks[:, top : top + side, left : left + side] > 0))
    return F.adaptive_avg_pool2d(square.float()[:, None], grid)[:, 0].numpy()


def pool_instances_to_grid(masks: np.ndarray, grid: int, instances: int) -> np.ndarray:
    """Each instance's share of each patch cell: ``(F, H, W)`` uint8 ids → ``(F, I, g, g)`` float32 in [0, 1], instance
    i from pixels of id i + 1 (ids above ``instances`` are left out), with the same crop as ``pool_to_grid``."""
    return np.stack([pool_to_grid(masks == i + 1, grid) for i in range(instances)], axis=1)


def nearest_frames(available: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position in ``available`` (sorted) of the frame number nearest each ``wanted`` one (ties: earlier)."""
    if len(available) == 1:
        return np.zeros(len(wanted), dtype=np.int64)
    right = np.searchsorted(available, wanted).clip(1, len(available) - 1)
    left = right - 1
    return np.where(wanted - available[left] <= available[right] - wanted, left, right)


def load_masks(root: str | Path, video_ids: Sequence[str], frame_indices: np.ndarray, grid: int, *,
               instances: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masks of ``video_ids`` at their sampled frames, pooled to the store's patch grid.

    Args:
        root: mask folder in the ``fsar-masks/1`` format.
        video_ids: ``N`` ids, in the order of the returned rows.
        frame_indices: ``(N, T)`` decoded frame number of each sampled frame (the store's
            ``frame_indices``); a row holding a negative number (not recorded) gets no mask.
        grid: g, the store's patch grid side (1 for a store without a grid).
        instances: 0 for one foreground mask per frame (every id > 0); I > 0 for instance ids 1..I apart.

    Returns:
        ``masks`` ``(N, T, g, g)`` (or ``(N, T, I, g, g)``) float32 in [0, 1] (zeros where invalid) and
        ``valid`` ``(N,)`` bool. A
        missing or unusable file is not an error: its video is invalid, and the counts are logged as a
        warning naming the first unusable file and why.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"mask folder {root} does not exist; write one with `fsar masks --png DIR --out {root}`")
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    if frame_indices.shape[:1] != (len(video_ids),) or frame_indices.ndim != 2:
        raise ValueError(f"frame_indices must be (N, T) for {len(video_ids)} videos, got {frame_indices.shape}")
    per_frame = (instances, grid, grid) if instances else (grid, grid)
    out = np.zeros((len(video_ids), frame_indices.shape[1], *per_frame), dtype=np.float32)
    valid = np.zeros(len(video_ids), dtype=bool)
    missing, failed = 0, []
    for row, video_id in enumerate(video_ids):
        try:
            path = mask_path(root, video_id)
            if not path.is_file():
                missing += 1
                continue
            if (frame_indices[row] < 0).any():
                raise MaskFileError("the store did not record which frames were sampled")
            masks, available = read_mask_file(path)
            chosen = nearest_frames(available, frame_indices[row])
            out[row] = pool_instances_to_grid(masks[chosen], grid, instances) if instances else pool_to_grid(
                masks[chosen], grid)
        except MaskFileError as exc:
            failed.append(f"{video_id}: {exc}")
            continue
        valid[row] = True
    if missing or failed:
        logger.warning("masks under %s: %d of %d videos loaded, %d without a mask file, %d unusable%s; "
                       "those videos get no mask loss", root, int(valid.sum()), len(video_ids), missing,
                       len(failed), f" (first: {failed[0]})" if failed else "")
    return out, valid


# ---------------------------------------------------------------- PNG conversion
@dataclass
class MaskConvertConfig:
    """``fsar masks``: convert per-frame PNG masks into the ``fsar-masks/1`` format."""

    png: Path  # folder of <video_id>/<frame>.png masks (frame = last digits of the file name)
    out: Path  # mask folder to write (<out>/<video_id>.npz)
    overwrite: bool = False  # rewrite videos whose .npz already exists (default: a rerun skips them)


@dataclass
class ConvertReport:
    """What ``convert_png_masks`` did, per video."""

    written: int = 0  # videos converted
    skipped: int = 0  # videos whose output already existed
    failed: list[str] = field(default_factory=list)  # "id: reason" for videos that could not be converted

    def summary(self) -> str:
        text = f"{self.written} videos converted, {self.skipped} already done, {len(self.failed)} failed"
        return text + (f" (first: {self.failed[0]})" if self.failed else "")


def read_png_mask(path: Path) -> np.ndarray:
    """One PNG mask as uint8 ``(H, W)``: palette/grey values kept (8-bit), anything else → 0/1 foreground."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("P", "L"):
            return np.asarray(image, dtype=np.uint8)
        array = np.asarray(image)
    if array.ndim == 3:  # colour (or grey + alpha): foreground wherever a colour channel is set
        array = array[..., : 3 if array.shape[-1] >= 3 else 1].any(axis=-1)
    return (array > 0).astype(np.uint8)


def png_frames(folder: Path) -> tuple[list[Path], np.ndarray]:
    """A video folder's PNG files ordered by frame number, and those numbers; raises MaskFileError on
    a name without digits or a repeated frame number."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"]
    numbers = []
    for p in files:
        match = _DIGITS.search(p.stem)
        if match is None:
            raise MaskFileError(f"{p}: no frame number in the file name (expected e.g. 00012.png)")
        numbers.append(int(match.group(1)))
    order = np.argsort(numbers, kind="stable")
    indices = np.asarray(numbers, dtype=np.int64)[order]
    if indices.size > 1 and not bool((np.diff(indices) > 0).all()):
        raise MaskFileError(f"{folder}: two PNG files share a frame number")
    return [files[i] for i in order], indices


def convert_png_masks(config: MaskConvertConfig) -> ConvertReport:
    """Write ``<out>/<video_id>.npz`` for every folder of ``<png>`` that directly holds PNG files (its path
    relative to ``png`` is the video id). A video that cannot be converted is reported, not fatal."""
    png_root, out = Path(config.png), Path(config.out)
    if not png_root.is_dir():
        raise ConfigError(f"--png {png_root} is not a folder of <video_id>/<frame>.png masks")
    folders = sorted({p.parent for p in png_root.rglob("*") if p.is_file() and p.suffix.lower() == ".png"})
    if not folders:
        raise ConfigError(f"--png {png_root} holds no PNG files (expected <video_id>/<frame>.png)")
    report = ConvertReport()
    for folder in folders:
        video_id = folder.relative_to(png_root).as_posix()
        if folder == png_root:
            report.failed.append(f"{png_root}: PNG files directly under --png; put each video's in a <video_id>/ folder")
            continue
        try:
            if mask_path(out, video_id).is_file() and not config.overwrite:
                report.skipped += 1
                continue
            files, indices = png_frames(folder)
            masks = [read_png_mask(p) for p in files]
            shapes = {m.shape for m in masks}
            if len(shapes) > 1:
                raise MaskFileError(f"frames of different sizes {sorted(shapes)}")
            write_mask_file(out, video_id, np.stack(masks), indices)
        except (MaskFileError, OSError) as exc:
            report.failed.append(f"{video_id}: {exc}")
            continue
        report.written += 1
    return report
