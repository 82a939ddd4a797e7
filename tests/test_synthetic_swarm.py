"""The ``swarm`` synthetic family: its class library, determinism, literal reverse pairs with every variant,
per-object masks, formations, and collective motions that differ in motion but not in appearance."""

from __future__ import annotations

import numpy as np
from helpers import (
    check_determinism,
    check_family_library,
    check_family_refused_on_other_folder,
    check_misalignment_retimes,
    check_reverse_pairs,
    family_class,
    family_video,
    motion_energy,
    separated,
)

from fsar.data.synthetic import video_rng
from fsar.data.synthetic.render import clip_length
from fsar.data.synthetic.swarm import swarm_law
from fsar.data.synthetic.swarm_formations import FORMATIONS, formation, group, match


def test_library_has_over_100_classes_in_reverse_pairs_with_unique_names():
    classes = check_family_library("swarm")
    names = {c.name for c in classes}
    assert {"gathering into a cluster from a scatter, all at once", "scattering from a cluster, all at once",
            "forming a ring from a scatter, one by one", "orbiting a centre clockwise",
            "chasing one rightwards and catching it"} <= names
    assert len({c.family for c in classes}) >= 10


def test_same_seed_same_frames_and_order_does_not_matter():
    check_family_library("swarm")
    check_determinism("swarm", (0, 41, 98, 123))


def test_reversed_class_is_the_forward_video_played_backwards_with_every_variant():
    pairs = range(0, 62, 4)
    check_reverse_pairs("swarm", pairs, masks=True)
    check_reverse_pairs("swarm", pairs, seed=1, clutter=2, misalign=0.7, masks=True)


def test_misalignment_idles_around_the_same_motion():
    check_misalignment_retimes("swarm", "forming a ring from a cluster, all at once")


def _positions(name: str, seed: int, frames: int, size: int):
    """The class's law replayed from the video's generator: its scene and positions (n, T, 2) at misalign 0."""
    motion_class = family_class("swarm", name)
    rng = video_rng(seed, motion_class.id, 0)
    t_len = clip_length(rng, frames)
    scene = group(rng, size)
    return scene, swarm_law(motion_class.motion, rng, scene)(np.linspace(0.0, 1.0, t_len))


def test_masks_give_each_object_its_own_instance_where_it_is():
    size = 48
    for seed, name in enumerate(("gathering into a cluster from a scatter, all at once", "orbiting a centre clockwise",
                                 "a wave running along a row to the right", "chasing one downwards and catching it")):
        rendering = family_video("swarm", name, seed, size=size, masks=True)
        scene, pos = _positions(name, seed, 12, size)
        masks, video = rendering.masks, rendering.frames.astype(np.int16)
        assert set(np.unique(masks).tolist()) == set(range(len(scene.objects) + 1)), name
        for k, obj in enumerate(scene.objects, start=1):
            for t in range(len(masks)):
                pixels = np.argwhere(masks[t] == k)
                if len(pixels) >= 0.8 * np.pi * (obj.radius * size) ** 2:  # not hidden by another object
                    centre = pos[k - 1, t, ::-1] * size - 0.5  # (row, column) of the object's centre
                    assert np.abs(pixels.mean(axis=0) - centre).max() < 1.0, (name, k, t)
                    off = np.abs(video[t][masks[t] == k] - obj.colour.round()).max(axis=-1)
                    assert (off <= 2).any(), (name, k, t)  # its solid middle has its colour
        cluttered = family_video("swarm", name, seed, size=size, masks=True, clutter=3)
        assert not ((cluttered.masks > 0) & (masks == 0)).any()  # distractors only ever hide objects


def test_formations_fit_the_frame_and_matching_travels_least():
    rng = np.random.default_rng(0)
    for kind in FORMATIONS:
        for n in (3, 6):
            pts = formation(rng, kind, n, 0.055)
            assert pts.shape == (n, 2) and (pts > 0.055).all() and (pts < 1 - 0.055).all(), kind
    row = formation(rng, "row", 5, 0.05)
    assert np.ptp(row[:, 1]) < 1e-9 and np.ptp(row[:, 0]) > 0.4
    a = np.array([[0.1, 0.1], [0.9, 0.9], [0.1, 0.9]])
    assert np.array_equal(match(a, a[[2, 0, 1]]), a)


def test_all_at_once_moves_everyone_together_and_one_by_one_in_turn():
    for name, most in (("lining up in a row from a scatter, all at once", 6),
                       ("lining up in a row from a scatter, one by one", 2)):
        for seed in range(3):
            scene, pos = _positions(name, seed, 40, 64)
            moving = (np.linalg.norm(np.diff(pos, axis=1), axis=-1) > 1e-4).sum(axis=0)
            assert moving.max() <= most and (moving.max() == len(scene.objects) or most == 2), (name, seed)


def test_gathering_and_splitting_differ_in_how_the_motion_spreads_not_in_appearance():
    trend, brightness = {}, {}
    for name in ("gathering into a cluster from a scatter, all at once",
                 "splitting into groups side by side from a cluster, all at once"):
        trend[name], brightness[name] = [], []
        for index in range(4):
            video = family_video("swarm", name, 0, index=index, frames=16, size=64).frames
            energy = motion_energy(video)
            spreads = []
            for e in energy:
                if e.sum() > 0:
                    ys, xs = np.indices(e.shape)
                    w = e / e.sum()
                    spreads.append(np.sqrt((w * ((xs - (w * xs).sum()) ** 2 + (ys - (w * ys).sum()) ** 2)).sum()))
            third = max(len(spreads) // 3, 1)
            trend[name].append(np.mean(spreads[-third:]) / np.mean(spreads[:third]))
            brightness[name].append(video.mean())
    gather, split = trend.values()
    assert max(gather) < 0.8 and min(split) > 1.25, trend
    assert not separated(*brightness.values())


def test_a_folder_made_with_another_family_is_refused(tmp_path):
    check_family_refused_on_other_folder("swarm", "camera", tmp_path / "synth")
