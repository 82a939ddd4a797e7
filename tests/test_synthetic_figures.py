"""The ``figures`` synthetic family: its class library, determinism, literal reverse pairs with every variant,
masks, the figure's kinematics, and classes that differ in motion but not in appearance."""

from __future__ import annotations

import math

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
from fsar.data.synthetic.figure_body import DEG, Pose, body, joints, reach_angles
from fsar.data.synthetic.figures import render_video
from fsar.data.synthetic.render import clip_length


def test_library_has_over_100_classes_in_reverse_pairs_with_unique_names():
    classes = check_family_library("figures")
    names = {c.name for c in classes}
    assert {"raising the left arm sideways", "lowering the left arm from the side", "walking to the left",
            "walking backwards to the right, facing left", "squatting down", "standing up from a squat"} <= names
    assert len({c.family for c in classes}) >= 12
    assert all(c.objects == 1 for c in classes)


def test_same_seed_same_frames_and_order_does_not_matter():
    check_family_library("figures")
    check_determinism("figures", (0, 31, 77, 90))


def test_reversed_class_is_the_forward_video_played_backwards_with_every_variant():
    pairs = range(0, 53, 4)
    check_reverse_pairs("figures", pairs, masks=True)
    check_reverse_pairs("figures", pairs, seed=1, clutter=2, misalign=0.7, masks=True)


def test_misalignment_idles_around_the_same_movement():
    check_misalignment_retimes("figures", "raising the right arm overhead")


def test_masks_mark_the_figure_and_clutter_stays_out_of_them():
    for seed in range(4):
        name = ("raising both arms sideways", "kicking the left leg out sideways", "walking to the right",
                "toppling over to the left")[seed]
        motion_class = family_class("figures", name)
        rendering = render_video(motion_class, video_rng(seed, motion_class.id, 0), frames=12, size=48, masks=True)
        rng = video_rng(seed, motion_class.id, 0)
        clip_length(rng, 12)
        bare = np.clip(body(rng, 48).background + 0.5, 0, 255).astype(np.uint8)
        changed = np.abs(rendering.frames.astype(np.int16) - bare).sum(axis=-1)
        masks = rendering.masks
        assert set(np.unique(masks).tolist()) == {0, 1}  # the whole figure is instance 1
        assert (changed[masks == 1] > 0).all()
        near = masks > 0
        for _ in range(2):  # the figure's anti-aliased rim: up to 2 px around the mask
            near = near | np.roll(near, 1, -1) | np.roll(near, -1, -1) | np.roll(near, 1, -2) | np.roll(near, -1, -2)
        assert (changed[~near] == 0).all()  # the rest is the bare background, exactly
        strong = changed > 45
        iou = (strong & (masks > 0)).sum() / (strong | (masks > 0)).sum()
        assert iou > 0.7, (name, iou)
        cluttered = render_video(motion_class, video_rng(seed, motion_class.id, 0), frames=12, size=48, masks=True,
                                 clutter=3)
        assert not ((cluttered.masks > 0) & (masks == 0)).any()  # distractors only ever hide the figure
        assert not np.array_equal(cluttered.frames, rendering.frames)


def test_kinematics_ground_the_figure_and_reach_where_asked():
    fig = body(np.random.default_rng(0), 32)
    tau = np.linspace(0, 1, 5)
    pose = Pose.rest(fig, tau)
    pose["gL"] = pose["gL"] + np.linspace(0, 60, 5) * DEG  # the left leg rises: the right foot stays down
    pts = joints(fig, pose)
    assert np.allclose(pts["fR"][1], fig.limb) and (pts["fL"][1][1:] > pts["fR"][1][1:]).all()
    assert (pts["head"][1] > pts["neck"][1]).all() and (pts["sL"][0] < pts["sR"][0]).all()
    for side in "LR":  # inverse kinematics: both hands meet in front of the chest
        a, b = reach_angles(fig, side, (0.0, -0.1))
        pose = Pose.rest(fig, tau)
        pose["a" + side], pose["b" + side] = a + 0 * tau, b + 0 * tau
        pts = joints(fig, pose)
        hand = np.array([pts["h" + side][0] - pts["neck"][0], pts["h" + side][1] - pts["neck"][1]])
        assert np.allclose(hand, [[0.0], [-0.1]], atol=1e-9)
    pose = Pose.rest(fig, tau)
    pose["fall"] = np.linspace(0, math.pi / 2, 5)  # lying on the right at the end: as wide as it was tall
    pts = joints(fig, pose)
    assert pts["head"][0][-1] > pts["fR"][0][-1] + 0.7 and pts["head"][1][-1] < 0.25 < pts["head"][1][0] - 0.5


def test_left_and_right_arm_classes_differ_in_where_the_motion_is_not_in_appearance():
    asym, brightness = {}, {}
    for name in ("raising the left arm sideways", "raising the right arm sideways"):
        asym[name], brightness[name] = [], []
        for index in range(4):
            rendering = family_video("figures", name, 0, index=index, masks=True)
            energy = motion_energy(rendering.frames).sum(axis=0)
            centre = int(round(np.nonzero(rendering.masks[0])[1].mean()))
            left, right = energy[:, :centre].sum(), energy[:, centre + 1:].sum()
            asym[name].append((right - left) / (right + left))
            brightness[name].append(rendering.frames.mean())
    assert max(asym["raising the left arm sideways"]) < -0.3 and min(asym["raising the right arm sideways"]) > 0.3
    assert not separated(*brightness.values())


def test_a_folder_made_with_another_family_is_refused(tmp_path):
    check_family_refused_on_other_folder("figures", "shapes", tmp_path / "synth")
