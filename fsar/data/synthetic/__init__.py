"""The embedded default dataset: synthetic motion videos (H.264 mp4) plus a manifest.

``scene`` draws shapes, backgrounds and frames; ``motions`` holds the class library (time-reverse pairs);
``dataset`` renders, encodes and writes a whole dataset (see its docstring for the layout).
"""

from fsar.data.synthetic.dataset import (
    RENDER_VERSION,
    SynthConfig,
    SynthError,
    clip_length,
    generate,
    render_clip,
    select_classes,
    video_id,
    video_rng,
    write_mp4,
)
from fsar.data.synthetic.motions import MotionClass, motion_classes

__all__ = [
    "RENDER_VERSION", "MotionClass", "SynthConfig", "SynthError", "clip_length", "generate", "motion_classes",
    "render_clip", "select_classes", "video_id", "video_rng", "write_mp4",
]
