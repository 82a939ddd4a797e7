"""Motions of the synthetic dataset: each draws its own parameters from ``rng`` and returns object tracks
over normalised time ``t`` (``library`` names them and pairs each with its time reverse)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from fsar.data.synthetic.scene import (
    TAU,
    _Track,
)

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


def translate_motion(rng, t, rs, *, d, lo=0.55, hi=0.95, ease=1.0, extent=(0.35, 0.7)):
    u = _window(rng, t, lo, hi) ** ease
    pts = _place(rng, [[0, 0], _dir(d) * rng.uniform(*extent)], rs[0] + 0.02)
    x, y = _along(pts, u)
    return [_Track(0, x, y, rs[0])]


def move_stop_motion(rng, t, rs, *, d):
    u = _window(rng, t, 0.85, 1.0)
    moving = rng.uniform(0.25, 0.45)  # share of the clip spent moving; the rest is rest
    pts = _place(rng, [[0, 0], _dir(d) * rng.uniform(0.35, 0.65)], rs[0] + 0.02)
    x, y = _along(pts, np.clip(u / moving, 0, 1))
    return [_Track(0, x, y, rs[0])]


def approach_motion(rng, t, rs, *, side):
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


def scale_motion(rng, t, rs, *, kind):
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


def fade_motion(rng, t, rs):
    u = _window(rng, t, 0.45, 0.9)
    x, y = _place(rng, [[0, 0]], 0.2)[0]
    return [_Track(0, x, y, rs[0], alpha=u)]


def enter_motion(rng, t, rs, *, d):
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


def rotate_motion(rng, t, rs):
    u = _window(rng, t, 0.6, 1.0)
    x, y = _place(rng, [[0, 0]], rs[0] * 1.25 + 0.02)[0]
    return [_Track(0, x, y, rs[0], angle=rng.uniform(0.55, 0.95) * math.pi * u)]


def roll_motion(rng, t, rs, *, against):
    u = _window(rng, t, 0.6, 0.95)
    r = rs[0]
    pts = _place(rng, [[0, 0], [rng.uniform(0.4, 0.7), 0]], r * 1.25 + 0.02)
    x, y = _along(pts, u)
    travelled = x - x[0]
    # Rolling without slipping turns clockwise by distance / radius when moving right; the "against"
    # class spins the other way, faster.
    angle = -travelled / r * rng.uniform(1.2, 1.8) if against else travelled / r
    return [_Track(0, x, y, r, angle=angle)]


def fall_over_motion(rng, t, rs, *, side):
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


def bounce_motion(rng, t, rs):
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


def pendulum_motion(rng, t, rs):
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


def arc_motion(rng, t, rs, *, over):
    u = _window(rng, t, 0.6, 0.95)
    r = rs[0]
    sign = -1.0 if over else 1.0
    # Start point and the corner diagonal to it bound the arc (it starts and ends on one level).
    (x0, y0), (x1, y1) = _place(rng, [[0, 0], [rng.uniform(0.5, 0.8), sign * rng.uniform(0.25, 0.45)]], r + 0.02)
    x = x0 + (x1 - x0) * u
    y = y0 + (y1 - y0) * 4 * u * (1 - u)
    return [_Track(0, x, y, r)]


def circle_motion(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    radius = rng.uniform(0.18, 0.3)
    cx, cy = _place(rng, [[0, 0]], radius + r + 0.02)[0]
    theta = rng.uniform(0, TAU) + rng.uniform(1.4, 2.0) * math.pi * u  # clockwise on screen
    return [_Track(0, cx + radius * np.cos(theta), cy + radius * np.sin(theta), r)]


def zigzag_motion(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    teeth = int(rng.integers(2, 4))
    amp = rng.uniform(0.08, 0.14)
    k = np.arange(2 * teeth + 1)
    waypoints = np.stack([k / (2 * teeth) * rng.uniform(0.5, 0.8), np.where(k % 2, amp, -amp)], axis=1)
    x, y = _along(_place(rng, waypoints, r + 0.02), u)
    return [_Track(0, x, y, r)]


def wave_motion(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    cycles = rng.uniform(1.5, 2.5)
    (xa, y0), (xb, y1) = _place(rng, [[0, 0], [2 * rng.uniform(0.07, 0.13), rng.uniform(0.5, 0.8)]], r + 0.02)
    return [_Track(0, (xa + xb) / 2 + (xb - xa) / 2 * np.sin(TAU * cycles * u), y0 + (y1 - y0) * u, r)]


def spiral_motion(rng, t, rs, *, clockwise):
    u = _window(rng, t, 0.7, 1.0)
    r = rs[0]
    radius = rng.uniform(0.22, 0.32)
    cx, cy = _place(rng, [[0, 0]], radius + r + 0.02)[0]
    turn = (1 if clockwise else -1) * rng.uniform(1.25, 2.0) * TAU
    theta = rng.uniform(0, TAU) + turn * u
    rho = radius * (1 - 0.85 * u)
    return [_Track(0, cx + rho * np.cos(theta), cy + rho * np.sin(theta), r)]


def turn_motion(rng, t, rs, *, first, second):
    u = _window(rng, t, 0.65, 1.0)
    r = rs[0]
    a, b = _dir(first) * rng.uniform(0.3, 0.5), _dir(second) * rng.uniform(0.3, 0.5)
    x, y = _along(_place(rng, [[0, 0], a, a + b], r + 0.02), u)
    return [_Track(0, x, y, r)]


def steps_motion(rng, t, rs, *, d):
    u = _window(rng, t, 0.85, 1.0)
    r = rs[0]
    steps = 3
    i = np.minimum(np.floor(u * steps), steps - 1)
    frac = np.clip(2 * (u * steps - i) - 1, 0, 1)  # rest for the first half of each step, then move
    e = (i + frac * frac * (3 - 2 * frac)) / steps
    x, y = _along(_place(rng, [[0, 0], _dir(d) * rng.uniform(0.45, 0.7)], r + 0.02), e)
    return [_Track(0, x, y, r)]


def half_back_motion(rng, t, rs, *, d):
    u = _window(rng, t, 0.65, 1.0)
    r = rs[0]
    far = _dir(d) * rng.uniform(0.4, 0.65)
    x, y = _along(_place(rng, [[0, 0], far, far / 2], r + 0.02), u)
    return [_Track(0, x, y, r)]


def grow_move_motion(rng, t, rs):
    u = _window(rng, t, 0.6, 0.95)
    r0 = rs[0] * 0.7
    gain = rng.uniform(1.8, 2.3)
    x, y = _along(_place(rng, [[0, 0], [rng.uniform(0.35, 0.55), 0]], r0 * gain * 1.2 + 0.02), u)
    return [_Track(0, x, y, r0 * (1 + (gain - 1) * u))]
