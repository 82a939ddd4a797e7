"""The backbone's pixel pipeline applied to decoded clips, on tensors (no PIL round trip per frame).

Mirrors open_clip's eval preprocessing — resize the shorter side to ``size``, centre crop, scale to
[0, 1], normalise — and adds the training variant (random crop position and scale). Horizontal flips
are deliberately absent: labels such as "left to right" (SSv2) change meaning under a flip.

The eval pipeline also comes split in two for the embed job: ``centre_square`` (CPU, where a video is
decoded: a crop by slicing, uint8 kept) and ``pixels_from_squares`` (the encoder's device: resize and
normalise a whole batch of clips of any native sizes at once). Together they give what
``FramePreprocess(...)(frames)`` gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FramePreprocess:
    """uint8 frames ``(T, H, W, 3)`` → normalised float ``(T, 3, size, size)``."""

    size: int  # output side in pixels (the backbone's image size)
    mean: Sequence[float] = OPENAI_MEAN  # per-channel mean of the backbone's training data
    std: Sequence[float] = OPENAI_STD  # per-channel std of the backbone's training data
    interpolation: str = "bicubic"  # resize filter, as the backbone was trained with
    train_scale: tuple[float, float] = (0.8, 1.0)  # crop side range, as a fraction of the shorter side, in training

    def __call__(
        self, frames: np.ndarray | torch.Tensor, *, train: bool = False, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        x = torch.as_tensor(frames)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        short = min(h, w)
        if train:
            if rng is None:
                raise ValueError("training crops need an rng (a seeded numpy Generator)")
            # One crop for the whole clip: the same region in every frame keeps the motion intact.
            side = max(1, int(round(short * rng.uniform(*self.train_scale))))
            top = int(rng.integers(0, h - side + 1))
            left = int(rng.integers(0, w - side + 1))
        else:
            side = short
            top, left = (h - side) // 2, (w - side) // 2
        x = x[:, :, top : top + side, left : left + side]
        return self.normalise(self.resize(x))

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Square float frames in [0, 1] ``(N, 3, s, s)`` → ``(N, 3, size, size)`` in [0, 1] (unchanged if s = size)."""
        if x.shape[-1] == self.size:
            return x
        mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
        x = F.interpolate(x, size=(self.size, self.size), mode=mode, align_corners=False, antialias=True)
        return x.clamp_(0.0, 1.0)  # bicubic overshoots at edges; the backbone was trained on [0, 1] input

    def normalise(self, x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """``(x - mean) / std`` per channel of ``(N, 3, H, W)``, with the constants made on ``x``'s device."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std) if inplace else (x - mean) / std


def centre_square(frames: np.ndarray) -> np.ndarray:
    """The centre square of each frame, uint8 kept: ``(T, H, W, 3)`` → contiguous ``(T, s, s, 3)``, s = min(H, W).

    The crop ``FramePreprocess`` takes in eval mode (same offsets), by slicing alone: no interpolation
    and no float, so a decode worker does no arithmetic and ships one byte per value.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(frames.shape)}")
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(frames[:, top : top + side, left : left + side])


def pixels_from_squares(squares: Sequence[torch.Tensor], preprocess: FramePreprocess) -> torch.Tensor:
    """uint8 square frames of mixed sides on one device → normalised float32 ``(N, 3, S, S)``, S = ``preprocess.size``.

    ``squares`` is a sequence of uint8 tensors ``(n_i, s_i, s_i, 3)`` (e.g. the frames of one video, or of
    all videos of one side); the output holds their frames in that order, N = Σ n_i. Tensors that share
    a side are resized together, in one ``F.interpolate`` call, then the whole batch is normalised at
    once: the same result as ``preprocess`` in eval mode on each centre square.

    Runs on whatever device the tensors are on. The arithmetic stays float32 even inside a caller's
    bf16 autocast: bf16 keeps 8 significant bits, no finer than the uint8 input before any resampling
    error is added, and this step is a small fraction of the encoder's time.
    """
    if not squares:
        raise ValueError("no frames to preprocess")
    for sq in squares:
        if sq.ndim != 4 or sq.shape[1] != sq.shape[2] or sq.shape[3] != 3 or sq.dtype != torch.uint8:
            raise ValueError(f"expected uint8 square frames (n, s, s, 3), got {sq.dtype} {tuple(sq.shape)}")
    device = squares[0].device
    sizes = [len(sq) for sq in squares]
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    by_side: dict[int, list[int]] = {}
    for i, sq in enumerate(squares):
        by_side.setdefault(int(sq.shape[1]), []).append(i)
    out = torch.empty((starts[-1], 3, preprocess.size, preprocess.size), dtype=torch.float32, device=device)
    with torch.autocast(device_type=device.type, enabled=False):
        for members in by_side.values():
            group = torch.cat([squares[i] for i in members]) if len(members) > 1 else squares[members[0]]
            # (n, s, s, 3) → (n, 3, s, s) as a channels-last view, exactly as FramePreprocess does.
            resized = preprocess.resize(group.permute(0, 3, 1, 2).float().div_(255.0))
            if len(members) == len(squares):
                out.copy_(resized)
            else:
                rows = torch.cat([torch.arange(starts[i], starts[i + 1], device=device) for i in members])
                out.index_copy_(0, rows, resized)
        return preprocess.normalise(out, inplace=True)
