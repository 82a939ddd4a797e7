"""The ``camera`` synthetic family: its class library, determinism, literal reverse pairs with every variant,
masks of the scene's static objects, and camera paths that differ in motion but not in appearance."""

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
    separated,
)

from fsar.data.synthetic import video_rng
from fsar.data.synthetic.camera import render_video, world
from fsar.data.synthetic.render import clip_length


def test_library_has_over_100_classes_in_reverse_pairs_with_unique_names():
    classes = check_family_library("camera")
    names = {c.name for c in classes}
    assert {"panning right", "panning left", "zooming in", "zooming out", "panning right, then stopping",
            "holding still, then panning left", "shaking, then panning right", "panning left, then shaking"} <= names
    assert len({c.family for c in classes}) >= 10


def test_same_seed_same_frames_and_order_does_not_matter():
    check_family_library("camera")
    check_determinism("camera", (0, 33, 80, 117))


def test_reversed_class_is_the_forward_video_played_backwards_with_every_variant():
    pairs = range(0, 59, 4)
    check_reverse_pairs("camera", pairs, masks=True)
    check_reverse_pairs("camera", pairs, seed=1, clutter=2, misalign=0.7, masks=True)


def test_misalignment_idles_around_the_same_path():
    check_misalignment_retimes("camera", "zooming in")


def _shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far the picture moved from frame ``a`` to ``b`` (dy, dx) in whole pixels, by phase correlation."""
    fa, fb = (np.fft.fft2(f.astype(np.float64).mean(axis=-1) - f.mean()) for f in (a, b))
    cross = fb * np.conj(fa)
    peak = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    shift = np.array(np.unravel_index(peak.argmax(), peak.shape))
    size = np.array(peak.shape)
    return (shift + size // 2) % size - size // 2


def test_masks_mark_the_static_objects_which_move_with_the_picture():
    name = "panning right"
    motion_class = family_class("camera", name)
    checked = 0
    for seed in range(4):
        rendering = render_video(motion_class, video_rng(seed, motion_class.id, 0), frames=12, size=48, masks=True)
        rng = video_rng(seed, motion_class.id, 0)
        clip_length(rng, 12)
        objects = world(rng, 48).objects
        video, masks = rendering.frames.astype(np.int16), rendering.masks
        assert masks.max() <= len(objects) and (masks > 0).any()
        for k, obj in enumerate(objects, start=1):
            inner = masks == k
            for _ in range(2):  # 2 px away from the object's rim, which the texture's sampling blends
                inner = inner & np.roll(inner, 1, -1) & np.roll(inner, -1, -1) & np.roll(inner, 1, -2) \
                    & np.roll(inner, -1, -2)
            assert (np.abs(video[inner] - obj.colour.round()).max(initial=0) <= 3), (seed, k)
        for t in range(len(masks) - 1):  # objects wholly in view in two frames move by the picture's shift
            move = _shift(rendering.frames[t], rendering.frames[t + 1])
            for k in range(1, masks.max() + 1):
                a, b = np.argwhere(masks[t] == k), np.argwhere(masks[t + 1] == k)
                inside = [len(p) > 6 and p.min() > 0 and p.max() < 47 for p in (a, b)]
                if all(inside) and abs(len(a) - len(b)) <= 2:
                    assert np.abs(b.mean(axis=0) - a.mean(axis=0) - move).max() < 1.5, (seed, t, k)  # whole-pixel shift
                    checked += 1
        cluttered = render_video(motion_class, video_rng(seed, motion_class.id, 0), frames=12, size=48, masks=True,
                                 clutter=3)
        assert not ((cluttered.masks > 0) & (masks == 0)).any()  # distractors only ever hide objects
    assert checked > 10


def test_pans_differ_in_the_direction_the_picture_moves_not_in_appearance():
    moves, brightness = {}, {}
    for name in ("panning right", "panning down"):
        moves[name], brightness[name] = [], []
        for index in range(4):
            video = family_video("camera", name, 0, index=index).frames
            moves[name].append(np.sum([_shift(a, b) for a, b in zip(video[:-1], video[1:], strict=True)], axis=0))
            brightness[name].append(video.mean())
    for dy, dx in moves["panning right"]:  # the camera goes right: the picture moves left
        assert dx < -5 and abs(dy) < abs(dx) / 2
    for dy, dx in moves["panning down"]:
        assert dy < -5 and abs(dx) < abs(dy) / 2
    assert not separated(*brightness.values())


def test_a_folder_made_with_another_family_is_refused(tmp_path):
    check_family_refused_on_other_folder("camera", "figures", tmp_path / "synth")
