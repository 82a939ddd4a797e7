"""Mechanism variants of the synthetic videos: temporal misalignment of the action, and clutter.

Both draw from the video's generator *after* the scene and the motion, so that at their neutral
settings (``misalign=0``, ``clutter=0``) a video is bit-for-bit what it was before they existed, and
so that turning one on keeps the same background, actors and motion parameters.

**Misalignment** (strength ``s`` in [0, 1]). Two uniforms ``u₁, u₂`` in [0, 1) are drawn for every
video (whatever ``s``, so the clutter drawn after them does not depend on ``s``), and

    share = 1 − 0.6·s·u₁          (the action's share of the clip: uniform in [1 − 0.6·s, 1])
    start = u₂ · (1 − share)      (where it begins: uniform over the room left)

The motion then runs on its own clock ``τ = clip((t − start) / share, 0, 1)`` for clip time t in
[0, 1] (frame i of T at t = i / (T − 1)): idle at its start pose before ``start``, idle at its end pose
after ``start + share``, and 1 / share times as fast in between. ``s = 1`` thus puts the action in a
random 40–100 % of the clip. Many motions already rest for part of their own clock (a random window
of it), which stays as it was: misalignment compresses and shifts the whole of it.

**Clutter** (``count`` distractors). Each distractor draws a shape (any shape of the library), a
colour far from the background and from the actors' colours, a half-extent uniform in [0.05, 0.10]
of the frame side, a base orientation, a spin uniform in ±π over the clip, and whether it passes in
front of or behind the actors (even odds). Its path is a random walk of 1–3 straight steps, each of a
uniformly random direction and a length uniform in [0.15, 0.5] frame sides, the clip's time split
equally between the steps (so speeds differ per step and per video, 0.15–1.5 frame sides per clip),
starting uniformly in the frame and bouncing off the frame's margins (the step is laid out unfolded,
then folded back into the frame). It never stops, so subtracting a video's temporal mean leaves it
there. Nothing in it depends on the class: its law is the same for every class and the same forwards
and backwards in time (a uniform start, isotropic steps, mirror walls), so it says nothing either
about the class or about whether a video is the forward or the reversed member of a pair.
"""

from __future__ import annotations

import math

import numpy as np

from fsar.data.synthetic.scene import SHAPES, TAU, _colours, _Object, _Track

MISALIGN_SPAN = 0.6  # at strength 1 the action's share of the clip is uniform in [1 − 0.6, 1]
CLUTTER_RADIUS = (0.05, 0.10)  # distractor half-extent, frame-side units
CLUTTER_STEP = (0.15, 0.5)  # length of one straight step of a distractor's walk, frame-side units
CLUTTER_STEPS = (1, 3)  # steps per clip, inclusive
CLUTTER_SPIN = math.pi  # largest turn over the clip, radians, either way
_CLUTTER_SHAPES = tuple(s for s in SHAPES if s != "rod")  # a rod's size is a motion's business


def action_timing(rng: np.random.Generator, misalign: float) -> tuple[float, float]:
    """The action's ``(share, start)`` of the clip at strength ``misalign`` (see the module docstring).
    Always draws two numbers, so the draws after it are the same at every strength."""
    u_share, u_start = rng.random(2)
    share = 1.0 - MISALIGN_SPAN * misalign * float(u_share)
    return share, float(u_start) * (1.0 - share)


def action_clock(t: np.ndarray, share: float, start: float) -> np.ndarray:
    """The motion's own time for clip times ``t``: 0 before ``start``, 1 after ``start + share``,
    linear in between."""
    return np.clip((t - start) / share, 0.0, 1.0)


def _fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Mirror an unbounded coordinate into [lo, hi]: a point moving in a straight line bounces off the
    ends (a triangle wave of period 2·(hi − lo))."""
    width = hi - lo
    return lo + width - np.abs(np.mod(x - lo, 2.0 * width) - width)


def distractors(rng: np.random.Generator, background: np.ndarray, actor_colours: list[np.ndarray], count: int,
                t: np.ndarray, first_object: int) -> tuple[list[_Object], list[_Track], list[bool]]:
    """``count`` distractors over clip times ``t`` (T,): their scene objects (numbered from
    ``first_object``), their tracks, and per track whether it is drawn in front of the actors."""
    colours = _colours(rng, background, count, avoid=actor_colours)
    objects, tracks, front = [], [], []
    for k, colour in enumerate(colours):
        shape = _CLUTTER_SHAPES[int(rng.integers(len(_CLUTTER_SHAPES)))]
        radius = float(rng.uniform(*CLUTTER_RADIUS))
        objects.append(_Object(shape, colour, radius, float(rng.uniform(0, TAU))))
        spin = float(rng.uniform(-CLUTTER_SPIN, CLUTTER_SPIN))
        front.append(bool(rng.random() < 0.5))
        steps = int(rng.integers(CLUTTER_STEPS[0], CLUTTER_STEPS[1] + 1))
        # Keep the whole shape (reach up to ~1.23 half-extents) inside the frame.
        lo, hi = radius * 1.25 + 0.01, 1.0 - radius * 1.25 - 0.01
        start = rng.uniform(lo, hi, size=2)
        angles = rng.uniform(0, TAU, size=steps)
        lengths = rng.uniform(*CLUTTER_STEP, size=steps)
        unfolded = start + np.concatenate([[[0.0, 0.0]], np.cumsum(
            lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1), axis=0)])
        knots = np.linspace(0.0, 1.0, steps + 1)  # equal time per step
        x = _fold(np.interp(t, knots, unfolded[:, 0]), lo, hi)
        y = _fold(np.interp(t, knots, unfolded[:, 1]), lo, hi)
        tracks.append(_Track(first_object + k, x, y, radius, angle=spin * t))
    return objects, tracks, front
