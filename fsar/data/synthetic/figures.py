"""The ``figures`` family: articulated stick figures whose joints move; a class is a joint-angle trajectory.

Each video draws one figure (torso, head, two arms with elbows, two legs with knees, drawn as thick capsules:
:mod:`fsar.data.synthetic.figure_body`) with its own proportions, colours, size, place and background, and
moves its joints along the class's trajectory: raising, waving, circling, flexing or punching with one arm,
both, or one after the other; kicking, lifting a knee, raising a leg or stamping; squatting, jumping, walking
or running (in profile), bending, bowing, clapping, falling over. Class ``2k`` is the forward movement of pair
``k``, ``2k + 1`` its literal time reverse (raising ↔ lowering, walking left ↔ walking backwards to the right).

Why it is structurally different from ``shapes``: there a class is the path of one or two rigid shapes (where
a shape goes, how it turns or scales); here the figure's centre barely moves in most classes, and the class
lives in the relative motion of connected parts, often of one small limb against the static rest of the body
(which arm, which way, in which order), the way human actions differ.

Masks (``fsar-masks/1``): the whole figure is instance 1 (limbs, torso and head together); 0 is the
background and the distractors.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from fsar.data.synthetic.figure_body import DEG, DENSE, Body, Pose, body, draw_figure, reach_angles
from fsar.data.synthetic.layers import Drawn, phase, progress, render_family, smooth, window
from fsar.data.synthetic.library import MotionClass, pair_classes
from fsar.data.synthetic.render import Rendering

VERSION = 1  # bump when a figures video or class changes (synth.json's family_version)


# ---------------------------------------------------------------- single-limb movements: progress u -> angles
def _ease_out(u):
    return 1.0 - (1.0 - u) ** 2


def _arm(move, u, fig, q):
    """Shoulder angle and elbow bend of one arm at progress ``u`` of ``move``; ``q`` its drawn amplitudes."""
    a0, b0 = fig.rest["a"], fig.rest["b"]
    s = smooth(u)
    if move in ("side", "up"):
        top = (q[0] * 15 + 80 if move == "side" else q[0] * 15 + 160) * DEG
        return a0 + (top - a0) * s, b0 * (1 - s)
    if move == "wave":
        up = smooth(phase(u, 0.0, 0.4))
        a = a0 + ((115 + 20 * q[0]) * DEG - a0) * up
        b = b0 + ((30 + 15 * q[1]) * DEG - b0) * up + (20 + 10 * q[2]) * DEG * np.sin(6 * math.pi * phase(u, 0.4, 1.0))
        return a, b
    if move == "circle":
        return a0 + 2 * math.pi * s, b0 * (1 - np.sin(math.pi * s))
    if move == "flex":
        up, curl = smooth(phase(u, 0.0, 0.45)), smooth(phase(u, 0.55, 1.0))
        return a0 + ((80 + 15 * q[0]) * DEG - a0) * up, b0 * (1 - up) + (95 + 20 * q[1]) * DEG * curl
    if move == "punch":  # slowly draw the fist to the chest, then punch out fast and hold
        draw, hit = smooth(phase(u, 0.0, 0.6)), _ease_out(phase(u, 0.72, 0.88))
        a = a0 + (25 * DEG - a0) * draw + (55 + 15 * q[0]) * DEG * hit
        return a, b0 + (-130 * DEG - b0) * draw + 130 * DEG * hit
    raise KeyError(move)


def _leg(move, u, fig, q):
    """Hip angle and knee bend of one leg at progress ``u`` of ``move``."""
    g0 = fig.rest["g"]
    if move == "kick":  # chamber, then snap the leg out straight and hold it
        chamber, snap = smooth(phase(u, 0.0, 0.45)), _ease_out(phase(u, 0.6, 0.75))
        g = g0 + (40 * DEG - g0) * chamber + (25 + 15 * q[0]) * DEG * snap
        return g, -g0 + (-80 * DEG + g0) * chamber + 80 * DEG * snap
    if move == "knee":
        s = smooth(u)
        return g0 + ((60 + 15 * q[0]) * DEG - g0) * s, -g0 + ((-95 - 15 * q[1]) * DEG + g0) * s
    if move == "raise":
        s = smooth(u)
        return g0 + ((40 + 15 * q[0]) * DEG - g0) * s, -g0 * (1 - s)
    if move == "stamp":  # lift the knee slowly, stamp down fast
        up, down = smooth(phase(u, 0.0, 0.6)), phase(u, 0.8, 0.9) ** 2
        lift = up * (1 - down)
        return g0 + (65 * DEG - g0) * lift, -g0 + (-95 * DEG + g0) * lift
    raise KeyError(move)


_ORDER = {"left": [("L", 0.0, 1.0)], "right": [("R", 0.0, 1.0)], "both": [("L", 0.0, 1.0), ("R", 0.0, 1.0)],
          "left_right": [("L", 0.0, 0.55), ("R", 0.45, 1.0)], "right_left": [("R", 0.0, 0.55), ("L", 0.45, 1.0)]}


def _limb_law(rng, fig, *, kind, move, limbs):
    start, length = window(rng, 0.7, 0.95)
    q = rng.uniform(0, 1, size=3)

    def law(tau):
        pose = Pose.rest(fig, tau)
        u = progress(tau, start, length)
        for side, lo, hi in _ORDER[limbs]:
            if kind == "arm":
                pose["a" + side], pose["b" + side] = _arm(move, phase(u, lo, hi), fig, q)
            else:
                pose["g" + side], pose["k" + side] = _leg(move, phase(u, lo, hi), fig, q)
        return pose
    return law


# ---------------------------------------------------------------- whole-body movements
def _body_law(rng, fig, *, move, side=1):
    start, length = window(rng, 0.75, 0.95) if move not in ("walk", "run") else window(rng, 0.85, 1.0)
    q = rng.uniform(0, 1, size=4)

    def law(tau):
        u = progress(tau, start, length)
        pose = Pose.rest(fig, tau, facing=side if move in ("walk", "run", "bow") else 0)
        getattr(_BODY, move)(pose, u, fig, q, side)
        return pose
    return law


def _set_legs(pose, g, k):
    for s in "LR":
        pose["g" + s], pose["k" + s] = g, k


def _set_arms(pose, a, b):
    for s in "LR":
        pose["a" + s], pose["b" + s] = a, b


class _BODY:
    """Whole-body movements: each sets the pose at progress ``u`` (``q``: four drawn uniforms)."""

    @staticmethod
    def squat(pose, u, fig, q, side):
        s, g0 = smooth(u), fig.rest["g"]
        _set_legs(pose, g0 + ((40 + 10 * q[0]) * DEG - g0) * s, -g0 + ((-85 - 15 * q[1]) * DEG + g0) * s)
        _set_arms(pose, fig.rest["a"] + ((75 - fig.rest["a"] / DEG) * DEG) * s, fig.rest["b"] * (1 - s))

    @staticmethod
    def jump(pose, u, fig, q, side, star=False):
        g0 = fig.rest["g"]
        crouch = np.sin(math.pi * phase(u, 0.0, 0.35)) * (u < 0.35)
        air = phase(u, 0.3, 0.75)
        land = np.sin(math.pi * phase(u, 0.72, 1.0))
        bend = np.maximum(crouch, 0.6 * land)
        spread = smooth(air) * (25 + 10 * q[2]) * DEG if star else 0.0
        _set_legs(pose, g0 + 30 * DEG * bend + spread, -g0 - 60 * DEG * bend)
        pose["lift"] = (0.15 + 0.1 * q[0]) * np.sin(math.pi * air) * (air < 1)
        if star:
            _set_arms(pose, fig.rest["a"] + (140 * DEG - fig.rest["a"]) * smooth(air), fig.rest["b"] * (1 - smooth(air)))
        else:  # lands on a level higher up; the arms swing up and back
            pose["lift"] = pose["lift"] + (0.12 + 0.08 * q[1]) * smooth(air)
            _set_arms(pose, fig.rest["a"] + 120 * DEG * np.sin(math.pi * air), fig.rest["b"])

    @staticmethod
    def star(pose, u, fig, q, side):
        _BODY.jump(pose, u, fig, q, side, star=True)

    @staticmethod
    def walk(pose, u, fig, q, side, run=False):
        cycles = (3.0 + q[0]) if run else (2.0 + q[0])
        stride = ((35 + 10 * q[1]) if run else (20 + 8 * q[1])) * DEG
        w = 2 * math.pi * cycles * u
        swing = np.sin(w)
        for s, sign in (("R", 1.0), ("L", -1.0)):
            pose["g" + s] = sign * stride * swing
            pose["k" + s] = -(70 if run else 45) * DEG * np.maximum(0.0, sign * np.cos(w)) - 5 * DEG
            pose["a" + s] = -sign * stride * (1.0 if run else 0.7) * swing
            pose["b" + s] = (85 if run else 20) * DEG
        pose["dx"] = side * ((1.1 + 0.3 * q[2]) if run else (0.55 + 0.3 * q[2])) * u
        if run:
            pose["tilt"] = pose["tilt"] + side * 10 * DEG
            pose["lift"] = 0.04 * np.abs(np.sin(w))

    @staticmethod
    def run(pose, u, fig, q, side):
        _BODY.walk(pose, u, fig, q, side, run=True)

    @staticmethod
    def bend(pose, u, fig, q, side):
        s = smooth(u)
        pose["tilt"] = side * (25 + 15 * q[0]) * DEG * s
        over = "L" if side > 0 else "R"  # the arm away from the bend reaches over the head
        pose["a" + over] = fig.rest["a"] + (150 * DEG - fig.rest["a"]) * s

    @staticmethod
    def bow(pose, u, fig, q, side):
        s = smooth(u)
        bow = (55 + 25 * q[0]) * DEG * s
        pose["tilt"] = side * bow
        _set_arms(pose, fig.rest["a"] + 0.85 * bow, fig.rest["b"])
        _set_legs(pose, fig.rest["g"] - 10 * DEG * s, -fig.rest["g"])

    @staticmethod
    def together(pose, u, fig, q, side):
        s = smooth(u)
        height = -(0.08 + 0.06 * q[0])
        for s_ in "LR":
            a, b = reach_angles(fig, s_, (0.0, height))
            pose["a" + s_] = fig.rest["a"] + (a - fig.rest["a"]) * s
            pose["b" + s_] = fig.rest["b"] + (b - fig.rest["b"]) * s

    @staticmethod
    def clap(pose, u, fig, q, side):
        up = smooth(phase(u, 0.0, 0.35))
        claps = phase(u, 0.35, 1.0)
        height, gap = -(0.04 + 0.06 * q[0]), 0.12 + 0.06 * q[1]
        apart = 1 - (1 - np.cos(5 * math.pi * claps)) / 2  # 1: apart; meets three times, the last at the end
        for s_, sign in (("L", -1.0), ("R", 1.0)):
            a1, b1 = reach_angles(fig, s_, (sign * gap, height))
            a2, b2 = reach_angles(fig, s_, (0.0, height))
            a, b = a2 + (a1 - a2) * apart, b2 + (b1 - b2) * apart
            pose["a" + s_] = fig.rest["a"] + (a - fig.rest["a"]) * up
            pose["b" + s_] = fig.rest["b"] + (b - fig.rest["b"]) * up

    @staticmethod
    def fall(pose, u, fig, q, side):
        fall = phase(u, 0.0, 0.75) ** 2  # accelerating, like a falling body
        pose["fall"] = side * (85 + 5 * q[0]) * DEG * fall
        _set_arms(pose, fig.rest["a"] + 100 * DEG * smooth(phase(u, 0.0, 0.5)), fig.rest["b"])


# ---------------------------------------------------------------- the class library
_BASES: list[tuple[str, str, str, str, int]] = []
_LAWS: dict[str, partial] = {}


def _base(group, key, forward, backward, fn):
    _BASES.append((group, key, forward, backward, 1))
    _LAWS[key] = fn


_ARM_WORDS = {"side": ("raising", " sideways", "lowering", " from the side"),
              "up": ("raising", " overhead", "lowering", " from overhead"),
              "wave": ("raising and waving", "", "waving and lowering", ""),
              "circle": ("swinging", " round outwards", "swinging", " round inwards"),
              "flex": ("raising and flexing", "", "unflexing and lowering", ""),
              "punch": ("punching out with", "", "pulling back", "")}
for _move, (_v, _s, _rv, _rs) in _ARM_WORDS.items():
    for _limbs, _f, _b in [("left", f"{_v} the left arm{_s}", f"{_rv} the left arm{_rs}"),
                           ("right", f"{_v} the right arm{_s}", f"{_rv} the right arm{_rs}"),
                           ("both", f"{_v} both arms{_s}", f"{_rv} both arms{_rs}"),
                           ("left_right", f"{_v} the left arm{_s}, then the right",
                            f"{_rv} the right arm{_rs}, then the left"),
                           ("right_left", f"{_v} the right arm{_s}, then the left",
                            f"{_rv} the left arm{_rs}, then the right")]:
        _base(f"arm_{_move}", f"arm_{_move}_{_limbs}", _f, _b, partial(_limb_law, kind="arm", move=_move, limbs=_limbs))
_LEG_WORDS = {"kick": ("kicking the {} leg out sideways", "drawing the {} leg back in from a kick"),
              "knee": ("lifting the {} knee", "lowering the {} knee"),
              "raise": ("raising the {} leg sideways", "lowering the {} leg from the side"),
              "stamp": ("stamping the {} foot", "snapping the {} knee up, then lowering it slowly")}
for _move, (_f, _b) in _LEG_WORDS.items():
    for _side in ("left", "right"):
        _base(f"leg_{_move}", f"leg_{_move}_{_side}", _f.format(_side), _b.format(_side),
              partial(_limb_law, kind="leg", move=_move, limbs=_side))
_base("squat", "squat", "squatting down", "standing up from a squat", partial(_body_law, move="squat"))
_base("jump", "jump_up", "jumping up onto a higher level", "jumping down to a lower level", partial(_body_law, move="jump"))
_base("jump", "star", "jumping into a star", "jumping from a star back to standing", partial(_body_law, move="star"))
for _name, _side, _other in (("left", -1, "right"), ("right", 1, "left")):
    _base("walk", f"walk_{_name}", f"walking to the {_name}", f"walking backwards to the {_other}, facing {_name}",
          partial(_body_law, move="walk", side=_side))
    _base("run", f"run_{_name}", f"running to the {_name}", f"running backwards to the {_other}, facing {_name}",
          partial(_body_law, move="run", side=_side))
    _base("bend", f"bend_{_name}", f"bending sideways to the {_name}", f"straightening up from a bend to the {_name}",
          partial(_body_law, move="bend", side=_side))
    _base("bow", f"bow_{_name}", f"bowing to the {_name}", f"straightening up from a bow to the {_name}",
          partial(_body_law, move="bow", side=_side))
    _base("fall", f"fall_{_name}", f"toppling over to the {_name}", f"getting up from lying on the {_name}",
          partial(_body_law, move="fall", side=_side))
_base("clap", "together", "bringing the hands together", "moving the hands apart and down",
      partial(_body_law, move="together"))
_base("clap", "clap", "raising the hands and clapping three times", "clapping three times, then lowering the hands",
      partial(_body_law, move="clap"))

_LIBRARY = pair_classes(_BASES)


def figure_classes() -> list[MotionClass]:
    """The figures library (106 classes, 53 time-reverse pairs), in id order."""
    return list(_LIBRARY)


def figure_law(key: str, rng: np.random.Generator, fig: Body):
    """Draw the motion parameters of movement ``key`` for ``fig``; returns its pose as a function of the clock."""
    return _LAWS[key](rng, fig)


def _draw(fig: Body, law, tau: np.ndarray, size: int) -> Drawn:
    layers, colours = draw_figure(fig, law(tau), law(DENSE), size)
    return Drawn(fig.background, layers, colours)


def render_video(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int, clutter: int = 0,
                 misalign: float = 0.0, masks: bool = False) -> Rendering:
    """One video of a figures class (draw order and variants as in :mod:`fsar.data.synthetic.layers`)."""
    return render_family(motion_class, rng, frames=frames, size=size, clutter=clutter, misalign=misalign, masks=masks,
                         scene=body, law=figure_law, draw=_draw)
