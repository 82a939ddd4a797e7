"""The backbone's pixel pipeline applied to decoded clips, on tensors (no PIL round trip per frame).

Mirrors open_clip's eval preprocessing — resize the shorter side to ``size``, centre crop, scale to
[0, 1], normalise — and adds the training variant (random crop position and scale). Horizontal flips
are deliberately absent: labels such as "left to right" (SSv2) change meaning under a flip.
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
        if side != self.size:
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
            x = F.interpolate(x, size=(self.size, self.size), mode=mode, align_corners=False, antialias=True)
            x = x.clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std
