"""Which frames of a video to decode: TSN-style segment sampling.

The clip's ``num_frames`` frames are cut into ``num_segments`` equal (fractional) segments and one
frame is taken per segment: at a random offset in training (temporal jitter), at the segment centre
at evaluation (deterministic, so a test video is embedded once and every episode sees the same frames).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SampleMode = Literal["train", "eval"]
ShortVideoPolicy = Literal["repeat", "error"]


class ShortVideoError(ValueError):
    """A video has fewer frames than the sampler needs and the policy says not to repeat frames."""


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    mode: SampleMode = "eval",
    rng: np.random.Generator | None = None,
    short_video: ShortVideoPolicy = "repeat",
) -> np.ndarray:
    """Frame indices ``(num_segments,)`` int64, non-decreasing, all in ``[0, num_frames)``.

    Videos shorter than ``num_segments`` frames: with ``short_video="repeat"`` segments are shorter
    than a frame, so neighbouring segments share a frame (the clip is stretched in time, order kept);
    with ``"error"`` a ShortVideoError is raised. An empty video is always an error.
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if num_frames < 1:
        raise ShortVideoError("video has no frames")
    if num_frames < num_segments and short_video == "error":
        raise ShortVideoError(
            f"video has {num_frames} frames but {num_segments} are sampled; "
            "use short_video='repeat' to stretch it or drop the video"
        )
    seg_len = num_frames / num_segments
    starts = np.arange(num_segments, dtype=np.float64) * seg_len
    if mode == "eval":
        offsets = np.full(num_segments, 0.5)
    elif mode == "train":
        if rng is None:
            raise ValueError("mode='train' needs an rng (a seeded numpy Generator)")
        offsets = rng.random(num_segments)
    else:
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    idx = np.floor(starts + offsets * seg_len).astype(np.int64)
    # Float rounding may touch the next segment's first frame; never the end of the clip.
    return np.clip(idx, 0, num_frames - 1)
