"""Drawing synthetic scenes: shapes as signed distance fields, per-video backgrounds and colours, and
compositing object tracks over a background into frames (and, on request, into instance masks)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TAU = 2.0 * math.pi

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


def _colours(rng: np.random.Generator, background: np.ndarray, count: int,
             avoid: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
    """Object colours far from the background's mean colour, from each other and from ``avoid`` (the
    actors' colours, when drawing distractors: a distractor should not pass for an actor)."""
    bg = background.reshape(-1, 3).mean(axis=0)
    chosen: list[np.ndarray] = []
    for _ in range(count):
        best, best_score = None, -1.0
        for _ in range(24):  # a bounded number of draws keeps the stream of random numbers deterministic
            c = rng.uniform(0, 255, size=3)
            score = min([np.linalg.norm(c - bg) / 130.0]
                        + [np.linalg.norm(c - o) / 80.0 for o in [*chosen, *avoid]])
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


def _compose(background: np.ndarray, objects: Sequence[_Object], tracks: Sequence[_Track], frames: int, *,
             instances: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw ``tracks`` (in list order: later ones on top) over ``background``.

    Returns the video (T, H, W, 3) uint8 and, when ``instances`` gives each track's instance id (1, 2, ...
    for actors, 0 for a track that is not part of any instance), the instance masks (T, H, W) uint8.
    A mask pixel holds the instance whose layers make up most of its colour, provided the instances
    together make up at least half of it, else 0. The share is tracked through the same blending as
    the colours (a layer of coverage c keeps 1 − c of what lies under it), so anti-aliased rims, fading,
    sub-pixel fading and occlusion by a later layer (a distractor in front) are all accounted for:
    the mask is what was drawn, not where the object would be.
    """
    size = background.shape[0]
    per_track = []
    for tr in tracks:
        fields = {f: np.broadcast_to(np.asarray(getattr(tr, f), dtype=np.float64), (frames,)).tolist()
                  for f in ("x", "y", "r", "angle", "sx", "sy", "alpha", "bright")}
        per_track.append((objects[tr.obj], fields))
    if instances is not None and len(instances) != len(tracks):
        raise ValueError(f"_compose: {len(instances)} instance ids for {len(tracks)} tracks")
    n_instances = max(instances, default=0) if instances is not None else 0
    masks = None if instances is None else np.zeros((frames, size, size), dtype=np.uint8)
    # Start every frame as the rounded background and blend objects into their bounding boxes only:
    # whole-frame float work per frame would cost more than all the objects together.
    video = np.repeat(np.clip(background + 0.5, 0, 255).astype(np.uint8)[None], frames, axis=0)
    pixel = np.arange(size, dtype=np.float32)
    for t in range(frames):
        # Per instance, the share of each pixel's colour its layers contribute (frame-sized: cheap next
        # to the colour work, and only when masks are asked for).
        share = np.zeros((n_instances, size, size), dtype=np.float32) if n_instances else None
        for k, (obj, f) in enumerate(per_track):
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
            if share is not None:
                under = share[:, y0:y1, x0:x1]
                under *= (1.0 - cover).astype(np.float32)
                if instances[k]:
                    under[instances[k] - 1] += cover
        if masks is not None and share is not None:
            masks[t] = np.where(share.sum(axis=0) >= 0.5, share.argmax(axis=0) + 1, 0)
    return video, masks
