"""The embedded default dataset: synthetic motion videos (H.264 mp4) plus a manifest.

``scene`` draws shapes, backgrounds and frames; ``motions`` the motions and ``library`` the classes (time-reverse pairs);
``variants`` holds the mechanism variants (misalignment, clutter); ``render`` renders and encodes one video;
``dataset`` writes a whole dataset (see its docstring for the layout and the variants, masks included).
"""

from fsar.data.synthetic.dataset import (
    MASKS_DIR,
    RENDER_VERSION,
    SynthConfig,
    SynthError,
    generate,
    select_classes,
    video_id,
)
from fsar.data.synthetic.library import MotionClass, motion_classes
from fsar.data.synthetic.render import Rendering, clip_length, render_clip, render_video, video_rng, write_mp4
from fsar.data.synthetic.variants import action_clock, action_timing

__all__ = [
    "MASKS_DIR", "RENDER_VERSION", "MotionClass", "Rendering", "SynthConfig", "SynthError", "action_clock",
    "action_timing", "clip_length", "generate", "motion_classes", "render_clip", "render_video", "select_classes",
    "video_id", "video_rng", "write_mp4",
]
