"""The synthetic dataset's families: structurally different generators, each with its own class library of
time-reverse pairs (``SynthConfig.family``, ``fsar synth --family``).

- ``shapes`` (the default): one or two rigid shapes move over a still background; a class is their path
  (:mod:`fsar.data.synthetic.library`, rendered by :mod:`fsar.data.synthetic.render`).
- ``figures``: an articulated stick figure; a class is a joint-angle trajectory (:mod:`~fsar.data.synthetic.figures`).
- ``camera``: a still textured scene filmed by a moving camera; a class is the camera path, the whole frame
  moves (:mod:`~fsar.data.synthetic.camera`).
- ``swarm``: 3–6 objects; a class is their collective motion, in no single object's path
  (:mod:`~fsar.data.synthetic.swarm`).

Every family follows the same contract: class ``2k`` is the forward member of pair ``k``, ``2k + 1`` its literal
time reverse; a video depends only on ``(seed, class id, video index)`` and draws its clip length first
(:func:`~fsar.data.synthetic.render.clip_length`); the variants (masks, clutter, misalignment) keep their laws
(:mod:`fsar.data.synthetic.variants`); masks are ``fsar-masks/1`` with instance ids ``1, 2, ...`` (what they
mark is in each family's docstring). A benchmark that a single generator cannot fool trains and tests on each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import fsar.data.synthetic.camera as camera
import fsar.data.synthetic.figures as figures
import fsar.data.synthetic.swarm as swarm
from fsar.data.synthetic.library import _LIBRARY, MotionClass
from fsar.data.synthetic.render import Rendering, render_video


@dataclass(frozen=True)
class Family:
    """One generator: its name, its own version (``family_version`` in synth.json; ``shapes`` is versioned by
    ``render_version`` alone, so 0), its class library in id order, and its renderer (the signature of
    :func:`~fsar.data.synthetic.render.render_video`)."""

    name: str
    version: int
    classes: tuple[MotionClass, ...]
    render: Callable[..., Rendering]
    summary: str


FAMILIES: dict[str, Family] = {
    "shapes": Family("shapes", 0, _LIBRARY, render_video, "rigid shapes moving over a still background"),
    "figures": Family("figures", figures.VERSION, figures._LIBRARY, figures.render_video,
                      "articulated stick figures moving their joints"),
    "camera": Family("camera", camera.VERSION, camera._LIBRARY, camera.render_video,
                     "a camera moving over a still textured scene"),
    "swarm": Family("swarm", swarm.VERSION, swarm._LIBRARY, swarm.render_video, "3-6 objects moving as a group"),
}
DEFAULT_FAMILY = "shapes"


def family_classes(name: str = DEFAULT_FAMILY) -> list[MotionClass]:
    """The class library of family ``name``, in id order (KeyError for an unknown family)."""
    return list(FAMILIES[name].classes)
