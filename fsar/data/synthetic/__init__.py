"""The embedded default dataset: synthetic motion videos (H.264 mp4) plus a manifest.

``families`` lists the generators (``shapes``, the default, and ``figures``, ``camera``, ``swarm``: structurally
different, each with its own library of time-reverse pairs). The ``shapes`` generator: ``scene`` draws shapes,
backgrounds and frames; ``motions`` and ``interactions`` the motions and ``library`` the classes; ``render``
renders and encodes one video. The others: ``figures`` (with ``figure_body``), ``camera``, ``swarm`` (with
``swarm_formations``), on the shared compositing of ``layers``. ``variants`` holds the mechanism variants
(misalignment, clutter) of every family; ``dataset`` writes a whole dataset (see its docstring for the layout
and the variants, masks included).
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
from fsar.data.synthetic.families import DEFAULT_FAMILY, FAMILIES, Family, family_classes
from fsar.data.synthetic.library import MotionClass, motion_classes
from fsar.data.synthetic.render import Rendering, clip_length, render_clip, render_video, video_rng, write_mp4
from fsar.data.synthetic.variants import action_clock, action_timing

__all__ = [
    "DEFAULT_FAMILY", "FAMILIES", "MASKS_DIR", "RENDER_VERSION", "Family", "MotionClass", "Rendering", "SynthConfig",
    "SynthError", "action_clock", "action_timing", "clip_length", "family_classes", "generate", "motion_classes",
    "render_clip", "render_video", "select_classes", "video_id", "video_rng", "write_mp4",
]
