"""The time-then-channel MLP mixer that follows S-MGA in the released DMGAL-FT code.

Per grid position, a two-layer MLP across the T frames (residual), then per frame and position a
two-layer MLP across the C channels (residual); hidden widths equal the input widths, ReLU between.
It mixes only within a video, so it belongs to the per-video encoder.
"""

from __future__ import annotations

from torch import Tensor, nn


class TimeChannelMixer(nn.Module):
    """``(..., T, C, h, w)`` → same shape; ``T`` must equal ``num_frames`` (the time MLP is T×T)."""

    def __init__(self, channels: int, num_frames: int) -> None:
        super().__init__()
        if channels < 1 or num_frames < 1:
            raise ValueError(f"channels and num_frames must be >= 1, got {channels} and {num_frames}")
        self.num_frames = num_frames
        self.time = nn.Sequential(nn.Linear(num_frames, num_frames), nn.ReLU(), nn.Linear(num_frames, num_frames))
        self.channel = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, maps: Tensor) -> Tensor:
        *lead, frames, channels, h, w = maps.shape
        if frames != self.num_frames:
            raise ValueError(
                f"the time mixer was built for {self.num_frames} frames per video, got {frames}; "
                "set the method's num_frames to the number of frames sampled per video"
            )
        x = maps.reshape(-1, frames, channels, h * w).permute(0, 3, 2, 1)  # (M, hw, C, T)
        x = x + self.time(x)
        x = x.permute(0, 3, 1, 2)  # (M, T, hw, C)
        x = x + self.channel(x)
        return x.permute(0, 1, 3, 2).reshape(*lead, frames, channels, h, w)
