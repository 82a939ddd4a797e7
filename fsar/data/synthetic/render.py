"""Rendering one synthetic video (its frames and, with ``masks``, its instance masks) and encoding frames
as H.264 mp4. The draw order and the variants' laws are in :func:`render_video`; see
:mod:`fsar.data.synthetic.dataset` for the dataset around it."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsar.atomic import atomic_path
from fsar.data.synthetic.library import _MOTIONS, MotionClass
from fsar.data.synthetic.scene import _compose, _scene
from fsar.data.synthetic.variants import action_clock, action_timing, distractors


# ---------------------------------------------------------------- rendering one clip
def clip_length(rng: np.random.Generator, frames: int) -> int:
    """The clip length a video draws first from its generator: uniform in [ceil(0.75·frames), frames]."""
    return int(rng.integers(max(2, math.ceil(0.75 * frames)), frames + 1))


@dataclass
class Rendering:
    """One rendered video: its frames and, when asked for, its instance masks."""

    frames: np.ndarray  # (T, size, size, 3) uint8 RGB
    masks: np.ndarray | None = None  # (T, size, size) uint8: 0 background and distractors, 1.. the class's objects


def render_video(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int,
                 clutter: int = 0, misalign: float = 0.0, masks: bool = False) -> Rendering:
    """Render one video of ``motion_class``, T in [ceil(0.75·frames), frames] frames.

    Draw order from ``rng``: clip length, scene (background, shapes, colours, sizes), the motion's own
    parameters, the action's timing (two numbers, drawn at every ``misalign``), then the ``clutter``
    distractors. The variants' draws come last, so ``clutter=0, misalign=0`` renders exactly the
    frames of a version without them, and a variant keeps the video's scene and motion parameters.
    With ``misalign > 0`` the motion is evaluated a second time, on its retimed clock, from a copy of
    the generator taken before its draws: motions draw only scalars, never anything that depends on
    the time grid, so both evaluations draw the same parameters (checked).

    A reversed class renders its forward motion with the same draws and reverses the frame order (and
    the masks'), so ``render_video(reverse, rng_a) == render_video(forward, rng_b)[::-1]`` for
    generators in the same state, whatever the variants.
    """
    t_len = clip_length(rng, frames)
    fn, pools = _MOTIONS[motion_class.motion]
    background, objects = _scene(rng, size, pools)
    t = np.linspace(0.0, 1.0, t_len)
    radii = [o.radius for o in objects]
    before_motion = copy.deepcopy(rng)
    tracks = fn(rng, t, radii)
    after_motion = rng.bit_generator.state  # a fresh dict: later draws do not change it
    share, start = action_timing(rng, misalign)
    if share < 1.0:
        tracks = fn(before_motion, action_clock(t, share, start), radii)
        if before_motion.bit_generator.state != after_motion:
            raise RuntimeError(f"motion {motion_class.motion!r} draws a different number of parameters on another "
                               "time grid; misalignment needs motions whose draws do not depend on the clip times")
    instances = [tr.obj + 1 for tr in tracks]  # every object of the class is one instance
    if clutter:
        clutter_objects, clutter_tracks, front = distractors(
            rng, background, [o.colour for o in objects], clutter, t, len(objects))
        objects = objects + clutter_objects
        behind = [tr for tr, f in zip(clutter_tracks, front, strict=True) if not f]
        ahead = [tr for tr, f in zip(clutter_tracks, front, strict=True) if f]
        tracks = behind + tracks + ahead
        instances = [0] * len(behind) + instances + [0] * len(ahead)
    video, mask = _compose(background, objects, tracks, t_len, instances=instances if masks else None)
    if motion_class.reversed:
        video = np.ascontiguousarray(video[::-1])
        mask = None if mask is None else np.ascontiguousarray(mask[::-1])
    return Rendering(video, mask)


def render_clip(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int,
                clutter: int = 0, misalign: float = 0.0) -> np.ndarray:
    """The frames of :func:`render_video`: (T, size, size, 3) uint8 RGB."""
    return render_video(motion_class, rng, frames=frames, size=size, clutter=clutter, misalign=misalign).frames


def video_rng(seed: int, class_id: int, index: int) -> np.random.Generator:
    """The generator of video ``index`` of class ``class_id``: independent of worker count and order."""
    return np.random.default_rng([seed, class_id, index])


# ---------------------------------------------------------------- encoding
def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 12, *, crf: int = 18,
              preset: str = "veryfast") -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as H.264/yuv420p mp4 at ``path``, atomically.

    No B-frames (``bf=0``): decode order equals display order, which keeps decord's frame-accurate
    seeking reliable. One encoder thread: parallelism comes from encoding many videos at once.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_mp4 {path}: frames must be (T, H, W, 3) uint8 with T > 0, got "
                         f"{frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"write_mp4 {path}: yuv420p needs even width and height, got {width}x{height}")
    path = Path(path)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "bf": "0", "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
