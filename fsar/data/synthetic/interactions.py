"""Two-object motions of the synthetic dataset: object 0 ("A") moves, object 1 ("B") is the other one; each
draws its own parameters from ``rng`` and returns object tracks over normalised time ``t``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fsar.data.synthetic.motions import _dir, _place, _window
from fsar.data.synthetic.scene import TAU, _Track


def _line_up(rng, d, fixed: float, runs: Sequence[float], margin: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Place a straight path along ``d`` made of ``fixed`` (contact distances, kept) plus ``runs``
    (travel, shortened together when the path would not fit); returns (start point, unit d, runs)."""
    d = _dir(d)
    room = 1 - 2 * margin - fixed
    factor = min(1.0, room / max(sum(runs), 1e-9))
    runs = [x * factor for x in runs]
    pts = _place(rng, [[0, 0], d * (fixed + sum(runs))], margin)
    return pts[0], d, runs


def knock_motion(rng, t, rs, *, d, together):
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


def collide_motion(rng, t, rs, *, d, stick):
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


def pass_motion(rng, t, rs, *, behind):
    u = _window(rng, t, 0.6, 0.95)
    ra = rs[0]
    rb = max(rs[1], ra * 1.5) if behind else rs[1]
    (x0, by), (x1, _) = _place(rng, [[0, 0], [rng.uniform(0.5, 0.75), 0]], max(ra, rb) + 0.02)
    bx, length = (x0 + x1) / 2, x1 - x0
    ay = by + rng.uniform(-0.3, 0.3) * rb
    a = _Track(0, bx - length / 2 + length * u, np.full_like(u, ay), ra)
    b = _Track(1, bx, by, rb)
    return [a, b] if behind else [b, a]


def towards_motion(rng, t, rs, *, d):
    u = _window(rng, t, 0.5, 0.85)
    ra, rb = rs
    gap = ra + rb + rng.uniform(0.01, 0.04)
    start, d, (run,) = _line_up(rng, d, gap, [rng.uniform(0.25, 0.45)], max(ra, rb) + 0.02)
    a_pos = start + d * (run * u)[:, None]
    b = start + d * (run + gap)
    return [_Track(1, b[0], b[1], rb), _Track(0, a_pos[:, 0], a_pos[:, 1], ra)]


def catch_up_motion(rng, t, rs):
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


def put_on_motion(rng, t, rs):
    u = _window(rng, t, 0.5, 0.85)
    ra, rb = rs
    bx, by = rng.uniform(0.3, 0.7), rng.uniform(0.68, 0.85)
    end = np.array([bx, by - (ra + rb) * 0.92])
    start = np.array([bx + rng.uniform(-0.25, 0.25), rng.uniform(ra + 0.03, max(ra + 0.04, end[1] - 0.3))])
    e = 1 - (1 - u) ** 2  # slows down to set it gently
    pos = start + (end - start) * e[:, None]
    return [_Track(1, bx, by, rb), _Track(0, pos[:, 0], pos[:, 1], ra)]


def cover_motion(rng, t, rs, *, d):
    u = _window(rng, t, 0.5, 0.85)
    ra, rb = rs
    rb = min(rb, ra / 1.7)
    start, d, (run,) = _line_up(rng, d, ra + rb, [rng.uniform(0.06, 0.15)], ra + 0.02)
    run += ra + rb
    a_pos = start + d * (run * u)[:, None]
    b = start + d * run
    return [_Track(1, b[0], b[1], rb), _Track(0, a_pos[:, 0], a_pos[:, 1], ra)]


def orbit_motion(rng, t, rs):
    u = _window(rng, t, 0.7, 1.0)
    ra, rb = rs
    radius = ra + rb + rng.uniform(0.06, 0.14)
    cx, cy = _place(rng, [[0, 0]], radius + ra + 0.02)[0]
    theta = rng.uniform(0, TAU) + rng.uniform(1.4, 2.0) * math.pi * u
    return [_Track(1, cx, cy, rb), _Track(0, cx + radius * np.cos(theta), cy + radius * np.sin(theta), ra)]
