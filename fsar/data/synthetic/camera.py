"""The ``camera`` family: a camera moving over a static textured scene larger than the frame; a class is the
camera's trajectory.

Each video draws a procedural texture (colour noise at several scales down to about two pixels, so that every
part of the frame moves visibly) and 5–10 static shapes lying on it, and films them with a camera that pans,
zooms, rolls, arcs, orbits or shakes along the class's path: the eight pan directions (as four reverse pairs)
and zooming and rolling, each steady, speeding up, slowing down or stopping; two-segment paths (pan then turn,
pan then zoom, zoom then roll, roll then pan, ...), arcs, orbits about a point off the centre, shaking then
panning, zooming while panning, zigzagging. Directions are the camera's: panning right moves the scene left
on the screen. Class ``2k`` is the forward path of pair ``k``, ``2k + 1`` its literal time reverse.

Why it is structurally different from ``shapes``: there the background is still and one or two objects move
over it; here nothing in the scene moves, every pixel moves at once, and the class is a global, coherent
motion field (translation, divergence, rotation and their sequences) that no single object carries; what is in
the scene has nothing to do with the class.

Masks (``fsar-masks/1``): the class concerns the whole scene, so the masks mark its static objects, each its
own instance ``1 .. n`` in the scene's order (ids are fixed per video: an object keeps its id whether or not it
is in view); the texture is background (0), and so are distractors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np

from fsar.data.synthetic.layers import Drawn, phase, progress, render_family, smooth, window
from fsar.data.synthetic.library import MotionClass, pair_classes
from fsar.data.synthetic.render import Rendering
from fsar.data.synthetic.scene import _COMPACT, _ELONGATED, SHAPES, TAU, _colours, _Object, _signed_distance

VERSION = 1  # bump when a camera video or class changes (synth.json's family_version)
WORLD = 2.5  # the texture is defined over [-WORLD, WORLD]² world units (1 unit: the frame side at zoom 1)
DENSE = np.linspace(0.0, 1.0, 65)  # where the path is sampled to size the texture and lay out the objects
_SHAPES = _COMPACT + _ELONGATED


@dataclass
class _World:
    """One video's scene: texture octaves (random grids over the world), base colour, static objects."""

    base: np.ndarray  # (3,) mean colour
    octaves: list[tuple[float, np.ndarray]]  # (cell size in world units, grid (n, n, 3)) per scale
    objects: list[_Object]  # radius in world units
    spots: np.ndarray  # (n, 2) in [0, 1]: where in the filmed area each object lies


def world(rng: np.random.Generator, size: int) -> _World:
    """Draw the texture and the static objects of one video."""
    base = rng.uniform(45, 150) + rng.uniform(-25, 25, size=3)
    octaves = []
    for cell, lo, hi, colour in [(2.2 / size, 5, 14, False), (6.5 / size, 6, 18, True), (0.3, 8, 24, True),
                                 (1.0, 10, 30, True)]:
        n = int(math.ceil(2 * WORLD / cell)) + 2
        amp = rng.uniform(lo, hi)
        grid = rng.normal(0, 1, size=(n, n, 1)) * amp
        if colour:
            grid = grid + rng.normal(0, 1, size=(n, n, 3)) * amp * rng.uniform(0.2, 0.6)
        octaves.append((cell, grid.astype(np.float32)))
    count = int(rng.integers(5, 11))
    colours = _colours(rng, base.reshape(1, 1, 3), count)
    objects = [_Object(_SHAPES[int(rng.integers(len(_SHAPES)))], c, float(rng.uniform(0.05, 0.11)),
                       float(rng.uniform(0, TAU))) for c in colours]
    return _World(base, octaves, objects, rng.uniform(0.0, 1.0, size=(count, 2)))


# ---------------------------------------------------------------- camera paths
def _rot(phi, x, y):
    c, s = np.cos(phi), np.sin(phi)
    return c * x - s * y, s * x + c * y


_DIRS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0),
         "down_right": (math.sqrt(0.5), math.sqrt(0.5)), "down_left": (-math.sqrt(0.5), math.sqrt(0.5))}


def _apply(state, seg, s):
    """Move the camera ``state`` (cx, cy, log zoom, roll; arrays) by segment ``seg`` at its progress ``s``.
    Pans are along the screen's axes (rotated with the roll, scaled by the zoom), so that "right" always moves
    the picture left; a later segment's progress is 0 until the earlier ones are done."""
    cx, cy, lz, phi = state
    kind, p = seg[0], seg[1]
    z = np.exp(lz)
    if kind in ("pan", "arc", "zigzag", "zoompan", "shake"):
        dx, dy = _DIRS[p["d"]] if "d" in p else (0.0, 0.0)
        ox, oy = dx * p.get("dist", 0.0) * s, dy * p.get("dist", 0.0) * s
        if kind == "arc":  # bulge to the side ``side`` (+1: the screen's left of the motion)
            bump = p["bulge"] * np.sin(math.pi * s)
            ox, oy = ox + dy * bump, oy - dx * bump
        elif kind == "zigzag":
            tri = 1.0 - np.abs(2.0 * np.mod(p["zigs"] * s, 1.0) - 1.0)  # 0 at both ends
            ox, oy = ox - dy * p["amp"] * tri, oy + dx * p["amp"] * tri
        elif kind == "shake":
            ox = ox + sum(a * np.sin(TAU * f * s) for a, f in p["x"])
            oy = oy + sum(a * np.sin(TAU * f * s) for a, f in p["y"])
        wx, wy = _rot(phi, ox, oy)
        cx, cy = cx + wx / z, cy + wy / z
        if kind == "zoompan":
            lz = lz + math.log(p["gain"]) * s
    elif kind == "zoom":
        lz = lz + math.log(p["gain"]) * s
    elif kind == "roll":
        phi = phi + p["angle"] * s
    elif kind == "orbit":  # turn about a point held still on the screen, ``side`` of the centre
        px, py = _rot(phi, p["side"] * p["offset"], 0.0)
        px, py = cx + px / z, cy + py / z
        rx, ry = _rot(p["angle"] * s, cx - px, cy - py)
        cx, cy, phi = px + rx, py + ry, phi + p["angle"] * s
    return cx, cy, lz, phi


_PROFILES = {"steady": lambda u, m: u, "speeding": lambda u, m: u * u, "slowing": lambda u, m: 1 - (1 - u) ** 2,
             "stop": lambda u, m: np.clip(u / m, 0.0, 1.0)}


def _segment(rng, kind, arg, share=1.0):
    """Draw one segment's parameters (``share`` < 1: one of several, a little shorter)."""
    if kind == "pan":
        return ("pan", {"d": arg, "dist": float(rng.uniform(0.45, 0.8) * share)})
    if kind == "zoom":
        gain = float(rng.uniform(1.7, 2.3) ** share)
        return ("zoom", {"gain": gain if arg == "in" else 1 / gain})
    if kind == "roll":
        angle = float(rng.uniform(70, 120) * share) * math.pi / 180
        return ("roll", {"angle": angle if arg == "cw" else -angle})
    if kind == "arc":
        d, side = arg
        dist = float(rng.uniform(0.5, 0.8))
        return ("arc", {"d": d, "dist": dist, "bulge": side * dist * float(rng.uniform(0.25, 0.4))})
    if kind == "orbit":
        spin, side = arg
        angle = float(rng.uniform(60, 100)) * math.pi / 180
        return ("orbit", {"angle": angle if spin == "cw" else -angle, "side": side, "offset": float(rng.uniform(0.25, 0.35))})
    if kind == "shake":
        amp = float(rng.uniform(0.02, 0.035))
        waves = [(amp * float(rng.uniform(0.5, 1.0)) * float(rng.choice([-1, 1])), int(rng.integers(3, 7))) for _ in range(4)]
        return ("shake", {"x": waves[:2], "y": waves[2:]})
    if kind == "zoompan":
        return ("zoompan", {"d": arg, "dist": float(rng.uniform(0.35, 0.6)), "gain": float(rng.uniform(1.6, 2.1))})
    if kind == "zigzag":
        return ("zigzag", {"d": arg, "dist": float(rng.uniform(0.5, 0.8)), "amp": float(rng.uniform(0.08, 0.14)),
                           "zigs": int(rng.integers(2, 4))})
    raise KeyError(kind)


def _path_law(rng, scene, *, segments, profile=None):
    """A camera path: ``segments`` (kind, arg) one after another over a random window of the clock, one
    segment eased by ``profile``, several each eased in and out over its share (shake: linear, then a rest)."""
    start, length = window(rng, 0.7, 0.95)
    base = (0.0, 0.0, math.log(float(rng.uniform(0.85, 1.15))), float(rng.uniform(-10, 10)) * math.pi / 180)
    knee = float(rng.uniform(0.35, 0.55))
    share = 1.0 if len(segments) == 1 else 0.7
    segs = [_segment(rng, kind, arg, share) for kind, arg in segments]

    def law(tau):
        u = progress(tau, start, length)
        state = tuple(np.zeros_like(u) + b for b in base)
        if len(segs) == 1:
            parts = [_PROFILES[profile or "steady"](u, knee)]
        elif segs[0][0] == "shake":
            parts = [phase(u, 0.0, 0.45), smooth(phase(u, 0.5, 1.0))]
        else:
            parts = [smooth(phase(u, 0.0, 0.5)), smooth(phase(u, 0.5, 1.0))]
        for seg, s in zip(segs, parts, strict=True):
            state = _apply(state, seg, s)
        return state
    return law


# ---------------------------------------------------------------- the class library
_BASES: list[tuple[str, str, str, str, int]] = []
_LAWS: dict[str, partial] = {}
_OPP = {"right": "left", "left": "right", "down": "up", "up": "down", "in": "out", "cw": "counter-clockwise"}
_PAN = {"right": "right", "down": "down", "down_right": "down and right", "down_left": "down and left"}
_BACK = {"right": "left", "down": "up", "down_right": "up and left", "down_left": "up and right"}


def _base(group, key, forward, backward, segments, profile=None):
    _BASES.append((group, key, forward, backward, 0))
    _LAWS[key] = partial(_path_law, segments=segments, profile=profile)


_LINES = [(f"pan_{d}", [("pan", d)], f"panning {_PAN[d]}", f"panning {_BACK[d]}") for d in _PAN]
_LINES += [("zoom_in", [("zoom", "in")], "zooming in", "zooming out"),
           ("roll_cw", [("roll", "cw")], "rolling clockwise", "rolling counter-clockwise")]
for _key, _segs, _f, _b in _LINES:
    _group = _key.split("_")[0]
    _base(_group, _key, _f, _b, _segs, "steady")
    _base(_group, f"{_key}_speeding", f"{_f}, speeding up", f"{_b}, slowing down", _segs, "speeding")
    _base(_group, f"{_key}_slowing", f"{_f}, slowing down", f"{_b}, speeding up", _segs, "slowing")
    _base(_group, f"{_key}_stop", f"{_f}, then stopping", f"holding still, then {_b}", _segs, "stop")
for _a, _b2 in [("right", "down"), ("right", "up"), ("left", "down"), ("left", "up")]:
    _base("turn", f"turn_{_a}_{_b2}", f"panning {_a}, then {_b2}", f"panning {_OPP[_b2]}, then {_OPP[_a]}",
          [("pan", _a), ("pan", _b2)])
for _d in ("right", "left", "down", "up"):
    _base("pan_zoom", f"pan_{_d}_zoom", f"panning {_d}, then zooming in", f"zooming out, then panning {_OPP[_d]}",
          [("pan", _d), ("zoom", "in")])
    _base("pan_zoom", f"zoom_pan_{_d}", f"zooming in, then panning {_d}", f"panning {_OPP[_d]}, then zooming out",
          [("zoom", "in"), ("pan", _d)])
for _spin, _other in (("cw", "ccw"), ("ccw", "cw")):
    _w, _o = ("clockwise", "counter-clockwise") if _spin == "cw" else ("counter-clockwise", "clockwise")
    _base("zoom_roll", f"zoom_roll_{_spin}", f"zooming in, then rolling {_w}", f"rolling {_o}, then zooming out",
          [("zoom", "in"), ("roll", _spin)])
    _base("zoom_roll", f"roll_{_spin}_zoom", f"rolling {_w}, then zooming in", f"zooming out, then rolling {_o}",
          [("roll", _spin), ("zoom", "in")])
for _d in ("right", "left", "down", "up"):
    _base("roll_pan", f"roll_pan_{_d}", f"rolling clockwise, then panning {_d}",
          f"panning {_OPP[_d]}, then rolling counter-clockwise", [("roll", "cw"), ("pan", _d)])
for _d, _side, _f, _b in [("right", 1, "arcing right over the top", "arcing left over the top"),
                          ("right", -1, "arcing right along the bottom", "arcing left along the bottom"),
                          ("down", -1, "arcing down on the left", "arcing up on the left"),
                          ("down", 1, "arcing down on the right", "arcing up on the right")]:
    _base("arc", f"arc_{_d}_{_side}", _f, _b, [("arc", (_d, _side))])
for _name, _side in (("left", -1), ("right", 1)):
    _base("orbit", f"orbit_{_name}", f"orbiting clockwise around a point on the {_name}",
          f"orbiting counter-clockwise around a point on the {_name}", [("orbit", ("cw", _side))])
for _d in ("right", "left", "down", "up"):
    _base("shake", f"shake_pan_{_d}", f"shaking, then panning {_d}", f"panning {_OPP[_d]}, then shaking",
          [("shake", None), ("pan", _d)])
    _base("zoom_pan", f"zoompan_{_d}", f"zooming in while panning {_d}", f"zooming out while panning {_OPP[_d]}",
          [("zoompan", _d)])
_base("zigzag", "zigzag_right", "zigzagging right", "zigzagging left", [("zigzag", "right")])

_LIBRARY = pair_classes(_BASES)


def camera_classes() -> list[MotionClass]:
    """The camera library (118 classes, 59 time-reverse pairs), in id order."""
    return list(_LIBRARY)


def camera_law(key: str, rng: np.random.Generator, scene: _World):
    """Draw the parameters of camera path ``key``; returns (cx, cy, log zoom, roll) as a function of the clock."""
    return _LAWS[key](rng, scene)


# ---------------------------------------------------------------- filming
def _lerp_matrix(coords: np.ndarray) -> tuple[np.ndarray, int]:
    """(len(coords), n) weights interpolating a grid linearly at fractional grid ``coords``, restricted to the
    cells they touch: the matrix and the first cell's index."""
    lo = int(np.floor(coords.min()))
    hi = int(np.floor(coords.max())) + 2
    m = np.zeros((len(coords), hi - lo), dtype=np.float32)
    i = np.floor(coords).astype(int)
    frac = (coords - i).astype(np.float32)
    rows = np.arange(len(coords))
    m[rows, i - lo] = 1 - frac
    m[rows, i - lo + 1] += frac
    return m, lo


def _texture(scene: _World, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The texture (len(y), len(x), 3) at the world grid ``x`` × ``y`` (separable: one matrix product per
    octave and channel, over the cells in view only)."""
    image = np.zeros((len(y), len(x), 3), dtype=np.float32) + scene.base.astype(np.float32)
    for cell, grid in scene.octaves:
        top = grid.shape[0] - 2 - 1e-6  # a path wider than the world (never drawn) would reuse its edge
        mx, x0 = _lerp_matrix(np.clip((x + WORLD) / cell, 0, top))
        my, y0 = _lerp_matrix(np.clip((y + WORLD) / cell, 0, top))
        block = grid[y0:y0 + my.shape[1], x0:x0 + mx.shape[1]]
        for c in range(block.shape[-1]):
            plane = my @ block[..., c] @ mx.T
            if block.shape[-1] == 1:
                image += plane[..., None]
            else:
                image[..., c] += plane
    return image


def _paint_objects(scene: _World, raster: np.ndarray, ids: np.ndarray, cover: np.ndarray, origin: np.ndarray,
                   res: float, spots: np.ndarray) -> None:
    """Paint the static objects (world positions ``spots``) into the texture ``raster``, their coverage
    (all objects together) into ``cover`` and their instance ids (1 .., where an object covers at least half a
    raster pixel; later ones on top) into ``ids``."""
    for k, (obj, (ox, oy)) in enumerate(zip(scene.objects, spots, strict=True)):
        shape = SHAPES[obj.shape]
        reach = shape.reach * obj.radius + 2 / res
        x0, x1 = (max(int((v - origin[0]) * res), 0) for v in (ox - reach, ox + reach))
        y0, y1 = (max(int((v - origin[1]) * res), 0) for v in (oy - reach, oy + reach))
        x1, y1 = min(x1 + 1, raster.shape[1]), min(y1 + 1, raster.shape[0])
        if x0 >= x1 or y0 >= y1:
            continue
        gx = (origin[0] + np.arange(x0, x1) / res - ox)[None, :]
        gy = (origin[1] + np.arange(y0, y1) / res - oy)[:, None]
        c, s = math.cos(obj.angle), math.sin(obj.angle)
        sd = _signed_distance(shape, c * gx + s * gy, c * gy - s * gx, obj.radius, obj.radius)
        alpha = np.clip(0.5 - sd * res, 0.0, 1.0).astype(np.float32)
        region = raster[y0:y1, x0:x1]
        region += alpha[..., None] * (np.asarray(obj.colour, dtype=np.float32) - region)
        cover[y0:y1, x0:x1] += alpha * (1 - cover[y0:y1, x0:x1])
        ids[y0:y1, x0:x1][alpha >= 0.5] = k + 1


def _film(scene: _World, law, tau: np.ndarray, size: int) -> Drawn:
    cx, cy, lz, phi = law(DENSE)
    z = np.exp(lz)
    # The filmed area: every frame corner over the whole path; the texture is rastered over it at a
    # resolution no coarser than the screen's at the path's largest zoom, the objects painted in.
    corners = [_rot(phi, sx * 0.5, sy * 0.5) for sx in (-1, 1) for sy in (-1, 1)]
    wx = np.concatenate([cx + ox / z for ox, _ in corners])
    wy = np.concatenate([cy + oy / z for _, oy in corners])
    lo, hi = np.array([wx.min(), wy.min()]), np.array([wx.max(), wy.max()])
    centre = (lo + hi) / 2  # the path is centred in the world, whose texture covers it
    res = size * max(1.0, float(z.max()))
    origin, n = lo - 2 / res, np.ceil((hi - lo) * res).astype(int) + 5
    raster = _texture(scene, origin[0] + np.arange(n[0]) / res - centre[0],
                      origin[1] + np.arange(n[1]) / res - centre[1])
    ids = np.zeros(raster.shape[:2], dtype=np.uint8)
    cover = np.zeros(raster.shape[:2], dtype=np.float32)
    # Objects lie over the filmed area's middle 80 %, denser towards its centre: some stay in view at a
    # zoom's tight end.
    d = 2 * scene.spots - 1
    _paint_objects(scene, raster, ids, cover, origin, res, centre + np.sign(d) * np.abs(d) ** 1.6 * (hi - lo) * 0.4)

    # Each frame samples the raster where its pixels look (bilinear; the objects' coverage too, so that a
    # pixel's share of object colour is known; ids: the nearest raster pixel).
    cx, cy, lz, phi = (np.asarray(a, dtype=np.float32) for a in law(tau))
    z = np.exp(lz)[:, None, None] / np.float32(res)
    p = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    px, py = p[None, None, :], p[None, :, None]
    c, s = np.cos(phi)[:, None, None], np.sin(phi)[:, None, None]
    u = (cx[:, None, None] - np.float32(origin[0])) * np.float32(res) + (c * px - s * py) / z
    v = (cy[:, None, None] - np.float32(origin[1])) * np.float32(res) + (s * px + c * py) / z
    np.clip(u, 0, n[0] - 1.001, out=u)
    np.clip(v, 0, n[1] - 1.001, out=v)
    i, j = v.astype(np.intp), u.astype(np.intp)
    fy, fx = v - i, u - j
    idx = i * n[0] + j
    planes = [raster[..., ch].ravel() for ch in range(3)] + [cover.ravel()]
    sampled = np.empty((len(planes), *u.shape), dtype=np.float32)
    for ch, plane in enumerate(planes):
        top = plane.take(idx) * (1 - fx) + plane.take(idx + 1) * fx
        bottom = plane.take(idx + n[0]) * (1 - fx) + plane.take(idx + n[0] + 1) * fx
        sampled[ch] = top * (1 - fy) + bottom * fy
    background = np.clip(np.moveaxis(sampled[:3], 0, -1), 0, 255)
    seen = ids.ravel().take((v + 0.5).astype(np.intp) * n[0] + (u + 0.5).astype(np.intp))
    return Drawn(background, [], [o.colour for o in scene.objects], ids=seen, shares=sampled[3])


def render_video(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int, clutter: int = 0,
                 misalign: float = 0.0, masks: bool = False) -> Rendering:
    """One video of a camera class (draw order and variants as in :mod:`fsar.data.synthetic.layers`)."""
    return render_family(motion_class, rng, frames=frames, size=size, clutter=clutter, misalign=misalign, masks=masks,
                         scene=world, law=camera_law, draw=_film)
