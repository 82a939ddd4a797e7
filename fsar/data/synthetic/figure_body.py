"""The body of the ``figures`` family: a stick figure's per-video proportions and colours, its joint angles
(a :class:`Pose`), the forward kinematics from angles to joints, and drawing it as thick capsules.

A pose gives, per frame: the torso's tilt, per arm the shoulder angle ``a`` (0: hanging, positive: raised
outwards, π/2: sideways, π: overhead) and the elbow's bend ``b`` (positive: the forearm turns further the way
the arm rises), per leg the hip angle ``g`` (positive: outwards, or forwards in profile) and the knee's bend
``k`` (negative: the shin folds back), a whole-body turn ``fall`` (clockwise on screen, about the foot it
falls towards), a sideways shift ``dx`` and a ``lift`` off the ground (body units: a figure is about 1 tall).

``facing`` 0 draws the figure from the front (left limbs on the left of the screen); ±1 in profile, facing
right (+1) or left (−1): limbs bend towards the facing side, the far (left) limbs behind the torso in a darker
shade. The figure stands on the ground: each frame, its lowest point rests on the ground line, ``lift`` above
it. Its size and place come from the whole motion (on a dense grid of the action's clock, so retiming does
not move it): it fits the frame at every moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fsar.data.synthetic.layers import Layer, capsule_layers
from fsar.data.synthetic.scene import _background, _colours

DEG = math.pi / 180.0
LIMBS = ("aL", "bL", "aR", "bR", "gL", "kL", "gR", "kR")  # arm angle, elbow, hip angle, knee; Left, Right
DENSE = np.linspace(0.0, 1.0, 65)  # where the whole motion is sampled to place and size the figure
MARGIN = 0.03  # frame-side units kept free around the figure


@dataclass
class Body:
    """One video's figure: proportions (body units), colours, background and placement draws."""

    background: np.ndarray
    shirt: np.ndarray
    sleeves: np.ndarray
    trousers: np.ndarray
    skin: np.ndarray
    torso: float
    neck: float
    head: float  # head radius
    upper: float
    fore: float
    thigh: float
    shin: float
    shoulders: float  # half-width
    hips: float  # half-width
    limb: float  # limb radius
    trunk: float  # torso radius
    scale: float  # frame-side units per body unit, before fitting
    ground: float  # y of the ground line, frame-side units
    place: float  # 0..1: where in the room left the figure stands
    rest: dict[str, float] = field(default_factory=dict)  # resting angles: a, b, g


def body(rng: np.random.Generator, size: int) -> Body:
    """Draw the background, colours, proportions and resting posture of one figure."""
    background = _background(rng, size)
    shirt, trousers, skin = _colours(rng, background, 3)
    shade = rng.uniform(0.68, 0.82) if rng.random() < 0.5 else rng.uniform(1.2, 1.35)
    sleeves = np.clip(shirt * shade + (20.0 if shade > 1 else 0.0), 0, 255)
    u = rng.uniform(0, 1, size=16)

    def lerp(k: int, lo: float, hi: float) -> float:  # the k-th uniform drawn above, mapped to [lo, hi]
        return float(lo + (hi - lo) * u[k])

    rest = {"a": lerp(13, 7, 16) * DEG, "b": -lerp(14, 0, 12) * DEG, "g": lerp(15, 2, 7) * DEG}
    return Body(background, shirt, sleeves, trousers, skin, torso=lerp(0, 0.30, 0.38), neck=lerp(1, 0.02, 0.05),
                head=lerp(2, 0.065, 0.09), upper=lerp(3, 0.17, 0.22), fore=lerp(4, 0.15, 0.2),
                thigh=lerp(5, 0.22, 0.27), shin=lerp(6, 0.21, 0.26), shoulders=lerp(7, 0.07, 0.11),
                hips=lerp(8, 0.04, 0.07), limb=lerp(9, 0.024, 0.038), trunk=lerp(10, 0.045, 0.07),
                scale=lerp(11, 0.5, 0.7), ground=lerp(12, 0.84, 0.95), place=float(rng.random()), rest=rest)


class Pose(dict):
    """Joint angles and body offsets per frame (arrays broadcast to the clock's shape), plus ``facing``."""

    facing: int = 0

    @classmethod
    def rest(cls, fig: Body, tau: np.ndarray, facing: int = 0) -> Pose:
        pose = cls()
        pose.facing = facing
        z = np.zeros_like(np.asarray(tau, dtype=np.float64))
        for side in "LR":
            pose["a" + side] = z + fig.rest["a"]
            pose["b" + side] = z + fig.rest["b"]
            pose["g" + side] = z + fig.rest["g"]
            pose["k" + side] = z - fig.rest["g"]  # shins upright
        for key in ("tilt", "fall", "dx", "lift"):
            pose[key] = z.copy()
        return pose


def _dir(m: float, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vector (x, y-up) of a limb at ``angle`` from hanging, mirrored by ``m`` (−1: left side)."""
    return m * np.sin(angle), -np.cos(angle)


def joints(fig: Body, pose: Pose) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Joint positions in body units (x right, y up), grounded: the lowest point (limbs' and head's
    thickness included) at y = ``lift``. Keys: hip, neck, head, and sL/sR, eL/eR, hL/hR (shoulder, elbow,
    hand), pL/pR, kL/kR, fL/fR (hip joint, knee, foot)."""
    tilt = pose["tilt"]
    ux, uy = np.sin(tilt), np.cos(tilt)  # up along the torso
    rx, ry = np.cos(tilt), -np.sin(tilt)  # the torso's right
    front = pose.facing == 0
    zero = np.zeros_like(tilt)
    pts: dict[str, tuple[np.ndarray, np.ndarray]] = {"hip": (zero, zero)}
    neck = (fig.torso * ux, fig.torso * uy)
    pts["neck"] = neck
    reach = fig.torso + fig.neck + fig.head
    pts["head"] = (reach * ux, reach * uy)
    for side, sign in (("L", -1.0), ("R", 1.0)):
        m = sign if front else float(pose.facing)
        w = fig.shoulders * sign if front else 0.0
        s = (neck[0] + w * rx, neck[1] + w * ry)
        lx, ly = _dir(m, pose["a" + side])
        e = (s[0] + fig.upper * (lx * rx + ly * ux), s[1] + fig.upper * (lx * ry + ly * uy))
        lx, ly = _dir(m, pose["a" + side] + pose["b" + side])
        h = (e[0] + fig.fore * (lx * rx + ly * ux), e[1] + fig.fore * (lx * ry + ly * uy))
        p = (zero + (fig.hips * sign if front else 0.0), zero)
        lx, ly = _dir(m, pose["g" + side])
        k = (p[0] + fig.thigh * lx, p[1] + fig.thigh * ly)
        lx, ly = _dir(m, pose["g" + side] + pose["k" + side])
        f = (k[0] + fig.shin * lx, k[1] + fig.shin * ly)
        pts.update({"s" + side: s, "e" + side: e, "h" + side: h, "p" + side: p, "k" + side: k, "f" + side: f})
    fall = pose["fall"]
    if np.any(fall):
        # Turn about the foot the figure falls towards (clockwise on screen is clockwise in x-right, y-up too).
        px = np.where(fall >= 0, pts["fR"][0], pts["fL"][0])
        py = np.where(fall >= 0, pts["fR"][1], pts["fL"][1])
        c, s_ = np.cos(fall), np.sin(fall)
        pts = {n: (px + (x - px) * c + (y - py) * s_, py - (x - px) * s_ + (y - py) * c) for n, (x, y) in pts.items()}
    bottom = np.minimum(np.min([y for n, (_, y) in pts.items() if n != "head"], axis=0) - fig.limb,
                        pts["head"][1] - fig.head)
    return {n: (x + pose["dx"], y - bottom + pose["lift"]) for n, (x, y) in pts.items()}


def _extent(fig: Body, pts: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    xs = np.concatenate([x for _, (x, _) in pts.items()])
    ys = np.concatenate([y for _, (_, y) in pts.items()])
    pad = max(fig.head, fig.limb, fig.trunk)
    return float(xs.min() - pad), float(xs.max() + pad), float(ys.max() + pad)


def draw_figure(fig: Body, pose: Pose, dense: Pose, size: int) -> tuple[list[Layer], list[np.ndarray]]:
    """The figure's layers at ``pose`` (one per part: legs, torso, head, arms; in profile the far limbs behind),
    all instance 1, sized and placed so that every pose of ``dense`` (the whole motion) fits the frame;
    and the figure's colours."""
    lo, hi, top = _extent(fig, joints(fig, dense))
    room = 1.0 - 2 * MARGIN
    scale = min(fig.scale, room / max(hi - lo, 1e-6), (fig.ground - MARGIN) / max(top, 1e-6))
    x0 = MARGIN - scale * lo + fig.place * max(room - scale * (hi - lo), 0.0)
    pts = {n: np.stack([x0 + scale * x, fig.ground - scale * y], axis=-1) for n, (x, y) in joints(fig, pose).items()}
    limb, arm = fig.limb * scale, fig.limb * scale * 0.9

    def leg(s: str) -> list:
        return [(pts["p" + s], pts["k" + s], limb), (pts["k" + s], pts["f" + s], limb)]

    def arms(s: str) -> list:
        return [(pts["s" + s], pts["e" + s], arm), (pts["e" + s], pts["h" + s], arm)]

    trunk = [(pts["hip"], pts["neck"], fig.trunk * scale)]
    head = [(pts["head"], pts["head"], fig.head * scale)]
    if pose.facing == 0:
        groups = [(leg("L") + leg("R") + [(pts["pL"], pts["pR"], limb)], fig.trousers),
                  (trunk + [(pts["sL"], pts["sR"], limb)], fig.shirt), (head, fig.skin),
                  (arms("L") + arms("R"), fig.sleeves)]
    else:
        groups = [(arms("L"), fig.sleeves * 0.7), (leg("L"), fig.trousers * 0.7), (trunk, fig.shirt), (head, fig.skin),
                  (leg("R"), fig.trousers), (arms("R"), fig.sleeves)]
    return capsule_layers(groups, size, instance=1), [fig.shirt, fig.trousers, fig.skin, fig.sleeves]


def reach_angles(fig: Body, side: str, hand: tuple[float, float]) -> tuple[float, float]:
    """Shoulder angle and elbow bend (front view, upright torso) that put the ``side`` hand at ``hand``
    (body units, relative to the neck), elbow outwards; a target out of reach is pulled within reach."""
    m = -1.0 if side == "L" else 1.0
    sx, sy = m * fig.shoulders, 0.0
    tx, ty = hand[0] - sx, hand[1] - sy
    d = min(max(math.hypot(tx, ty), abs(fig.upper - fig.fore) + 1e-3), fig.upper + fig.fore - 1e-3)
    base = math.atan2(ty, tx)
    spread = math.acos((fig.upper ** 2 + d * d - fig.fore ** 2) / (2 * fig.upper * d))
    best = None
    for bend in (spread, -spread):
        t1 = base + bend
        ex, ey = fig.upper * math.cos(t1), fig.upper * math.sin(t1)
        t2 = math.atan2(ty - ey, tx - ex)
        if best is None or m * ex > m * best[0]:
            best = (ex, t1, t2)
    _, t1, t2 = best
    # Absolute direction (cos t, sin t) = (m sin a, −cos a): a = atan2(m cos t, −sin t).
    a1 = math.atan2(m * math.cos(t1), -math.sin(t1))
    a2 = math.atan2(m * math.cos(t2), -math.sin(t2))
    bend = (a2 - a1 + math.pi) % (2 * math.pi) - math.pi
    return a1, bend
