"""The embedded default dataset: synthetic motion videos (H.264 mp4) plus a manifest.

Something-Something-like: a class is a *motion* (moving left to right, falling over, pushing an object
into another, ...), never an appearance. Every video draws its own shapes, colours, sizes, textured
background, clip length, and the start, duration and extent of the motion from a generator seeded by
``(seed, class id, video index)``, so two videos of a class share nothing but the motion, and the result
does not depend on how many workers render it.

Classes come in **time-reverse pairs**: each base motion has a forward class and a reversed partner
whose video is, literally, the forward rendering played backwards (:func:`render_clip` renders forward
and reverses the frame list). A method that ignores frame order cannot tell the partners apart, so test
splits that hold whole pairs measure temporal modelling.

Library: :func:`motion_classes` lists 128 classes (64 pairs) in 11 families; class ``2k`` is the
forward member of pair ``k`` and ``2k + 1`` its reverse. Those ids (and the video ids ``c017_v003``)
are stable across configs; the manifest's ``label`` follows the manifest convention instead (train
classes first, then val, then test, natural order of names; see :mod:`fsar.data.manifest`).

Class choice and splits (:func:`select_classes`): the pairs are shuffled by a generator seeded with
``seed``; whole pairs fill train, then val, then test (``count // 2`` pairs each); a split with an odd
count takes one member (chosen by the same generator) of a further pair, so no pair straddles two
splits unless ``classes`` is so close to 128 that no spare pair is left. Fewer classes than the library
thus means "the first pairs of a seeded shuffle"; the same seed always picks the same classes.

Output of :func:`generate` (all paths relative to ``out``)::

    videos/<split>/<class_slug>/<video_id>.mp4   one video, written atomically
    classes.json                                 chosen classes: id, name, family, partner, split, label
    synth.json                                   the settings the videos were made with (checked on rerun)
    manifest.parquet                             written last: its presence means the dataset is complete
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fsar.atomic import atomic_path, atomic_write_text
from fsar.config import ConfigError

# Part of synth.json: bump whenever rendering or the class library changes, so that a rerun into an
# old folder refuses to mix videos of two versions instead of silently resuming.
RENDER_VERSION = 1

DEFAULT_FRACTIONS = (0.64, 0.12, 0.24)
SPLITS = ("train", "val", "test")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
TAU = 2.0 * math.pi


class SynthError(ConfigError):
    """A synthetic-data setting is invalid or clashes with an existing output folder (a ConfigError, so
    the command line reports it as a one-line error)."""


# ---------------------------------------------------------------- configuration
def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass
class SynthConfig:
    """``fsar synth``: the synthetic motion dataset and how to write it."""

    out: Path  # output folder: videos/, manifest.parquet, classes.json, synth.json
    classes: int = 100  # motion classes taken from the 128-class library (whole reverse pairs where possible)
    videos_per_class: int = 20  # videos per class
    frames: int = 32  # longest clip in frames; each clip has between ceil(0.75·frames) and frames
    size: int = 112  # frame side in pixels (square, even: yuv420p halves the chroma planes)
    fps: int = 12  # frame rate stored in the mp4
    seed: int = 0  # seeds the class choice, the splits and every video
    class_split: tuple[int, int, int] | None = None  # train/val/test class counts; None: 64/12/24 % of classes
    workers: int = field(default_factory=_default_workers)  # rendering+encoding processes (1: in-process)
    crf: int = 18  # x264 constant rate factor: lower is closer to the rendered frames and bigger
    preset: str = "veryfast"  # x264 speed preset

    def split_counts(self) -> tuple[int, int, int]:
        """Train/val/test class counts: ``class_split`` if given, else the default fractions of ``classes``."""
        if self.class_split is not None:
            counts = tuple(int(c) for c in self.class_split)
            if len(counts) != 3 or any(c < 0 for c in counts) or sum(counts) != self.classes:
                raise SynthError(f"class_split {self.class_split!r} must be three non-negative counts (train, val, "
                                 f"test) summing to classes={self.classes}")
            return counts  # type: ignore[return-value]
        # Largest-remainder rounding, shared with class-per-folder manifests: 100 -> 64/12/24.
        from fsar.data.folder_tree import class_split_counts

        return class_split_counts(self.classes, DEFAULT_FRACTIONS)

    def validate(self) -> None:
        """Raise SynthError naming the first bad setting and the fix."""
        library = len(motion_classes())
        if not 1 <= self.classes <= library:
            raise SynthError(f"classes={self.classes}: the motion library has {library} classes; pick 1..{library}")
        if self.classes < 3 and self.class_split is None:
            raise SynthError(f"classes={self.classes} cannot fill train/val/test; use at least 3 or give class_split")
        if self.videos_per_class < 1:
            raise SynthError(f"videos_per_class={self.videos_per_class} must be at least 1")
        if self.frames < 2:
            raise SynthError(f"frames={self.frames} must be at least 2")
        if self.size < 16 or self.size % 2:
            raise SynthError(f"size={self.size} must be an even number of pixels, at least 16")
        if self.seed < 0:
            raise SynthError(f"seed={self.seed} must be a non-negative integer")
        if self.fps < 1:
            raise SynthError(f"fps={self.fps} must be at least 1")
        if not 0 <= self.crf <= 51:
            raise SynthError(f"crf={self.crf} must be in 0..51 (x264)")
        if self.preset not in X264_PRESETS:
            raise SynthError(f"preset={self.preset!r} is not an x264 preset; pick one of {', '.join(X264_PRESETS)}")
        if self.workers < 1:
            raise SynthError(f"workers={self.workers} must be at least 1")
        self.split_counts()

    def stamp(self) -> dict[str, Any]:
        """The settings that decide what lands on disk (not ``out`` or ``workers``), for synth.json."""
        return {"render_version": RENDER_VERSION, "classes": self.classes, "videos_per_class": self.videos_per_class,
                "frames": self.frames, "size": self.size, "fps": self.fps, "seed": self.seed,
                "class_split": list(self.split_counts()), "crf": self.crf, "preset": self.preset}


# ---------------------------------------------------------------- shapes (signed distances)
# A shape lives in object-local coordinates where its long half-axis is 1; the renderer scales it by
# per-frame half-extents (ax, ay). Convex polygons are kept as half-planes (unit normal n, offset o):
# for a polygon stretched by diag(ax, ay) the half-plane n·q <= o becomes m·p <= o with m = n / (ax, ay),
# and (m·p - o) / |m| is the exact distance to that edge, so anti-aliasing stays 1 px wide however
# thin (a rod) or stretched a shape gets.
@dataclass(frozen=True)
class _Shape:
    kind: str  # "poly" (union of convex polygons) or "ellipse"
    parts: tuple[tuple[tuple[float, float, float], ...], ...] = ()  # per polygon: edges (nx, ny, offset)
    axes: tuple[float, float] = (1.0, 1.0)  # ellipse half-axes (local units)
    ring: float = 0.0  # ellipse: ring half-thickness as a fraction of the shorter axis (0: filled)
    reach: float = 1.0  # farthest point from the centre (local units): bounds the pixels to touch


def _convex(vertices: Sequence[tuple[float, float]]) -> tuple[tuple[float, float, float], ...]:
    v = np.asarray(vertices, dtype=np.float64)
    centre = v.mean(axis=0)
    edges = []
    for a, b in zip(v, np.roll(v, -1, axis=0), strict=True):
        n = np.array([b[1] - a[1], a[0] - b[0]])
        n /= np.linalg.norm(n)
        o = float(n @ a)
        if n @ centre > o:  # the normal must point away from the inside
            n, o = -n, -o
        edges.append((float(n[0]), float(n[1]), o))
    return tuple(edges)


def _rect(x0: float, x1: float, y0: float, y1: float) -> tuple[tuple[float, float, float], ...]:
    return _convex([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _regular(n: int, radius: float = 1.0) -> list[tuple[float, float]]:
    # First vertex straight up (y grows downwards on screen).
    return [(radius * math.cos(-math.pi / 2 + TAU * k / n), radius * math.sin(-math.pi / 2 + TAU * k / n))
            for k in range(n)]


def _poly(*parts: tuple[tuple[float, float, float], ...], reach: float) -> _Shape:
    return _Shape("poly", parts=tuple(parts), reach=reach)


SHAPES: dict[str, _Shape] = {
    "circle": _Shape("ellipse", axes=(1.0, 1.0)),
    "ring": _Shape("ellipse", axes=(1.0, 1.0), ring=0.3),
    "square": _poly(_rect(-0.85, 0.85, -0.85, 0.85), reach=1.21),
    "triangle": _poly(_convex(_regular(3, 1.1)), reach=1.1),
    "pentagon": _poly(_convex(_regular(5)), reach=1.0),
    "hexagon": _poly(_convex(_regular(6)), reach=1.0),
    "diamond": _poly(_convex([(1, 0), (0, 1), (-1, 0), (0, -1)]), reach=1.0),
    "cross": _poly(_rect(-1, 1, -0.32, 0.32), _rect(-0.32, 0.32, -1, 1), reach=1.05),
    # Elongated along local x: what rotation classes need to make the turning visible.
    "bar": _poly(_rect(-1, 1, -0.3, 0.3), reach=1.05),
    "ellipse": _Shape("ellipse", axes=(1.0, 0.42)),
    "pointer": _poly(_convex([(1, 0), (-1, 0.55), (-1, -0.55)]), reach=1.15),
    "tee": _poly(_rect(-1, 0.55, -0.22, 0.22), _rect(0.55, 1, -0.7, 0.7), reach=1.23),
    # A rod is a plain rectangle whose half-extents the motion sets directly (length, thickness).
    "rod": _poly(_rect(-1, 1, -1, 1), reach=1.42),
}

# Shape pools an object of a motion draws from: (shapes, radius range, random orientation?).
_ELONGATED = ("bar", "ellipse", "pointer", "tee")
_COMPACT = ("circle", "ring", "square", "triangle", "pentagon", "hexagon", "diamond", "cross")
POOLS: dict[str, tuple[tuple[str, ...], tuple[float, float], bool]] = {
    "any": (_COMPACT + _ELONGATED, (0.065, 0.11), True),
    "nonround": (tuple(s for s in _COMPACT if s not in ("circle", "ring")) + _ELONGATED, (0.07, 0.11), True),
    "elongated": (_ELONGATED, (0.13, 0.19), True),
    "upright": (_ELONGATED, (0.15, 0.21), False),  # orientation is the motion's business (falling over)
    "blocky": (("circle", "square", "hexagon", "pentagon"), (0.13, 0.17), True),  # covers another object
    "axis": (_COMPACT, (0.065, 0.11), False),  # stretched along the screen axes, so no base rotation
    "rod": (("rod",), (1.0, 1.0), False),  # size set by the motion
}


def _signed_distance(shape: _Shape, lx: np.ndarray, ly: np.ndarray, ax: float, ay: float) -> np.ndarray:
    """Signed distance (frame-side units, negative inside) of local points ``lx, ly`` (h, w)."""
    if shape.kind == "ellipse":
        a, b = shape.axes[0] * ax, shape.axes[1] * ay
        qx, qy = lx / a, ly / b
        k0 = np.sqrt(qx * qx + qy * qy)
        k1 = np.sqrt((qx / a) ** 2 + (qy / b) ** 2)
        # Gradient-normalised implicit ellipse: exact for circles, close enough near an ellipse's rim.
        d = k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)
        if shape.ring:
            w = shape.ring * min(a, b)
            d = np.abs(d + w) - w
        return d
    out = None
    for part in shape.parts:
        inside = None
        for nx, ny, o in part:
            mx, my = nx / ax, ny / ay
            norm = math.hypot(mx, my)
            e = lx * (mx / norm) + ly * (my / norm) - o / norm
            inside = e if inside is None else np.maximum(inside, e)
        out = inside if out is None else np.minimum(out, inside)
    return out


# ---------------------------------------------------------------- scenes and rendering
@dataclass
class _Object:
    shape: str
    colour: np.ndarray  # (3,) float, 0..255
    radius: float  # base half-extent, frame-side units
    angle: float  # base orientation, radians (clockwise on screen)


@dataclass
class _Track:
    """Per-frame state of one drawn object; every field broadcasts to (T,)."""

    obj: int  # which scene object (shape, colour, base orientation)
    x: Any  # centre, frame-side units, 0 = left edge
    y: Any  # centre, 0 = top edge
    r: Any  # half-extent before the stretch factors
    angle: Any = 0.0  # added to the object's base orientation; positive turns clockwise on screen
    sx: Any = 1.0  # stretch along the object's local x
    sy: Any = 1.0  # stretch along local y
    alpha: Any = 1.0  # opacity
    bright: Any = 0.0  # < 0 darkens towards black, > 0 lightens towards white


def _bilinear(n: int, size: int) -> np.ndarray:
    """(size, n) matrix resampling n control values to size pixels (linear, edge-clamped)."""
    pos = (np.arange(size) + 0.5) / size * (n - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n - 2)
    frac = pos - lo
    m = np.zeros((size, n))
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] += frac
    return m


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static per-video background (size, size, 3) float32: solid colour, smooth blotches, a light
    gradient, sometimes faint stripes, and fine grain."""
    # Dark, moderately tinted scenes: a random-init encoder's features are dominated by overall colour, so a
    # full-range background colour would drown the motion that defines the class (measured: chance level).
    base = rng.uniform(35, 95) + rng.uniform(-15, 15, size=3)
    n = int(rng.integers(3, 9))
    blotch = rng.normal(0, 1, size=(n, n, 1)) * rng.uniform(6, 26)  # brightness, shared by the channels
    tint = rng.normal(0, 1, size=(n, n, 3)) * rng.uniform(0, 8)
    up = _bilinear(n, size)
    grid = np.stack([up @ c @ up.T for c in np.moveaxis(blotch + tint, -1, 0)], axis=-1)
    coords = (np.arange(size) + 0.5) / size
    theta = rng.uniform(0, TAU)
    ramp = (np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None] - 0.5) * rng.uniform(-40, 40)
    image = base + grid + ramp[..., None]
    if rng.random() < 0.35:
        phi = rng.uniform(0, TAU)
        wave = np.sin(TAU * rng.uniform(2, 7) * (np.cos(phi) * coords[None, :] + np.sin(phi) * coords[:, None])
                      + rng.uniform(0, TAU))
        image = image + wave[..., None] * rng.uniform(4, 12)
    image = image + rng.normal(0, rng.uniform(0, 3.5), size=(size, size, 1))
    return np.clip(image, 0, 255).astype(np.float32)


def _colours(rng: np.random.Generator, background: np.ndarray, count: int) -> list[np.ndarray]:
    """Object colours far from the background's mean colour and from each other."""
    bg = background.reshape(-1, 3).mean(axis=0)
    chosen: list[np.ndarray] = []
    for _ in range(count):
        best, best_score = None, -1.0
        for _ in range(24):  # a bounded number of draws keeps the stream of random numbers deterministic
            c = rng.uniform(0, 255, size=3)
            score = min([np.linalg.norm(c - bg) / 130.0] + [np.linalg.norm(c - o) / 80.0 for o in chosen])
            if score > best_score:
                best, best_score = c, score
            if score >= 1.0:
                break
        chosen.append(best)
    return chosen


def _scene(rng: np.random.Generator, size: int, pools: Sequence[str]) -> tuple[np.ndarray, list[_Object]]:
    background = _background(rng, size)
    colours = _colours(rng, background, len(pools))
    objects = []
    for pool, colour in zip(pools, colours, strict=True):
        shapes, (r_lo, r_hi), free = POOLS[pool]
        shape = shapes[int(rng.integers(len(shapes)))]
        objects.append(_Object(shape, colour, float(rng.uniform(r_lo, r_hi)), float(rng.uniform(0, TAU)) if free else 0.0))
    return background, objects


def _compose(background: np.ndarray, objects: Sequence[_Object], tracks: Sequence[_Track], frames: int) -> np.ndarray:
    """Draw ``tracks`` (in list order: later ones on top) over ``background``: (T, H, W, 3) uint8."""
    size = background.shape[0]
    per_track = []
    for tr in tracks:
        fields = {f: np.broadcast_to(np.asarray(getattr(tr, f), dtype=np.float64), (frames,)).tolist()
                  for f in ("x", "y", "r", "angle", "sx", "sy", "alpha", "bright")}
        per_track.append((objects[tr.obj], fields))
    # Start every frame as the rounded background and blend objects into their bounding boxes only:
    # whole-frame float work per frame would cost more than all the objects together.
    video = np.repeat(np.clip(background + 0.5, 0, 255).astype(np.uint8)[None], frames, axis=0)
    pixel = np.arange(size, dtype=np.float32)
    for t in range(frames):
        for obj, f in per_track:
            ax = max(f["r"][t] * f["sx"][t], 1e-4)
            ay = max(f["r"][t] * f["sy"][t], 1e-4)
            # Sub-pixel objects (growing from a point) fade with their size instead of popping in.
            alpha = f["alpha"][t] * min(1.0, max(ax, ay) * size / 1.5)
            if alpha <= 1e-3:
                continue
            shape = SHAPES[obj.shape]
            cx, cy = f["x"][t] * size, f["y"][t] * size
            reach = shape.reach * max(ax, ay) * size + 1.5
            x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)), size)
            y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)), size)
            if x0 >= x1 or y0 >= y1:
                continue  # entirely outside the frame
            theta = obj.angle + f["angle"][t]
            c, s = math.cos(theta), math.sin(theta)
            gx = ((pixel[x0:x1] + 0.5) / size - f["x"][t])[None, :]
            gy = ((pixel[y0:y1] + 0.5) / size - f["y"][t])[:, None]
            lx = c * gx + s * gy
            ly = c * gy - s * gx
            cover = np.clip(0.5 - _signed_distance(shape, lx, ly, ax, ay) * size, 0.0, 1.0) * alpha
            b = f["bright"][t]
            colour = obj.colour * (1 + b) if b < 0 else obj.colour + b * (255 - obj.colour)
            region = video[t, y0:y1, x0:x1]
            blend = region.astype(np.float32)
            blend += cover[..., None] * (colour.astype(np.float32) - blend)
            # A convex mix of values in 0..255 stays in range: adding 0.5 and truncating rounds.
            np.copyto(region, blend + 0.5, casting="unsafe")
    return video


# ---------------------------------------------------------------- motion helpers
DIRECTIONS = {
    "right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0),
    "down_right": (math.sqrt(0.5), math.sqrt(0.5)), "down_left": (-math.sqrt(0.5), math.sqrt(0.5)),
}


def _window(rng: np.random.Generator, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear progress 0→1 over a random sub-interval of the clip (its length a fraction in [lo, hi]);
    static before and after, so the same motion starts and ends at different times in each video."""
    duration = rng.uniform(lo, hi)
    start = rng.uniform(0, 1 - duration)
    return np.clip((t - start) / duration, 0.0, 1.0)


def _place(rng: np.random.Generator, rel: Sequence[Sequence[float]], margin: float) -> np.ndarray:
    """Shift waypoints ``rel`` (K, 2) to a random spot where all stay ``margin`` inside the frame;
    a path too big for the frame is shrunk first."""
    pts = np.asarray(rel, dtype=np.float64)
    span = 1 - 2 * margin
    extent = pts.max(axis=0) - pts.min(axis=0)
    if (extent > span).any():
        pts = pts * (span / extent.max())
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    low = margin - lo
    start = rng.uniform(low, np.maximum(1 - margin - hi, low))
    return pts + start


def _along(points: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position at fraction ``e`` (T,) of the arc length of polyline ``points`` (K, 2): constant speed."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-12)
    return np.interp(e, cum, points[:, 0]), np.interp(e, cum, points[:, 1])


def _dir(name: str) -> np.ndarray:
    return np.asarray(DIRECTIONS[name])


# ---------------------------------------------------------------- motions (forward members)
# Each motion draws its own parameters from rng and returns the tracks to draw, in depth order, for
# clip times t (T,) in [0, 1]; rs holds the scene's base radius per object.
Motion = Callable[[np.random.Generator, np.ndarray, Sequence[float]], list[_Track]]


def _translate(rng, t, rs, *, d, lo=0.55, hi=0.95, ease=1.0, extent=(0.35, 0.7)):
    u = _window(rng, t, lo, hi) ** ease
    pts = _place(rng, [[0, 0], _dir(d) * rng.uniform(*extent)], rs[0] + 0.02)
    x, y = _along(pts, u)
    return [_Track(0, x, y, rs[0])]


def _move_stop(rng, t, rs, *, d):
    u = _window(rng, t, 0.85, 1.0)
    moving = rng.uniform(0.25, 0.45)  # share of the clip spent moving; the rest is rest
    pts = _place(rng, [[0, 0], _dir(d) * rng.uniform(0.35, 0.65)], rs[0] + 0.02)
    x, y = _along(pts, np.clip(u / moving, 0, 1))
    return [_Track(0, x, y, rs[0])]


def _approach(rng, t, rs, *, side):
    u = _window(rng, t, 0.6, 0.95)
    gain = rng.uniform(2.2, 3.0)
    r0 = min(rs[0] * 0.7, 0.25 / gain)
    # Perspective: a constant approach speed makes the apparent size grow like 1 / distance.
    r = r0 / (1 - (1 - 1 / gain) * u)
    y0 = rng.uniform(0.4, 0.55)
    y = y0 + 0.08 * u
    # From the side: drifts towards the middle while it approaches.
    x = 0.5 + side * rng.uniform(0.22, 0.3) * (1 - u) if side else np.full_like(u, rng.uniform(0.4, 0.6))
    return [_Track(0, x, y, r, bright=-0.45 + 0.65 * u)]


def _scale(rng, t, rs, *, kind):
    u = _window(rng, t, 0.55, 0.95)
    r, sx, sy = rs[0], 1.0, 1.0
    if kind == "grow":
        gain = rng.uniform(1.8, 2.4)
        r0 = min(rs[0] * 0.75, 0.27 / gain)
        r = r0 * (1 + (gain - 1) * u)
        big = r0 * gain
    elif kind == "point":
        r = rs[0] * 1.3 * u
        big = rs[0] * 1.3
    else:
        gain = rng.uniform(2.0, 2.8)
        r = min(rs[0] * 0.85, 0.3 / gain)
        stretch = 1 + (gain - 1) * u
        sx, sy = (stretch, 1.0) if kind == "x" else (1.0, stretch)
        big = r * gain
    x, y = _place(rng, [[0, 0]], min(big * 1.25 + 0.02, 0.49))[0]
    return [_Track(0, x, y, r, sx=sx, sy=sy)]


def _fade(rng, t, rs):
    u = _window(rng, t, 0.45, 0.9)
    x, y = _place(rng, [[0, 0]], 0.2)[0]
    return [_Track(0, x, y, rs[0], alpha=u)]


def _enter(rng, t, rs, *, d):
    # "Entering from the left" moves rightwards, starting wholly outside the frame.
    u = _window(rng, t, 0.5, 0.9)
    d = _dir(d)
    r = rs[0]
    lateral = rng.uniform(0.25, 0.75)
    depth = rng.uniform(0.3, 0.6)  # how far into the frame it ends
    start_along, end_along = -r * 1.4, depth
    # Along-axis coordinate measured from the entering edge.
    along = start_along + (end_along - start_along) * u
    if d[0] > 0:
        x, y = along, np.full_like(u, lateral)
    elif d[0] < 0:
        x, y = 1 - along, np.full_like(u, lateral)
    elif d[1] > 0:
        x, y = np.full_like(u, lateral), along
    else:
        x, y = np.full_like(u, lateral), 1 - along
    return [_Track(0, x, y, r)]


def _rotate(rng, t, rs):
    u = _window(rng, t, 0.6, 1.0)
    x, y = _place(rng, [[0, 0]], rs[0] * 1.25 + 0.02)[0]
    return [_Track(0, x, y, rs[0], angle=rng.uniform(0.55, 0.95) * math.pi * u)]


def _roll(rng, t, rs, *, against):
    u = _window(rng, t, 0.6, 0.95)
    r = rs[0]
    pts = _place(rng, [[0, 0], [rng.uniform(0.4, 0.7), 0]], r * 1.25 + 0.02)
    x, y = _along(pts, u)
    travelled = x - x[0]
    # Rolling without slipping turns clockwise by distance / radius when moving right; the "against"
    # class spins the other way, faster.
    angle = -travelled / r * rng.uniform(1.2, 1.8) if against else travelled / r
    return [_Track(0, x, y, r, angle=angle)]


def _fall_over(rng, t, rs, *, side):
    u = _window(rng, t, 0.45, 0.8)
    a = rs[0]  # half-length; the object pivots about its bottom end
    # The pivot leaves room for the lying object on the falling side and the upright one above.
    px = rng.uniform(0.08, 0.96 - 2 * a) if side > 0 else rng.uniform(0.04 + 2 * a, 0.92)
    py = rng.uniform(max(0.55, 2 * a + 0.04), 0.9)
    # Upright is -pi/2 (pointing up); falling right turns clockwise towards 0, accelerating like a
    # toppling body.
    phi = -math.pi / 2 + side * (math.pi / 2) * u ** 2
    x = px + a * np.cos(phi)
    y = py + a * np.sin(phi)
    return [_Track(0, x, y, a, angle=phi)]


def _bounce(rng, t, rs):
    u = _window(rng, t, 0.8, 1.0)
    r = rs[0]
    floor = rng.uniform(0.8, 0.92) - r
    height = rng.uniform(0.55, 0.8) * (floor - r - 0.03)
    e = rng.uniform(0.5, 0.65)
    # Ballistic phases with g = 2 (so falling h takes sqrt(h)): the drop, then bounces of height h e^2k.
    peaks = height * e ** (2 * np.arange(1, 5))
    durations = np.concatenate([[math.sqrt(height)], 2 * np.sqrt(peaks)])
    ends = np.cumsum(durations)
    p = u * ends[-1]
    k = np.minimum(np.searchsorted(ends, p, side="right"), len(ends) - 1)
    start = ends[k] - durations[k]
    local = p - start
    drop = height - local ** 2  # first phase: falling from rest at the top
    apex = np.concatenate([[0.0], np.sqrt(peaks)])[k]
    hop = np.concatenate([[height], peaks])[k] - (local - apex) ** 2
    above = np.where(k == 0, drop, hop)
    above = np.where(u >= 1, 0.0, np.maximum(above, 0.0))
    x0 = rng.uniform(0.3, 0.7)
    x = x0 + rng.uniform(-0.12, 0.12) * u
    return [_Track(0, x, floor - above, r)]


def _pendulum(rng, t, rs):
    u = _window(rng, t, 0.85, 1.0)
    bob = rs[1]
    pivot_x, pivot_y = rng.uniform(0.4, 0.6), rng.uniform(0.06, 0.18)
    length = rng.uniform(0.45, 0.62)
    length = min(length, 0.95 - bob - pivot_y)
    amp = rng.uniform(0.55, 0.8)
    cycles = rng.uniform(2.0, 3.0)
    decay = math.log(rng.uniform(6, 12))  # amplitude falls by this factor over the swing
    phi = amp * np.exp(-decay * u) * np.cos(TAU * cycles * u)
    bx, by = pivot_x + length * np.sin(phi), pivot_y + length * np.cos(phi)
    half = length / 2
    rod = _Track(0, pivot_x + half * np.sin(phi), pivot_y + half * np.cos(phi), half,
                 angle=math.pi / 2 - phi, sy=0.012 / half)
    return [rod, _Track(1, bx, by, bob)]


def _arc(rng, t, rs, *, over):
    u = _window(rng, t, 0.6, 0.95)
    r = rs[0]
    sign = -1.0 if over else 1.0
    # Start point and the corner diagonal to it bound the arc (it starts and ends on one level).
    (x0, y0), (x1, y1) = _place(rng, [[0, 0], [rng.uniform(0.5, 0.8), sign * rng.uniform(0.25, 0.45)]], r + 0.02)
    x = x0 + (x1 - x0) * u
    y = y0 + (y1 - y0) * 4 * u * (1 - u)
    return [_Track(0, x, y, r)]


def _circle(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    radius = rng.uniform(0.18, 0.3)
    cx, cy = _place(rng, [[0, 0]], radius + r + 0.02)[0]
    theta = rng.uniform(0, TAU) + rng.uniform(1.4, 2.0) * math.pi * u  # clockwise on screen
    return [_Track(0, cx + radius * np.cos(theta), cy + radius * np.sin(theta), r)]


def _zigzag(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    teeth = int(rng.integers(2, 4))
    amp = rng.uniform(0.08, 0.14)
    k = np.arange(2 * teeth + 1)
    waypoints = np.stack([k / (2 * teeth) * rng.uniform(0.5, 0.8), np.where(k % 2, amp, -amp)], axis=1)
    x, y = _along(_place(rng, waypoints, r + 0.02), u)
    return [_Track(0, x, y, r)]


def _wave(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    cycles = rng.uniform(1.5, 2.5)
    (xa, y0), (xb, y1) = _place(rng, [[0, 0], [2 * rng.uniform(0.07, 0.13), rng.uniform(0.5, 0.8)]], r + 0.02)
    return [_Track(0, (xa + xb) / 2 + (xb - xa) / 2 * np.sin(TAU * cycles * u), y0 + (y1 - y0) * u, r)]


def _spiral(rng, t, rs, *, clockwise):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    radius = rng.uniform(0.22, 0.32)
    cx, cy = _place(rng, [[0, 0]], radius + r + 0.02)[0]
    turn = (1 if clockwise else -1) * rng.uniform(1.25, 2.0) * TAU
    theta = rng.uniform(0, TAU) + turn * u
    rho = radius * (1 - 0.85 * u)
    return [_Track(0, cx + rho * np.cos(theta), cy + rho * np.sin(theta), r)]


def _turn(rng, t, rs, *, first, second):
    u = _window(rng, t, 0.65, 1.0)
    r = rs[0]
    a, b = _dir(first) * rng.uniform(0.3, 0.5), _dir(second) * rng.uniform(0.3, 0.5)
    x, y = _along(_place(rng, [[0, 0], a, a + b], r + 0.02), u)
    return [_Track(0, x, y, r)]


def _steps(rng, t, rs, *, d):
    u = _window(rng, t, 0.85, 1.0)
    r = rs[0]
    steps = 3
    i = np.minimum(np.floor(u * steps), steps - 1)
    frac = np.clip(2 * (u * steps - i) - 1, 0, 1)  # rest for the first half of each step, then move
    e = (i + frac * frac * (3 - 2 * frac)) / steps
    x, y = _along(_place(rng, [[0, 0], _dir(d) * rng.uniform(0.45, 0.7)], r + 0.02), e)
    return [_Track(0, x, y, r)]


def _half_back(rng, t, rs, *, d):
    u = _window(rng, t, 0.65, 1.0)
    r = rs[0]
    far = _dir(d) * rng.uniform(0.4, 0.65)
    x, y = _along(_place(rng, [[0, 0], far, far / 2], r + 0.02), u)
    return [_Track(0, x, y, r)]


def _grow_move(rng, t, rs):
    u = _window(rng, t, 0.6, 0.95)
    r0 = rs[0] * 0.7
    gain = rng.uniform(1.8, 2.3)
    x, y = _along(_place(rng, [[0, 0], [rng.uniform(0.35, 0.55), 0]], r0 * gain * 1.2 + 0.02), u)
    return [_Track(0, x, y, r0 * (1 + (gain - 1) * u))]


# ---- two objects: object 0 ("A") is the mover, object 1 ("B") the other one
def _line_up(rng, d, fixed: float, runs: Sequence[float], margin: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Place a straight path along ``d`` made of ``fixed`` (contact distances, kept) plus ``runs``
    (travel, shortened together when the path would not fit); returns (start point, unit d, runs)."""
    d = _dir(d)
    room = 1 - 2 * margin - fixed
    factor = min(1.0, room / max(sum(runs), 1e-9))
    runs = [x * factor for x in runs]
    pts = _place(rng, [[0, 0], d * (fixed + sum(runs))], margin)
    return pts[0], d, runs


def _knock(rng, t, rs, *, d, together):
    u = _window(rng, t, 0.75, 1.0)
    ra, rb = rs
    gap = (ra + rb) * 0.95
    start, d, (run_a, run_b) = _line_up(rng, d, gap, [rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3)],
                                        max(ra, rb) + 0.02)
    split = run_a / (run_a + run_b)  # equal speeds before and after the contact
    first = np.clip(u / split, 0, 1)
    second = np.clip((u - split) / (1 - split), 0, 1)
    a_pos = start + d * (run_a * first + (run_b * second if together else 0.0))[:, None]
    b_pos = start + d * (run_a + gap + run_b * second)[:, None]
    return [_Track(1, b_pos[:, 0], b_pos[:, 1], rb), _Track(0, a_pos[:, 0], a_pos[:, 1], ra)]


def _collide(rng, t, rs, *, d, stick):
    u = _window(rng, t, 0.6, 0.95) if stick else _window(rng, t, 0.8, 1.0)
    ra, rb = rs
    approach = rng.uniform(0.12, 0.25)
    meet = rng.uniform(0.45, 0.65) if not stick else 1.0
    rebound = 0.0 if stick else approach * rng.uniform(0.3, 0.45) * (1 - meet) / meet  # slower than before
    gap = (ra + rb) * 0.95
    start, d, (approach, rebound) = _line_up(rng, d, gap, [2 * approach, 2 * rebound], max(ra, rb) + 0.02)
    approach, rebound = approach / 2, rebound / 2
    reach = approach + gap / 2
    centre = start + d * (reach + rebound)
    before = np.clip(u / meet, 0, 1)
    after = np.clip((u - meet) / max(1 - meet, 1e-9), 0, 1)
    offset = reach - approach * before + rebound * after  # distance of each centre from the contact point
    a_pos = centre - d * offset[:, None]
    b_pos = centre + d * offset[:, None]
    return [_Track(0, a_pos[:, 0], a_pos[:, 1], ra), _Track(1, b_pos[:, 0], b_pos[:, 1], rb)]


def _pass(rng, t, rs, *, behind):
    u = _window(rng, t, 0.6, 0.95)
    ra = rs[0]
    rb = max(rs[1], ra * 1.5) if behind else rs[1]
    (x0, by), (x1, _) = _place(rng, [[0, 0], [rng.uniform(0.5, 0.75), 0]], max(ra, rb) + 0.02)
    bx, length = (x0 + x1) / 2, x1 - x0
    ay = by + rng.uniform(-0.3, 0.3) * rb
    a = _Track(0, bx - length / 2 + length * u, np.full_like(u, ay), ra)
    b = _Track(1, bx, by, rb)
    return [a, b] if behind else [b, a]


def _towards(rng, t, rs, *, d):
    u = _window(rng, t, 0.5, 0.85)
    ra, rb = rs
    gap = ra + rb + rng.uniform(0.01, 0.04)
    start, d, (run,) = _line_up(rng, d, gap, [rng.uniform(0.25, 0.45)], max(ra, rb) + 0.02)
    a_pos = start + d * (run * u)[:, None]
    b = start + d * (run + gap)
    return [_Track(1, b[0], b[1], rb), _Track(0, a_pos[:, 0], a_pos[:, 1], ra)]


def _catch_up(rng, t, rs):
    u = _window(rng, t, 0.65, 1.0)
    ra, rb = rs
    touch = (ra + rb) * 0.95
    start, _, (extra, run_b) = _line_up(rng, "right", ra + rb, [rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3)],
                                        max(ra, rb) + 0.02)
    lead = ra + rb + extra
    a_x = start[0] + (lead + run_b - touch) * u
    b_x = start[0] + lead + run_b * u
    y = start[1]
    return [_Track(1, b_x, y, rb), _Track(0, a_x, y + rng.uniform(-0.2, 0.2) * rb, ra)]


def _put_on(rng, t, rs):
    u = _window(rng, t, 0.5, 0.85)
    ra, rb = rs
    bx, by = rng.uniform(0.3, 0.7), rng.uniform(0.68, 0.85)
    end = np.array([bx, by - (ra + rb) * 0.92])
    start = np.array([bx + rng.uniform(-0.25, 0.25), rng.uniform(ra + 0.03, max(ra + 0.04, end[1] - 0.3))])
    e = 1 - (1 - u) ** 2  # slows down to set it gently
    pos = start + (end - start) * e[:, None]
    return [_Track(1, bx, by, rb), _Track(0, pos[:, 0], pos[:, 1], ra)]


def _cover(rng, t, rs, *, d):
    u = _window(rng, t, 0.5, 0.85)
    ra, rb = rs
    rb = min(rb, ra / 1.7)
    start, d, (run,) = _line_up(rng, d, ra + rb, [rng.uniform(0.06, 0.15)], ra + 0.02)
    run += ra + rb
    a_pos = start + d * (run * u)[:, None]
    b = start + d * run
    return [_Track(1, b[0], b[1], rb), _Track(0, a_pos[:, 0], a_pos[:, 1], ra)]


def _orbit(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    ra, rb = rs
    radius = ra + rb + rng.uniform(0.06, 0.14)
    cx, cy = _place(rng, [[0, 0]], radius + ra + 0.02)[0]
    theta = rng.uniform(0, TAU) + rng.uniform(1.4, 2.0) * math.pi * u
    return [_Track(1, cx, cy, rb), _Track(0, cx + radius * np.cos(theta), cy + radius * np.sin(theta), ra)]


# ---------------------------------------------------------------- the class library
@dataclass(frozen=True)
class MotionClass:
    """One class of the library. ``id`` is stable: ``2k`` forward, ``2k + 1`` its time-reversed partner."""

    id: int  # library class id
    name: str  # readable name, unique ("moving left to right")
    family: str  # motion family ("translate", "interaction", ...)
    motion: str  # key of the forward motion this class renders (shared by both partners)
    reversed: bool  # True: the forward motion played backwards
    partner: int  # id of the time-reversed partner
    objects: int  # objects in the scene

    @property
    def slug(self) -> str:
        """File-system name: lower case, words joined by underscores."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


# (family, motion key, forward name, reversed name, motion function, object pools)
_BASES: list[tuple[str, str, str, str, Motion, tuple[str, ...]]] = []


def _base(family: str, key: str, forward: str, backward: str, fn: Motion, pools: tuple[str, ...] = ("any",)) -> None:
    _BASES.append((family, key, forward, backward, fn, pools))


for _d, _f, _b in [("right", "moving left to right", "moving right to left"),
                   ("down", "moving top to bottom", "moving bottom to top"),
                   ("down_right", "moving diagonally down and right", "moving diagonally up and left"),
                   ("down_left", "moving diagonally down and left", "moving diagonally up and right")]:
    _base("translate", f"translate_{_d}", _f, _b, partial(_translate, d=_d))
for _d, _o in [("right", "left"), ("left", "right"), ("down", "up"), ("up", "down")]:
    _base("accelerate", f"accelerate_{_d}", f"speeding up {_d}wards", f"slowing down {_o}wards to a stop",
          partial(_translate, d=_d, lo=0.7, hi=1.0, ease=2.2, extent=(0.45, 0.75)))
for _d, _o in [("right", "left"), ("left", "right"), ("down", "up"), ("up", "down")]:
    _base("move_stop", f"move_stop_{_d}", f"moving {_d}, then stopping", f"resting, then moving {_o}",
          partial(_move_stop, d=_d))
_base("approach", "approach", "approaching the camera", "moving away from the camera", partial(_approach, side=0))
_base("approach", "approach_left", "approaching the camera from the left", "moving away from the camera to the left",
      partial(_approach, side=-1))
_base("approach", "approach_right", "approaching the camera from the right",
      "moving away from the camera to the right", partial(_approach, side=1))
_base("scale", "grow", "growing", "shrinking", partial(_scale, kind="grow"))
_base("scale", "stretch_x", "stretching horizontally", "contracting horizontally", partial(_scale, kind="x"), ("axis",))
_base("scale", "stretch_y", "stretching vertically", "contracting vertically", partial(_scale, kind="y"), ("axis",))
_base("scale", "grow_point", "growing from a point", "shrinking to a point", partial(_scale, kind="point"))
_base("appear", "fade", "fading in", "fading out", _fade)
for _d, _side in [("right", "left"), ("left", "right"), ("down", "top"), ("up", "bottom")]:
    _base("appear", f"enter_{_side}", f"entering the frame from the {_side}", f"leaving the frame to the {_side}",
          partial(_enter, d=_d))
_base("rotate", "rotate", "rotating clockwise", "rotating counter-clockwise", _rotate, ("elongated",))
_base("rotate", "roll", "rolling to the right", "rolling to the left", partial(_roll, against=False), ("nonround",))
_base("rotate", "spin_against", "spinning counter-clockwise while moving right",
      "spinning clockwise while moving left", partial(_roll, against=True), ("nonround",))
_base("rotate", "fall_right", "falling over to the right", "standing up from lying on the right",
      partial(_fall_over, side=1), ("upright",))
_base("rotate", "fall_left", "falling over to the left", "standing up from lying on the left",
      partial(_fall_over, side=-1), ("upright",))
_base("physics", "bounce", "dropping and bouncing to rest", "bouncing higher and higher, then flying up", _bounce)
_base("physics", "pendulum", "swinging to a stop", "swinging higher and higher", _pendulum, ("rod", "any"))
_base("path", "arc_over", "moving in an arc over the top from left to right",
      "moving in an arc over the top from right to left", partial(_arc, over=True))
_base("path", "arc_under", "swooping down and up from left to right", "swooping down and up from right to left",
      partial(_arc, over=False))
_base("path", "circle", "circling clockwise", "circling counter-clockwise", _circle)
_base("path", "zigzag", "zigzagging from left to right", "zigzagging from right to left", _zigzag)
_base("path", "wave", "wavering from top to bottom", "wavering from bottom to top", _wave)
_base("path", "spiral_cw", "spiralling inwards clockwise", "spiralling outwards counter-clockwise",
      partial(_spiral, clockwise=True))
_base("path", "spiral_ccw", "spiralling inwards counter-clockwise", "spiralling outwards clockwise",
      partial(_spiral, clockwise=False))
# Reversing "d1 then d2" gives "opposite of d2, then opposite of d1": the eight corner paths form four pairs.
_OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
for _a, _b2 in [("right", "down"), ("right", "up"), ("down", "right"), ("up", "right")]:
    _base("path", f"turn_{_a}_{_b2}", f"moving {_a}, then turning {_b2}",
          f"moving {_OPPOSITE[_b2]}, then turning {_OPPOSITE[_a]}", partial(_turn, first=_a, second=_b2))
_base("path", "steps_right", "moving right in steps", "moving left in steps", partial(_steps, d="right"))
_base("path", "steps_down", "moving down in steps", "moving up in steps", partial(_steps, d="down"))
_base("path", "half_back_right", "moving right and coming halfway back", "moving a little right, then far left",
      partial(_half_back, d="right"))
_base("path", "half_back_down", "moving down and coming halfway back", "moving a little down, then far up",
      partial(_half_back, d="down"))
_TWO = ("any", "any")
for _d, _o in [("right", "left"), ("down", "up")]:
    _base("interaction", f"knock_{_d}", f"knocking an object {_d}wards", f"knocking an object {_o}wards",
          partial(_knock, d=_d, together=False), _TWO)
for _d, _o in [("right", "left"), ("down", "up")]:
    _base("interaction", f"push_{_d}", f"pushing an object {_d}wards", f"moving {_o}wards together, then separating",
          partial(_knock, d=_d, together=True), _TWO)
for _d, _axis in [("right", "horizontally"), ("down", "vertically")]:
    _base("interaction", f"collide_{_axis}", f"colliding {_axis} and bouncing apart",
          f"approaching {_axis} and springing apart", partial(_collide, d=_d, stick=False), _TWO)
    _base("interaction", f"meet_{_axis}", f"two objects meeting {_axis}", f"two touching objects moving apart {_axis}",
          partial(_collide, d=_d, stick=True), _TWO)
_base("interaction", "pass_front", "passing in front of an object rightwards",
      "passing in front of an object leftwards", partial(_pass, behind=False), _TWO)
_base("interaction", "pass_behind", "passing behind an object rightwards", "passing behind an object leftwards",
      partial(_pass, behind=True), _TWO)
for _d, _o in [("right", "left"), ("left", "right")]:
    _base("interaction", f"towards_{_d}", f"moving {_d}wards up to another object",
          f"moving {_o}wards away from another object", partial(_towards, d=_d), _TWO)
_base("interaction", "catch_up", "catching up with an object, rightwards", "pulling ahead of an object, leftwards",
      _catch_up, _TWO)
_base("interaction", "put_on", "putting an object on top of another", "lifting an object off another", _put_on, _TWO)
_base("interaction", "cover_left", "covering an object from the left", "uncovering an object to the left",
      partial(_cover, d="right"), ("blocky", "any"))
_base("interaction", "cover_top", "covering an object from above", "uncovering an object upwards",
      partial(_cover, d="down"), ("blocky", "any"))
_base("interaction", "orbit", "circling around an object clockwise", "circling around an object counter-clockwise",
      _orbit, _TWO)
_base("combined", "grow_move", "growing while moving right", "shrinking while moving left", _grow_move)

_MOTIONS: dict[str, tuple[Motion, tuple[str, ...]]] = {key: (fn, pools) for _, key, _, _, fn, pools in _BASES}


def _build_library() -> tuple[MotionClass, ...]:
    out = []
    for k, (family, key, forward, backward, _, pools) in enumerate(_BASES):
        out.append(MotionClass(2 * k, forward, family, key, False, 2 * k + 1, len(pools)))
        out.append(MotionClass(2 * k + 1, backward, family, key, True, 2 * k, len(pools)))
    names = [c.name for c in out]
    slugs = [c.slug for c in out]
    assert len(set(names)) == len(names) and len(set(slugs)) == len(slugs), "class names must be unique"
    return tuple(out)


_LIBRARY = _build_library()


def motion_classes() -> list[MotionClass]:
    """The whole class library (128 classes, 64 time-reverse pairs), in id order."""
    return list(_LIBRARY)


# ---------------------------------------------------------------- rendering one clip
def clip_length(rng: np.random.Generator, frames: int) -> int:
    """The clip length a video draws first from its generator: uniform in [ceil(0.75·frames), frames]."""
    return int(rng.integers(max(2, math.ceil(0.75 * frames)), frames + 1))


def render_clip(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int) -> np.ndarray:
    """Render one video of ``motion_class``: (T, size, size, 3) uint8 RGB, T in [ceil(0.75·frames), frames].

    Draw order from ``rng``: clip length, scene (background, shapes, colours, sizes), then the motion's
    own parameters. A reversed class renders its forward motion with the same draws and reverses the
    frame order, so ``render_clip(reverse, rng_a) == render_clip(forward, rng_b)[::-1]`` for generators
    in the same state.
    """
    t_len = clip_length(rng, frames)
    fn, pools = _MOTIONS[motion_class.motion]
    background, objects = _scene(rng, size, pools)
    t = np.linspace(0.0, 1.0, t_len)
    tracks = fn(rng, t, [o.radius for o in objects])
    video = _compose(background, objects, tracks, t_len)
    return np.ascontiguousarray(video[::-1]) if motion_class.reversed else video


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


# ---------------------------------------------------------------- class choice and splits
def select_classes(config: SynthConfig) -> dict[str, list[MotionClass]]:
    """The classes of each split (train/val/test), sorted by id; see the module docstring for the rule."""
    counts = dict(zip(SPLITS, config.split_counts(), strict=True))
    rng = np.random.default_rng([config.seed, 0x5EED])  # its own stream: no video draws from it
    pairs = [(_LIBRARY[2 * k], _LIBRARY[2 * k + 1]) for k in rng.permutation(len(_LIBRARY) // 2)]
    chosen: dict[str, list[MotionClass]] = {s: [] for s in SPLITS}
    cursor = 0
    for split in SPLITS:
        for pair in pairs[cursor:cursor + counts[split] // 2]:
            chosen[split].extend(pair)
        cursor += counts[split] // 2
    odd = [s for s in SPLITS if counts[s] % 2]
    spare = len(pairs) - cursor
    broken = max(0, len(odd) - spare)  # only when the library is nearly used up: a pair serves two splits
    for i in range(broken):
        fwd, rev = pairs[cursor]
        chosen[odd[2 * i]].append(fwd)
        chosen[odd[2 * i + 1]].append(rev)
        cursor += 1
    for split in odd[2 * broken:]:
        chosen[split].append(pairs[cursor][int(rng.integers(2))])
        cursor += 1
    return {s: sorted(cs, key=lambda c: c.id) for s, cs in chosen.items()}


# ---------------------------------------------------------------- dataset generation
def video_id(class_id: int, index: int, videos_per_class: int) -> str:
    """``c017_v003``: library class id and video index, zero-padded."""
    width = max(3, len(str(videos_per_class - 1)))
    return f"c{class_id:03d}_v{index:0{width}d}"


def _render_job(job: tuple[MotionClass, list[tuple[int, str]], int, int, int, int, int, str]) -> int:
    """Worker: render and write the listed videos of one class; returns how many were written."""
    motion_class, todo, seed, frames, size, fps, crf, preset = job
    for index, path in todo:
        if _complete(Path(path)):  # another run may have finished it meanwhile
            continue
        try:
            video = render_clip(motion_class, video_rng(seed, motion_class.id, index), frames=frames, size=size)
            write_mp4(path, video, fps, crf=crf, preset=preset)
        except Exception as exc:
            raise RuntimeError(f"synthetic video {path} (class {motion_class.id} {motion_class.name!r}, "
                               f"index {index}): {exc}") from exc
    return len(todo)


def _complete(path: Path) -> bool:
    # Videos are renamed into place only once fully written, so any non-empty file is a finished one.
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    path = out / "synth.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != stamp:
            diff = sorted(k for k in stamp.keys() | (old or {}).keys() if (old or {}).get(k) != stamp.get(k))
            raise SynthError(f"{out} holds a synthetic dataset made with other settings (differ: {', '.join(diff)}; "
                             f"see {path}); write to a new --out folder or delete {out}")
        return
    atomic_write_text(path, json.dumps(stamp, indent=2) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return  # a rerun leaves finished outputs untouched
    atomic_write_text(path, text)


def generate(config: SynthConfig, *, progress: bool = True) -> Path:
    """Write the dataset under ``config.out`` and return the manifest path.

    Resumable: finished videos are kept (never re-encoded), missing ones are written, and the manifest
    comes last. Refuses (SynthError) a folder made with different settings. Parallel over classes in
    ``config.workers`` spawned processes; the files do not depend on the worker count. Spawned workers
    re-import the calling script, so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard (the ``fsar`` command and pytest have it).
    """
    from tqdm.auto import tqdm

    from fsar.data.manifest import assign_labels, manifest_table, write_manifest

    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_stamp(out, config.stamp())
    by_split = select_classes(config)
    labels = assign_labels({s: [c.name for c in cs] for s, cs in by_split.items()})
    split_of = {c.id: s for s, cs in by_split.items() for c in cs}

    records: list[dict[str, Any]] = []
    jobs = []
    for split, classes in by_split.items():
        for mc in classes:
            todo = []
            for index in range(config.videos_per_class):
                vid = video_id(mc.id, index, config.videos_per_class)
                rel = f"videos/{split}/{mc.slug}/{vid}.mp4"
                records.append({"video_id": vid, "path": rel, "label": labels[mc.name], "class_name": mc.name,
                                "split": split, "num_frames": clip_length(video_rng(config.seed, mc.id, index),
                                                                         config.frames)})
                if not _complete(out / rel):
                    todo.append((index, str(out / rel)))
            if todo:
                jobs.append((mc, todo, config.seed, config.frames, config.size, config.fps, config.crf, config.preset))

    total = len(records)
    pending = sum(len(j[1]) for j in jobs)
    with tqdm(total=total, initial=total - pending, unit="video", desc="synth", disable=not progress) as bar:
        if config.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(_render_job(job))
        else:
            # spawn: no inherited locks or threads from a parent that may run Ray or torch.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(config.workers, len(jobs))) as pool:
                for done in pool.imap_unordered(_render_job, jobs):
                    bar.update(done)

    class_rows = []
    for mc in sorted((c for cs in by_split.values() for c in cs), key=lambda c: labels[c.name]):
        partner = _LIBRARY[mc.partner]
        class_rows.append({"label": labels[mc.name], "id": mc.id, "name": mc.name, "slug": mc.slug,
                           "family": mc.family, "motion": mc.motion, "reversed": mc.reversed,
                           "partner": mc.partner, "partner_name": partner.name,
                           "partner_split": split_of.get(mc.partner), "split": split_of[mc.id]})
    _write_if_changed(out / "classes.json", json.dumps(class_rows, indent=1) + "\n")

    manifest = out / "manifest.parquet"
    table = manifest_table(records)
    if manifest.is_file():
        import pyarrow.parquet as pq

        try:
            if pq.read_table(manifest).equals(table):
                return manifest
        except Exception:  # noqa: BLE001 — an unreadable old manifest is simply rewritten
            pass
    write_manifest(table, manifest)
    return manifest
