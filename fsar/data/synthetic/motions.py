"""The motion class library: each motion draws its own parameters and returns object tracks; classes
come in time-reverse pairs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

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
