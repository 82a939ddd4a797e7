"""The class library of the synthetic dataset: every motion of ``motions`` as a forward class and its
time-reversed partner (ids ``2k`` and ``2k + 1``), with the object pools each draws from."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from fsar.data.synthetic.interactions import (
    catch_up_motion,
    collide_motion,
    cover_motion,
    knock_motion,
    orbit_motion,
    pass_motion,
    put_on_motion,
    towards_motion,
)
from fsar.data.synthetic.motions import (
    Motion,
    approach_motion,
    arc_motion,
    bounce_motion,
    circle_motion,
    enter_motion,
    fade_motion,
    fall_over_motion,
    grow_move_motion,
    half_back_motion,
    move_stop_motion,
    pendulum_motion,
    roll_motion,
    rotate_motion,
    scale_motion,
    spiral_motion,
    steps_motion,
    translate_motion,
    turn_motion,
    wave_motion,
    zigzag_motion,
)


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
    _base("translate", f"translate_{_d}", _f, _b, partial(translate_motion, d=_d))
for _d, _o in [("right", "left"), ("left", "right"), ("down", "up"), ("up", "down")]:
    _base("accelerate", f"accelerate_{_d}", f"speeding up {_d}wards", f"slowing down {_o}wards to a stop",
          partial(translate_motion, d=_d, lo=0.7, hi=1.0, ease=2.2, extent=(0.45, 0.75)))
for _d, _o in [("right", "left"), ("left", "right"), ("down", "up"), ("up", "down")]:
    _base("move_stop", f"move_stop_{_d}", f"moving {_d}, then stopping", f"resting, then moving {_o}",
          partial(move_stop_motion, d=_d))
_base("approach", "approach", "approaching the camera", "moving away from the camera", partial(approach_motion, side=0))
_base("approach", "approach_left", "approaching the camera from the left", "moving away from the camera to the left",
      partial(approach_motion, side=-1))
_base("approach", "approach_right", "approaching the camera from the right",
      "moving away from the camera to the right", partial(approach_motion, side=1))
_base("scale", "grow", "growing", "shrinking", partial(scale_motion, kind="grow"))
_base("scale", "stretch_x", "stretching horizontally", "contracting horizontally", partial(scale_motion, kind="x"), ("axis",))
_base("scale", "stretch_y", "stretching vertically", "contracting vertically", partial(scale_motion, kind="y"), ("axis",))
_base("scale", "grow_point", "growing from a point", "shrinking to a point", partial(scale_motion, kind="point"))
_base("appear", "fade", "fading in", "fading out", fade_motion)
for _d, _side in [("right", "left"), ("left", "right"), ("down", "top"), ("up", "bottom")]:
    _base("appear", f"enter_{_side}", f"entering the frame from the {_side}", f"leaving the frame to the {_side}",
          partial(enter_motion, d=_d))
_base("rotate", "rotate", "rotating clockwise", "rotating counter-clockwise", rotate_motion, ("elongated",))
_base("rotate", "roll", "rolling to the right", "rolling to the left", partial(roll_motion, against=False), ("nonround",))
_base("rotate", "spin_against", "spinning counter-clockwise while moving right",
      "spinning clockwise while moving left", partial(roll_motion, against=True), ("nonround",))
_base("rotate", "fall_right", "falling over to the right", "standing up from lying on the right",
      partial(fall_over_motion, side=1), ("upright",))
_base("rotate", "fall_left", "falling over to the left", "standing up from lying on the left",
      partial(fall_over_motion, side=-1), ("upright",))
_base("physics", "bounce", "dropping and bouncing to rest", "bouncing higher and higher, then flying up", bounce_motion)
_base("physics", "pendulum", "swinging to a stop", "swinging higher and higher", pendulum_motion, ("rod", "any"))
_base("path", "arc_over", "moving in an arc over the top from left to right",
      "moving in an arc over the top from right to left", partial(arc_motion, over=True))
_base("path", "arc_under", "swooping down and up from left to right", "swooping down and up from right to left",
      partial(arc_motion, over=False))
_base("path", "circle", "circling clockwise", "circling counter-clockwise", circle_motion)
_base("path", "zigzag", "zigzagging from left to right", "zigzagging from right to left", zigzag_motion)
_base("path", "wave", "wavering from top to bottom", "wavering from bottom to top", wave_motion)
_base("path", "spiral_cw", "spiralling inwards clockwise", "spiralling outwards counter-clockwise",
      partial(spiral_motion, clockwise=True))
_base("path", "spiral_ccw", "spiralling inwards counter-clockwise", "spiralling outwards clockwise",
      partial(spiral_motion, clockwise=False))
# Reversing "d1 then d2" gives "opposite of d2, then opposite of d1": the eight corner paths form four pairs.
_OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
for _a, _b2 in [("right", "down"), ("right", "up"), ("down", "right"), ("up", "right")]:
    _base("path", f"turn_{_a}_{_b2}", f"moving {_a}, then turning {_b2}",
          f"moving {_OPPOSITE[_b2]}, then turning {_OPPOSITE[_a]}", partial(turn_motion, first=_a, second=_b2))
_base("path", "steps_right", "moving right in steps", "moving left in steps", partial(steps_motion, d="right"))
_base("path", "steps_down", "moving down in steps", "moving up in steps", partial(steps_motion, d="down"))
_base("path", "half_back_right", "moving right and coming halfway back", "moving a little right, then far left",
      partial(half_back_motion, d="right"))
_base("path", "half_back_down", "moving down and coming halfway back", "moving a little down, then far up",
      partial(half_back_motion, d="down"))
_TWO = ("any", "any")
for _d, _o in [("right", "left"), ("down", "up")]:
    _base("interaction", f"knock_{_d}", f"knocking an object {_d}wards", f"knocking an object {_o}wards",
          partial(knock_motion, d=_d, together=False), _TWO)
for _d, _o in [("right", "left"), ("down", "up")]:
    _base("interaction", f"push_{_d}", f"pushing an object {_d}wards", f"moving {_o}wards together, then separating",
          partial(knock_motion, d=_d, together=True), _TWO)
for _d, _axis in [("right", "horizontally"), ("down", "vertically")]:
    _base("interaction", f"collide_{_axis}", f"colliding {_axis} and bouncing apart",
          f"approaching {_axis} and springing apart", partial(collide_motion, d=_d, stick=False), _TWO)
    _base("interaction", f"meet_{_axis}", f"two objects meeting {_axis}", f"two touching objects moving apart {_axis}",
          partial(collide_motion, d=_d, stick=True), _TWO)
_base("interaction", "pass_front", "passing in front of an object rightwards",
      "passing in front of an object leftwards", partial(pass_motion, behind=False), _TWO)
_base("interaction", "pass_behind", "passing behind an object rightwards", "passing behind an object leftwards",
      partial(pass_motion, behind=True), _TWO)
for _d, _o in [("right", "left"), ("left", "right")]:
    _base("interaction", f"towards_{_d}", f"moving {_d}wards up to another object",
          f"moving {_o}wards away from another object", partial(towards_motion, d=_d), _TWO)
_base("interaction", "catch_up", "catching up with an object, rightwards", "pulling ahead of an object, leftwards",
      catch_up_motion, _TWO)
_base("interaction", "put_on", "putting an object on top of another", "lifting an object off another", put_on_motion, _TWO)
_base("interaction", "cover_left", "covering an object from the left", "uncovering an object to the left",
      partial(cover_motion, d="right"), ("blocky", "any"))
_base("interaction", "cover_top", "covering an object from above", "uncovering an object upwards",
      partial(cover_motion, d="down"), ("blocky", "any"))
_base("interaction", "orbit", "circling around an object clockwise", "circling around an object counter-clockwise",
      orbit_motion, _TWO)
_base("combined", "grow_move", "growing while moving right", "shrinking while moving left", grow_move_motion)

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


def pair_classes(bases: list[tuple[str, str, str, str, int]]) -> tuple[MotionClass, ...]:
    """A class library from ``(group, motion key, forward name, reversed name, objects)`` per base motion: base
    ``k`` becomes class ``2k`` (forward) and ``2k + 1`` (its time reverse). The other families build theirs
    with it; names and slugs must be unique."""
    out = []
    for k, (group, key, forward, backward, objects) in enumerate(bases):
        out.append(MotionClass(2 * k, forward, group, key, False, 2 * k + 1, objects))
        out.append(MotionClass(2 * k + 1, backward, group, key, True, 2 * k, objects))
    names = [c.name for c in out]
    slugs = [c.slug for c in out]
    if len(set(names)) != len(names) or len(set(slugs)) != len(slugs) or len({b[1] for b in bases}) != len(bases):
        dup = sorted({n for n in names if names.count(n) > 1} | {s for s in slugs if slugs.count(s) > 1})
        raise ValueError(f"class names, slugs and motion keys must be unique; repeated: {dup}")
    return tuple(out)


def motion_classes() -> list[MotionClass]:
    """The whole class library (128 classes, 64 time-reverse pairs), in id order."""
    return list(_LIBRARY)
