"""What the synthetic families other than ``shapes`` share: layers of coverage composited over a background
(with instance masks), capsules as signed distance fields, and :func:`render_family`, the draw order and
variants around a family's scene, law and drawing.

A family module provides three functions and :func:`render_family` does the rest:

- ``scene(rng, size)``: the per-video appearance (background, colours, sizes, placement draws);
- ``law(key, rng, scene)``: draws the class's motion parameters (scalars only) and returns the motion as a
  function of the action's own clock ``tau`` (T,) in [0, 1]; it never draws again, so evaluating it on a
  retimed clock (``misalign``) or on a dense grid (to place the figure or path in the frame) draws nothing;
- ``draw(scene, law, tau, size)``: a :class:`Drawn`: the background and the actors' layers at clock ``tau``.

Draw order from the video's generator, as in ``shapes``: clip length, scene, motion parameters, the action's
timing (:func:`~fsar.data.synthetic.variants.action_timing`, two numbers at every ``misalign``), then the
``clutter`` distractors of :func:`~fsar.data.synthetic.variants.distractors` (the same law as in ``shapes``).
A reversed class renders its forward motion with the same draws and reverses frames and masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fsar.data.synthetic.library import MotionClass
from fsar.data.synthetic.render import Rendering, clip_length
from fsar.data.synthetic.scene import SHAPES, _Object, _signed_distance, _Track
from fsar.data.synthetic.variants import action_clock, action_timing, distractors


# ---------------------------------------------------------------- layers
class Layer:
    """One thing drawn over the frames: a colour and, per frame, a coverage in [0, 1] over a box."""

    colour: np.ndarray  # (3,) float32, 0..255
    instance: int  # mask instance id (1, 2, ...), 0: none

    def at(self, t: int) -> tuple[np.ndarray, int, int] | None:
        """Frame ``t``'s coverage (h, w) float32 and its box's top-left corner (y0, x0); None: nothing drawn."""
        raise NotImplementedError


@dataclass
class BoxLayer(Layer):
    """Coverage precomputed for the whole clip over one box: ``cover`` (T, h, w) at rows y0.., columns x0..."""

    cover: np.ndarray
    y0: int
    x0: int
    colour: np.ndarray
    instance: int = 0

    def at(self, t: int) -> tuple[np.ndarray, int, int] | None:
        return self.cover[t], self.y0, self.x0


@dataclass
class TrackLayer(Layer):
    """A shape of the ``shapes`` library following a :class:`~fsar.data.synthetic.scene._Track` (centre,
    half-extent, angle; stretch and opacity are not used here), drawn like ``scene._compose`` draws it."""

    obj: _Object
    track: _Track
    frames: int
    size: int
    instance: int = 0
    colour: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.colour = np.asarray(self.obj.colour, dtype=np.float32)
        self._f = {f: np.broadcast_to(np.asarray(getattr(self.track, f), dtype=np.float64), (self.frames,)).tolist()
                   for f in ("x", "y", "r", "angle")}
        self._pixel = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size

    def at(self, t: int) -> tuple[np.ndarray, int, int] | None:
        f, size = self._f, self.size
        a = max(f["r"][t], 1e-4)
        shape = SHAPES[self.obj.shape]
        cx, cy = f["x"][t] * size, f["y"][t] * size
        reach = shape.reach * a * size + 1.5
        x0, x1 = max(int(cx - reach), 0), min(int(math.ceil(cx + reach)), size)
        y0, y1 = max(int(cy - reach), 0), min(int(math.ceil(cy + reach)), size)
        if x0 >= x1 or y0 >= y1:
            return None
        theta = self.obj.angle + f["angle"][t]
        c, s = math.cos(theta), math.sin(theta)
        gx = (self._pixel[x0:x1] - f["x"][t])[None, :]
        gy = (self._pixel[y0:y1] - f["y"][t])[:, None]
        sd = _signed_distance(shape, c * gx + s * gy, c * gy - s * gx, a, a)
        alpha = min(1.0, a * size / 1.5)  # sub-pixel shapes fade instead of popping in
        return (np.clip(0.5 - sd * size, 0.0, 1.0) * alpha).astype(np.float32), y0, x0


def compose(background: np.ndarray, layers: Sequence[Layer], frames: int, *, masks: bool = False,
            ids: np.ndarray | None = None, shares: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Blend ``layers`` (back to front) over ``background`` ((H, W, 3) static or (T, H, W, 3) per frame) in
    float, rounding once at the end: the video (T, H, W, 3) uint8 and, with ``masks``, the instance masks
    (T, H, W) uint8 by the rule of ``scene._compose``: a pixel holds the instance whose layers make up most
    of its colour when the instances together make up at least half of it (occlusion by a later layer,
    a distractor in front, counts), else 0. ``ids`` (T, H, W) marks instances painted into the background
    itself, making up ``shares`` (T, H, W) of a pixel's colour (default: all of it), before any layer.
    A :class:`BoxLayer` is blended into all frames at once."""
    size = background.shape[-2]
    video = np.empty((frames, size, size, 3), dtype=np.float32)
    video[:] = background
    n_instances = max([layer.instance for layer in layers] + [int(ids.max()) if ids is not None else 0]) if masks else 0
    # Per instance, the share of each pixel's colour its layers make up (only when masks are asked for).
    share = np.zeros((n_instances, frames, size, size), dtype=np.float32) if n_instances else None
    if share is not None and ids is not None:
        for k in range(1, int(ids.max()) + 1):
            share[k - 1] = (ids == k) if shares is None else np.where(ids == k, shares, 0.0)
    for layer in layers:
        if isinstance(layer, BoxLayer):
            placed = [(slice(None), layer.cover, layer.y0, layer.x0)]  # every frame at once
        else:
            placed = [(t, *got) for t in range(frames) if (got := layer.at(t)) is not None]
        for t, cover, y0, x0 in placed:
            h, w = cover.shape[-2:]
            region = video[t, y0:y0 + h, x0:x0 + w]
            region += cover[..., None] * (layer.colour - region)
            if share is not None:
                under = share[:, t, y0:y0 + h, x0:x0 + w]
                under *= 1.0 - cover
                if layer.instance:
                    under[layer.instance - 1] += cover
    out_masks = None
    if masks:
        out_masks = np.zeros((frames, size, size), dtype=np.uint8)
        if share is not None:
            out_masks[:] = np.where(share.sum(axis=0) >= 0.5, share.argmax(axis=0) + 1, 0)
    return np.clip(video + 0.5, 0, 255).astype(np.uint8), out_masks


# ---------------------------------------------------------------- capsules
def capsule_distance(px: np.ndarray, py: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from pixel centres ``px`` (1, 1, w), ``py`` (1, h, 1) to the segments from ``a`` to ``b``
    ((T, 2) each, one segment per frame): (T, h, w). A capsule of radius r is ``distance − r``."""
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
    qx, qy = px - ax, py - ay
    h = np.clip((qx * dx + qy * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.hypot(qx - h * dx, qy - h * dy)


def _box(points: np.ndarray, reach: float, size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), clipped to the frame, holding ``points`` (N, 2) widened by ``reach``."""
    lo = np.floor((points.min(axis=0) - reach) * size).astype(int).clip(0, size)
    hi = np.ceil((points.max(axis=0) + reach) * size).astype(int).clip(0, size)
    return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])


def capsule_layers(groups: Sequence[tuple[Sequence[tuple[np.ndarray, np.ndarray, float]], np.ndarray]], size: int,
                   instance: int) -> list[Layer]:
    """One :class:`BoxLayer` per group of capsules ``(a (T, 2), b (T, 2), radius)`` (frame-side units) with
    the group's colour: the union of its capsules, anti-aliased 1 px wide, over the box that holds every
    capsule of the group in every frame (vectorised over the whole clip; each capsule is measured only
    over the box it sweeps)."""
    out: list[Layer] = []
    margin = 1.5 / size
    for caps, colour in groups:
        frames = len(caps[0][0])
        x0, y0, x1, y1 = _box(np.concatenate([np.concatenate([a, b]) for a, b, _ in caps]),
                              max(r for _, _, r in caps) + margin, size)
        if x0 >= x1 or y0 >= y1:
            continue
        sd = np.full((frames, y1 - y0, x1 - x0), np.inf, dtype=np.float32)
        for a, b, r in caps:
            cx0, cy0, cx1, cy1 = _box(np.concatenate([a, b]), r + margin, size)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            px = ((np.arange(cx0, cx1, dtype=np.float32) + 0.5) / size)[None, None, :]
            py = ((np.arange(cy0, cy1, dtype=np.float32) + 0.5) / size)[None, :, None]
            sub = sd[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            np.minimum(sub, capsule_distance(px, py, a.astype(np.float32), b.astype(np.float32)) - np.float32(r),
                       out=sub)
        sd *= -size
        sd += 0.5
        out.append(BoxLayer(np.clip(sd, 0.0, 1.0, out=sd), y0, x0, np.asarray(colour, dtype=np.float32), instance))
    return out


# ---------------------------------------------------------------- laws: timing helpers
def window(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, float]:
    """A random sub-interval of the action's clock, its length a fraction in [lo, hi]: (start, length)."""
    duration = float(rng.uniform(lo, hi))
    return float(rng.uniform(0, 1 - duration)), duration


def progress(tau: np.ndarray, start: float, duration: float) -> np.ndarray:
    """Linear progress 0 → 1 over ``[start, start + duration]``, resting before and after."""
    return np.clip((np.asarray(tau, dtype=np.float64) - start) / duration, 0.0, 1.0)


def smooth(u: np.ndarray) -> np.ndarray:
    """Smoothstep: eases in and out (zero speed at both ends), as joints and cameras start and stop."""
    return u * u * (3.0 - 2.0 * u)


def phase(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Progress 0 → 1 over the part ``[lo, hi]`` of a progress ``u``."""
    return np.clip((u - lo) / (hi - lo), 0.0, 1.0)


# ---------------------------------------------------------------- rendering
@dataclass
class Drawn:
    """What a family draws for one video: its background and the actors' layers, back to front."""

    background: np.ndarray  # (H, W, 3) or (T, H, W, 3) float32
    layers: list[Layer]
    colours: list[np.ndarray]  # the actors' colours: distractors keep away from them
    ids: np.ndarray | None = None  # (T, H, W) uint8: instances already in the background (0: none)
    shares: np.ndarray | None = None  # (T, H, W) float32: how much of each pixel's colour its ``ids`` instance makes


Scene = Any
Law = Callable[[np.ndarray], Any]


def render_family(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int, clutter: int,
                  misalign: float, masks: bool, scene: Callable[[np.random.Generator, int], Scene],
                  law: Callable[[str, np.random.Generator, Scene], Law],
                  draw: Callable[[Scene, Law, np.ndarray, int], Drawn]) -> Rendering:
    """Render one video of a family (see the module docstring for the draw order)."""
    t_len = clip_length(rng, frames)
    t = np.linspace(0.0, 1.0, t_len)
    appearance = scene(rng, size)
    motion = law(motion_class.motion, rng, appearance)
    share, start = action_timing(rng, misalign)
    drawn = draw(appearance, motion, action_clock(t, share, start), size)
    layers = list(drawn.layers)
    if clutter:
        background = drawn.background if drawn.background.ndim == 3 else drawn.background[0]
        objects, tracks, front = distractors(rng, background, drawn.colours, clutter, t, 0)
        extra = [TrackLayer(obj, tr, t_len, size) for obj, tr in zip(objects, tracks, strict=True)]
        layers = ([d for d, f in zip(extra, front, strict=True) if not f] + layers
                  + [d for d, f in zip(extra, front, strict=True) if f])
    video, mask = compose(drawn.background, layers, t_len, masks=masks, ids=drawn.ids, shares=drawn.shares)
    if motion_class.reversed:
        video = np.ascontiguousarray(video[::-1])
        mask = None if mask is None else np.ascontiguousarray(mask[::-1])
    return Rendering(video, mask)
