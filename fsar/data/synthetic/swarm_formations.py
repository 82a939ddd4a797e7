"""Formations of the ``swarm`` family: its scene (3–6 objects over a background), the formations a group can
take (a scatter, a cluster, a row, a column, a ring, two groups side by side or one above the other), matching
two formations object to object, and the transitions between them (:mod:`fsar.data.synthetic.swarm` names the
classes)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from fsar.data.synthetic.layers import phase, progress, smooth, window
from fsar.data.synthetic.scene import TAU, _background, _colours, _Object

FORMATIONS = ("scatter", "cluster", "row", "column", "ring", "sides", "levels")
SOLID = ("circle", "square", "triangle", "pentagon", "hexagon", "diamond")  # no thin parts: the objects are small


@dataclass
class Group:
    """One video's scene: background and the objects (radius in frame-side units)."""

    background: np.ndarray
    objects: list[_Object]

    @property
    def radius(self) -> float:
        return max(o.radius for o in self.objects)


def group(rng: np.random.Generator, size: int) -> Group:
    """Draw the background and 3–6 objects of one video."""
    background = _background(rng, size)
    count = int(rng.integers(3, 7))
    colours = _colours(rng, background, count)
    return Group(background, [_Object(SOLID[int(rng.integers(len(SOLID)))], c, float(rng.uniform(0.04, 0.06)),
                                      float(rng.uniform(0, TAU))) for c in colours])


# ---------------------------------------------------------------- formations
def fit(points: np.ndarray, margin: float) -> np.ndarray:
    """Shrink ``points`` (..., 2) about their centre until they fit ``margin`` inside the frame, then shift
    them in (no draws)."""
    flat = points.reshape(-1, 2)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    centre = (lo + hi) / 2
    room = 1 - 2 * margin
    factor = min(1.0, room / max(float((hi - lo).max()), 1e-9))
    pts = centre + (points - centre) * factor
    flat = pts.reshape(-1, 2)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    return pts + np.clip(margin - lo, 0, None) - np.clip(hi - (1 - margin), 0, None)


def _ring(centre, radius, n, start):
    angles = start + TAU * np.arange(n) / n
    return centre + radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def _huddle(centre, n, r, start):
    """A tight cluster: ``n`` objects on a small ring, neighbours just overlapping."""
    return _ring(centre, 0.0 if n == 1 else max(0.8 * r, 1.45 * r * n / TAU), n, start)


def formation(rng: np.random.Generator, kind: str, n: int, r: float,
              apart: tuple[float, float] = (0.2, 0.3)) -> np.ndarray:
    """Positions (n, 2) of ``n`` objects of radius up to ``r`` in formation ``kind`` (random place and size;
    two groups are ``apart`` from the middle)."""
    m = r * 1.3 + 0.02
    if kind == "scatter":  # far apart: each the farthest of a few candidates from those placed
        pts = []
        for _ in range(n):
            cands = rng.uniform(m, 1 - m, size=(10, 2))
            best = cands[0] if not pts else cands[np.argmax([min(np.linalg.norm(c - p) for p in pts) for c in cands])]
            pts.append(best)
        return np.array(pts)
    centre = rng.uniform(0.3, 0.7, size=2)
    start = float(rng.uniform(0, TAU))
    if kind == "cluster":
        pts = _huddle(centre, n, r, start)
    elif kind in ("row", "column"):
        gap = float(rng.uniform(2.6 * r, max(2.6 * r, min(0.8 / (n - 1), 0.17))))
        offs = (np.arange(n) - (n - 1) / 2) * gap
        pts = centre + (np.stack([offs, 0 * offs], -1) if kind == "row" else np.stack([0 * offs, offs], -1))
    elif kind == "ring":
        pts = _ring(centre, float(rng.uniform(0.2, 0.3)), n, start)
    elif kind in ("sides", "levels"):
        d = float(rng.uniform(*apart))
        axis = np.array([1.0, 0.0]) if kind == "sides" else np.array([0.0, 1.0])
        first = (n + 1) // 2
        pts = np.concatenate([_huddle(centre - d * axis, first, r, start), _huddle(centre + d * axis, n - first, r, start)])
    else:
        raise KeyError(kind)
    return fit(pts, m)


def match(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` reordered so that moving each point of ``a`` to its partner travels least in all (n ≤ 6: every order)."""
    best = min(itertools.permutations(range(len(b))), key=lambda p: float(((a - b[list(p)]) ** 2).sum()))
    return b[list(best)]


def along(path: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at fractions ``s`` (any shape) of the arc length of polyline ``path`` (K, 2): (*s.shape, 2)."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)]) / max(seg.sum(), 1e-12)
    return np.stack([np.interp(s, cum, path[:, 0]), np.interp(s, cum, path[:, 1])], axis=-1)


def transition_law(rng, scene, *, source, target, one_by_one):
    """From formation ``source`` to ``target`` along straight lines, all together or one after another."""
    n, r = len(scene.objects), scene.radius
    start, length = window(rng, 0.7, 0.95)
    a = formation(rng, source, n, r)
    b = match(a, formation(rng, target, n, r))
    order = rng.permutation(n)
    span = 1.8 / (n + 0.8)  # one by one: each moves over this share of the motion, overlapping the next a little

    def law(tau):
        u = progress(tau, start, length)
        if one_by_one:
            first = order / max(n - 1, 1) * (1 - span)
            s = smooth(phase(u[None, :], first[:, None], first[:, None] + span))
        else:
            s = np.broadcast_to(smooth(u), (n, len(u)))
        return a[:, None, :] + (b - a)[:, None, :] * s[..., None]
    return law
