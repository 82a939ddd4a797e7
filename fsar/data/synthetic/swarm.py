"""The ``swarm`` family: 3–6 objects moving together; a class is their collective motion.

Each video draws 3–6 small shapes (their own shapes, colours and sizes) over a background
(:mod:`fsar.data.synthetic.swarm_formations`), and moves them as a group: from one formation to another (a
scatter, a cluster, a row, a column, a ring, two groups side by side or one above the other), all at once or
one by one; orbiting a centre or spiralling in; following a leader along a wave, a diagonal or a loop; chasing
and catching one of them; one charging in and scattering the rest; swapping places in pairs; hopping over a
row; colliding as two groups; a row or column moving; a wave passing along a row; a row turning into a column.
Class ``2k`` is the forward motion of pair ``k``, ``2k + 1`` its literal time reverse.

Why it is structurally different from ``shapes``: there the class is one object's path (or one object acting on
another); here every object follows its own, unremarkable path (a straight line in a random direction, a short
arc) and the class exists only in how the paths relate: where they converge, the order in which they move, who
follows whom. No single object's track tells the class.

Masks (``fsar-masks/1``): each object is its own instance, ``1 .. n`` in the scene's order; 0 is the background
and the distractors.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from fsar.data.synthetic.layers import Drawn, TrackLayer, phase, progress, render_family, smooth, window
from fsar.data.synthetic.library import MotionClass, pair_classes
from fsar.data.synthetic.render import Rendering
from fsar.data.synthetic.scene import TAU, _Track
from fsar.data.synthetic.swarm_formations import FORMATIONS, Group, along, formation, group, transition_law

VERSION = 1  # bump when a swarm video or class changes (synth.json's family_version)
DENSE = np.linspace(0.0, 1.0, 129)  # where motions defined by integration (chasing) are solved


def _margin(scene: Group) -> float:
    return scene.radius * 1.3 + 0.02


def _rotate(x, y, angle):
    """Rotate offsets by ``angle`` (positive: clockwise on the screen, whose y points down)."""
    c, s = np.cos(angle), np.sin(angle)
    return c * x - s * y, s * x + c * y


def _on_clock(rng, lo=0.7, hi=0.95):
    start, length = window(rng, lo, hi)
    return lambda tau: progress(tau, start, length)


def _sampled(track: np.ndarray, clock):
    """A motion solved on the dense grid (n, len(DENSE), 2) as a function of the clock (linear in between)."""
    def law(tau):
        u = clock(tau)
        return np.stack([np.stack([np.interp(u, DENSE, p[:, 0]), np.interp(u, DENSE, p[:, 1])], -1) for p in track])
    return law


# ---------------------------------------------------------------- collective motions (forward members)
def orbit_law(rng, scene, *, spin, inward):
    n, m = len(scene.objects), _margin(scene)
    clock = _on_clock(rng)
    radius = float(rng.uniform(0.2, 0.3))
    centre = rng.uniform(m + radius, 1 - m - radius, size=2)
    start = float(rng.uniform(0, TAU)) + TAU * np.arange(n) / n
    turn = spin * float(rng.uniform(120, 220)) * math.pi / 180
    tight = max(0.8 * scene.radius, 1.45 * scene.radius * n / TAU)

    def law(tau):
        s = smooth(clock(tau))
        rad = (radius + (tight - radius) * s if inward else radius + 0 * s)[None, :, None]
        angle = start[:, None] + turn * s[None, :]
        return centre + rad * np.stack([np.cos(angle), np.sin(angle)], -1)
    return law


def follow_law(rng, scene, *, path):
    n, m, r = len(scene.objects), _margin(scene), scene.radius
    clock = _on_clock(rng, 0.8, 1.0)
    x = np.linspace(m, 1 - m, 129)
    if path in ("wave_right", "wave_down"):
        mid, amp = float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.1, 0.18))
        cycles, shift = float(rng.uniform(1.0, 1.6)), float(rng.uniform(0, TAU))
        y = np.clip(mid + amp * np.sin(TAU * cycles * (x - m) / (1 - 2 * m) + shift), m, 1 - m)
        pts = np.stack([x, y] if path == "wave_right" else [y, x], -1)
    elif path == "diagonal":
        lo, hi = rng.uniform(m, 0.3, size=2), rng.uniform(0.7, 1 - m, size=2)
        pts = np.stack([np.linspace(lo[0], hi[0], 129), np.linspace(lo[1], hi[1], 129)], -1)
    else:  # a clockwise loop, four fifths of a turn
        radius = float(rng.uniform(0.24, 0.32))
        centre = rng.uniform(m + radius, 1 - m - radius, size=2)
        angle = float(rng.uniform(0, TAU)) + np.linspace(0, 0.8 * TAU, 129)
        pts = centre + radius * np.stack([np.cos(angle), np.sin(angle)], -1)
    length = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
    gap = min(float(rng.uniform(2.4, 3.0)) * r / length, 0.55 / max(n - 1, 1))  # as a fraction of the path
    behind = (n - 1 - np.arange(n)) * gap  # object 0 leads

    def law(tau):
        s = clock(tau)
        return along(pts, s[None, :] * (1 - (n - 1) * gap) + behind[:, None])
    return law


def chase_law(rng, scene, *, d):
    """All chase object 0 across the frame and stop around it (solved step by step on the dense grid)."""
    n, m, r = len(scene.objects), _margin(scene), scene.radius
    clock = _on_clock(rng)
    lane = float(rng.uniform(0.3, 0.7))
    bend = float(rng.uniform(-0.12, 0.12))
    start = float(rng.uniform(0.3, 0.4))
    chasers = np.stack([rng.uniform(m, 0.25, size=n - 1), rng.uniform(m, 1 - m, size=n - 1)], -1)
    runner = np.stack([start + (1 - m - start) * DENSE, lane + bend * np.sin(math.pi * DENSE)], -1)
    speed = 1.5 * (1 - m - start + 0.3) / (len(DENSE) - 1)
    track = np.empty((n, len(DENSE), 2))
    track[0] = runner
    pos = chasers.copy()
    for i in range(len(DENSE)):
        track[1:, i] = pos
        gap = runner[min(i + 1, len(DENSE) - 1)] - pos
        dist = np.linalg.norm(gap, axis=1, keepdims=True)
        step = np.minimum(speed, np.maximum(dist - 2.3 * r, 0.0))
        pos = pos + gap / np.maximum(dist, 1e-9) * step
    if d == "down":
        track = track[..., ::-1]
    return _sampled(track, clock)


def charge_law(rng, scene):
    """Object 0 rushes from the left into a huddle of the others, who flee from it."""
    n, m, r = len(scene.objects), _margin(scene), scene.radius
    clock = _on_clock(rng)
    centre = rng.uniform([0.55, 0.35], [0.7, 0.65])
    spread = float(rng.uniform(0, TAU)) + TAU * np.arange(n - 1) / (n - 1)
    others = centre + max(0.8 * r, 1.45 * r * (n - 1) / TAU) * np.stack([np.cos(spread), np.sin(spread)], -1)
    jitter = rng.uniform(-0.5, 0.5, size=n - 1)
    charger = np.stack([m + (centre[0] - m) * np.minimum(DENSE / 0.75, 1.0), np.full_like(DENSE, centre[1])], -1)
    track = np.empty((n, len(DENSE), 2))
    track[0] = charger
    pos = others.copy()
    for i in range(len(DENSE)):
        track[1:, i] = pos
        away = pos - charger[i]
        dist = np.linalg.norm(away, axis=1)
        angle = np.arctan2(away[:, 1], away[:, 0]) + jitter
        push = 0.02 * np.clip((0.35 - dist) / 0.35, 0.0, 1.0)
        pos = np.clip(pos + push[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1), m, 1 - m)
    return _sampled(track, clock)


def _row(rng, scene, *, extra=0, turn=False):
    """A row's gap and first object's position, with room for ``extra`` more slots (or, with ``turn``, to turn
    upright about its middle)."""
    n, m, r = len(scene.objects), _margin(scene), scene.radius
    widest = min((1 - 2 * m) / (n - 1 + extra) * 0.95, 0.16)
    gap = float(rng.uniform(min(2.6 * r, widest), widest))
    span = (n - 1 + extra) * gap
    if turn:
        centre = rng.uniform(m + span / 2, 1 - m - span / 2, size=2)
        return gap, centre - np.array([(n - 1) * gap / 2, 0.0])
    return gap, np.array([rng.uniform(m, 1 - m - span), rng.uniform(0.3, 1 - m)])


def swap_law(rng, scene, *, spin):
    """Neighbours in a row swap places by turning half a turn about their middle (an odd one out stays)."""
    n = len(scene.objects)
    clock = _on_clock(rng)
    gap, first = _row(rng, scene)
    home = first + np.stack([np.arange(n) * gap, np.zeros(n)], -1)
    mid = home.copy()
    for i in range(0, n - 1, 2):
        mid[i] = mid[i + 1] = (home[i] + home[i + 1]) / 2

    def law(tau):
        angle = spin * math.pi * smooth(clock(tau))
        x, y = _rotate((home - mid)[:, 0, None], (home - mid)[:, 1, None], angle[None, :])
        return mid[:, None, :] + np.stack([x, y], -1)
    return law


def leapfrog_law(rng, scene):
    """The leftmost of a row hops over the others to the right end while they close up to the left."""
    n, m = len(scene.objects), _margin(scene)
    clock = _on_clock(rng)
    gap, first = _row(rng, scene, extra=1)
    height = min(float(rng.uniform(0.12, 0.2)), first[1] - m)
    home = first + np.stack([np.arange(n) * gap, np.zeros(n)], -1)
    end = home - np.array([gap, 0.0])
    end[0] = first + np.array([n * gap, 0.0])

    def law(tau):
        s = smooth(clock(tau))
        pos = home[:, None, :] + (end - home)[:, None, :] * s[None, :, None]
        pos[0, :, 1] -= height * np.sin(math.pi * s)
        return pos
    return law


def collide_law(rng, scene, *, axis):
    """Two groups rush into each other, then drift apart slowly, not as far."""
    n, r = len(scene.objects), scene.radius
    clock = _on_clock(rng)
    kind = "sides" if axis == "x" else "levels"
    pts = formation(rng, kind, n, r, apart=(0.3, 0.38))
    first = (n + 1) // 2
    a, b = pts[:first].mean(axis=0), pts[first:].mean(axis=0)
    unit = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
    reach = [float(np.linalg.norm(g - g.mean(axis=0), axis=1).max()) + r for g in (pts[:first], pts[first:])]
    contact = max(float(np.linalg.norm(b - a)) - sum(reach), 0.0)  # each group travels half of this
    back = contact * float(rng.uniform(0.25, 0.45))
    hit = float(rng.uniform(0.3, 0.4))

    def law(tau):
        u = clock(tau)
        close = contact / 2 * phase(u, 0.0, hit) - back / 2 * (1 - (1 - phase(u, hit, 1.0)) ** 2)
        side = np.where(np.arange(n) < first, 1.0, -1.0)[:, None, None]
        return pts[:, None, :] + side * unit * close[None, :, None]
    return law


def march_law(rng, scene, *, axis):
    n, m = len(scene.objects), _margin(scene)
    clock = _on_clock(rng)
    gap, first = _row(rng, scene)
    dist = float(rng.uniform(0.3, 0.5))
    line = np.arange(n) * gap - (n - 1) * gap / 2 + float(rng.uniform(m + (n - 1) * gap / 2, 1 - m - (n - 1) * gap / 2))
    at = float(rng.uniform(m, 1 - m - dist))

    def law(tau):
        s = smooth(clock(tau))
        across = np.broadcast_to(line[:, None], (n, len(s)))
        ahead = np.broadcast_to(at + dist * s, (n, len(s)))
        return np.stack([across, ahead] if axis == "y" else [ahead, across], -1)
    return law


def wave_law(rng, scene, *, axis):
    """A bump passes along a row (up) or a column (to the right), object by object."""
    n = len(scene.objects)
    clock = _on_clock(rng, 0.75, 1.0)
    gap, first = _row(rng, scene)
    home = first + np.stack([np.arange(n) * gap, np.zeros(n)], -1)
    amp = min(float(rng.uniform(0.08, 0.14)), first[1] - _margin(scene))
    width = 0.35
    if axis == "y":
        home = home[:, ::-1]
        amp = min(amp, 1 - _margin(scene) - home[:, 0].max())

    def law(tau):
        crest = -width + (1 + 2 * width) * clock(tau)
        rank = np.arange(n) / max(n - 1, 1)
        bump = amp * np.cos(np.clip((rank[:, None] - crest[None, :]) / width, -1, 1) * math.pi / 2) ** 2
        pos = np.broadcast_to(home[:, None, :], (n, len(crest), 2)).copy()
        if axis == "x":
            pos[..., 1] -= bump
        else:
            pos[..., 0] += bump
        return pos
    return law


def turn_law(rng, scene, *, spin):
    n = len(scene.objects)
    clock = _on_clock(rng)
    gap, first = _row(rng, scene, turn=True)
    home = first + np.stack([np.arange(n) * gap, np.zeros(n)], -1)
    mid = home.mean(axis=0)

    def law(tau):
        x, y = _rotate((home - mid)[:, 0, None], (home - mid)[:, 1, None], spin * math.pi / 2 * smooth(clock(tau)))
        return mid + np.stack([x, y], -1)
    return law


# ---------------------------------------------------------------- the class library
_VERB = {"scatter": "scattering", "cluster": "gathering into a cluster", "row": "lining up in a row",
         "column": "lining up in a column", "ring": "forming a ring", "sides": "splitting into groups side by side",
         "levels": "splitting into groups one above the other"}
_NOUN = {"scatter": "a scatter", "cluster": "a cluster", "row": "a row", "column": "a column", "ring": "a ring",
         "sides": "groups side by side", "levels": "groups one above the other"}
_BASES: list[tuple[str, str, str, str, int]] = []
_LAWS: dict[str, partial] = {}


def _base(group_, key, forward, backward, fn):
    _BASES.append((group_, key, forward, backward, 0))
    _LAWS[key] = fn


for _i, _a in enumerate(FORMATIONS):
    for _b in FORMATIONS[_i + 1:]:
        for _mode, _one in (("all at once", False), ("one by one", True)):
            _base("formation", f"{_a}_to_{_b}_{'one' if _one else 'all'}", f"{_VERB[_b]} from {_NOUN[_a]}, {_mode}",
                  f"{_VERB[_a]} from {_NOUN[_b]}, {_mode}",
                  partial(transition_law, source=_a, target=_b, one_by_one=_one))
for _spin, _w, _o in ((1, "clockwise", "counter-clockwise"), (-1, "counter-clockwise", "clockwise")):
    _base("spiral", f"spiral_{_spin}", f"spiralling in together {_w}", f"spiralling out together {_o}",
          partial(orbit_law, spin=_spin, inward=True))
_base("orbit", "orbit", "orbiting a centre clockwise", "orbiting a centre counter-clockwise",
      partial(orbit_law, spin=1, inward=False))
for _path, _f, _b in (("wave_right", "along a wave to the right", "along a wave to the left"),
                      ("wave_down", "along a wave downwards", "along a wave upwards"),
                      ("diagonal", "diagonally down and right", "diagonally up and left"),
                      ("loop", "round a loop clockwise", "round a loop counter-clockwise")):
    _base("follow", f"follow_{_path}", f"following the leader {_f}", f"following the leader {_b}",
          partial(follow_law, path=_path))
for _d, _f, _b in (("right", "rightwards", "leftwards"), ("down", "downwards", "upwards")):
    _base("chase", f"chase_{_d}", f"chasing one {_f} and catching it",
          f"one pulling away {_b} from the others as they fall back", partial(chase_law, d=_d))
_base("charge", "charge", "one charging in and scattering the others",
      "the others gathering as one backs out to the left", charge_law)
_base("swap", "swap", "neighbours swapping places clockwise", "neighbours swapping places counter-clockwise",
      partial(swap_law, spin=1))
_base("leapfrog", "leapfrog", "the leftmost of a row hopping over the others to the right end",
      "the rightmost of a row hopping over the others to the left end", leapfrog_law)
for _axis, _w in (("x", "sideways"), ("y", "vertically")):
    _base("collide", f"collide_{_axis}", f"two groups colliding {_w} and drifting apart",
          f"two groups drifting together {_w} and springing apart", partial(collide_law, axis=_axis))
_base("march", "march_y", "a row moving down", "a row moving up", partial(march_law, axis="y"))
_base("march", "march_x", "a column moving right", "a column moving left", partial(march_law, axis="x"))
_base("wave", "wave_x", "a wave running along a row to the right", "a wave running along a row to the left",
      partial(wave_law, axis="x"))
_base("wave", "wave_y", "a wave running down a column", "a wave running up a column", partial(wave_law, axis="y"))
for _spin, _w, _o in ((1, "clockwise", "counter-clockwise"), (-1, "counter-clockwise", "clockwise")):
    _base("turn", f"turn_{_spin}", f"a row turning {_w} into a column", f"a column turning {_o} into a row",
          partial(turn_law, spin=_spin))

_LIBRARY = pair_classes(_BASES)


def swarm_classes() -> list[MotionClass]:
    """The swarm library (124 classes, 62 time-reverse pairs), in id order."""
    return list(_LIBRARY)


def swarm_law(key: str, rng: np.random.Generator, scene: Group):
    """Draw the parameters of collective motion ``key``; returns positions (n, T, 2) as a function of the clock."""
    return _LAWS[key](rng, scene)


def _draw(scene: Group, law, tau: np.ndarray, size: int) -> Drawn:
    pos = law(tau)
    layers = [TrackLayer(obj, _Track(k, pos[k, :, 0], pos[k, :, 1], obj.radius), len(tau), size, instance=k + 1)
              for k, obj in enumerate(scene.objects)]
    return Drawn(scene.background, layers, [o.colour for o in scene.objects])


def render_video(motion_class: MotionClass, rng: np.random.Generator, *, frames: int, size: int, clutter: int = 0,
                 misalign: float = 0.0, masks: bool = False) -> Rendering:
    """One video of a swarm class (draw order and variants as in :mod:`fsar.data.synthetic.layers`)."""
    return render_family(motion_class, rng, frames=frames, size=size, clutter=clutter, misalign=misalign, masks=masks,
                         scene=group, law=swarm_law, draw=_draw)
