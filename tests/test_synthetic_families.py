"""The synthetic families together: the registry, ``SynthConfig.family`` and ``fsar synth --family``, synth.json's
family stamp, a whole dataset of another family (masks and variants on, any number of workers), and the shared
compositing of :mod:`fsar.data.synthetic.layers`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fsar.data.manifest import read_manifest
from fsar.data.synthetic import (
    DEFAULT_FAMILY,
    FAMILIES,
    RENDER_VERSION,
    SynthConfig,
    SynthError,
    family_classes,
    generate,
    motion_classes,
    render_video,
    video_rng,
)
from fsar.data.synthetic.layers import BoxLayer, capsule_layers, compose


def test_four_families_each_with_at_least_100_classes():
    assert list(FAMILIES) == ["shapes", "figures", "camera", "swarm"] and DEFAULT_FAMILY == "shapes"
    assert family_classes() == motion_classes() and FAMILIES["shapes"].render is render_video
    assert FAMILIES["shapes"].version == 0 and all(FAMILIES[f].version >= 1 for f in ("figures", "camera", "swarm"))
    for name, family in FAMILIES.items():
        assert family.name == name and len(family.classes) >= 100
        SynthConfig(out=Path("x"), family=name).validate()  # the default 100 classes (64/12/24) fit every family
        assert SynthConfig(out=Path("x"), family=name).stamp()["family"] == name
    names = [c.name for f in FAMILIES.values() for c in f.classes]  # unique across families too: manifests merge
    assert len(set(names)) == len(names)


def test_config_refuses_an_unknown_family_and_more_classes_than_its_library():
    with pytest.raises(SynthError, match="family='dots' is not a synthetic family; pick one of shapes, figures"):
        SynthConfig(out=Path("x"), family="dots").validate()
    size = len(FAMILIES["figures"].classes)
    with pytest.raises(SynthError, match=f"the figures library has {size} classes"):
        SynthConfig(out=Path("x"), family="figures", classes=size + 1).validate()
    stamp = SynthConfig(out=Path("x")).stamp()
    assert (stamp["render_version"], stamp["family"], stamp["family_version"]) == (RENDER_VERSION, "shapes", 0)


def _tiny(out: Path, **kw) -> SynthConfig:
    return SynthConfig(out=out, **({"classes": 4, "class_split": (2, 1, 1), "videos_per_class": 2, "frames": 8,
                                    "size": 32, "workers": 1} | kw))


def _decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_a_dataset_of_another_family_is_the_same_with_any_number_of_workers(tmp_path):
    from fsar.data.masks import read_mask_file

    variants = {"family": "camera", "clutter": 1, "misalign": 0.5}
    one = read_manifest(generate(_tiny(tmp_path / "one", masks=True, **variants), progress=False))
    # Workers that write no masks never import torch: they start fast.
    two = read_manifest(generate(_tiny(tmp_path / "two", workers=2, **variants), progress=False))
    assert one.drop_columns(["path"]).equals(two.drop_columns(["path"]))
    library = FAMILIES["camera"].classes
    for row, other in zip(one.to_pylist(), two.to_pylist(), strict=True):
        assert np.array_equal(_decode(Path(row["path"])), _decode(Path(other["path"])))
        masks = read_mask_file(tmp_path / "one" / "masks" / f"{row['video_id']}.npz")[0]
        cid, index = int(row["video_id"][1:4]), int(row["video_id"].split("_v")[1])
        rendering = FAMILIES["camera"].render(library[cid], video_rng(0, cid, index), frames=8, size=32, masks=True,
                                              clutter=1, misalign=0.5)
        assert np.array_equal(masks, rendering.masks) and len(masks) == row["num_frames"]
        assert library[cid].name == row["class_name"]
    stamp = json.loads((tmp_path / "one" / "synth.json").read_text())
    assert (stamp["family"], stamp["family_version"]) == ("camera", FAMILIES["camera"].version)
    for c in json.loads((tmp_path / "one" / "classes.json").read_text()):
        assert library[c["id"]].name == c["name"] and library[c["partner"]].name == c["partner_name"]
        assert c["family"] == library[c["id"]].family  # the class's motion group within the generator
    # The same settings with another family pick other classes, with names of that family.
    swarm = {c.name for c in FAMILIES["swarm"].classes}
    assert all(r["class_name"] in swarm for r in read_manifest(generate(
        _tiny(tmp_path / "swarm", family="swarm", videos_per_class=1), progress=False)).to_pylist())


def test_a_shapes_folder_from_before_the_families_is_resumed_as_shapes(tmp_path):
    out = tmp_path / "old"
    config = _tiny(out, classes=3, class_split=(1, 1, 1), videos_per_class=1)
    generate(config, progress=False)
    stamp = json.loads((out / "synth.json").read_text())
    del stamp["family"], stamp["family_version"]
    (out / "synth.json").write_text(json.dumps(stamp))
    generate(config, progress=False)  # accepted: shapes was the only family there was
    with pytest.raises(SynthError, match=r"differ: family \(folder: 'shapes', asked: 'swarm'\); family_version"):
        generate(_tiny(out, classes=3, class_split=(1, 1, 1), videos_per_class=1, family="swarm"), progress=False)


def test_synth_command_takes_the_family_flag(tmp_path):
    from pipelines.cli import main

    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--family", "figures", "--classes", "3", "--videos-per-class", "1",
                 "--frames", "6", "--size", "32", "--workers", "1"]) == 0
    assert json.loads((out / "synth.json").read_text())["family"] == "figures"
    names = {c.name for c in FAMILIES["figures"].classes}
    assert {c["name"] for c in json.loads((out / "classes.json").read_text())} <= names


# ---------------------------------------------------------------- layers
def test_a_capsule_covers_its_area_with_a_one_pixel_rim():
    size = 64
    a = np.array([[0.3, 0.4]] * 2)
    b = np.array([[0.7, 0.6]] * 2)
    radius = 0.06
    (layer,) = capsule_layers([([(a, b, radius)], np.array([200.0, 10.0, 10.0]))], size, instance=1)
    cover = layer.cover[0]
    length = float(np.linalg.norm(b[0] - a[0]))
    area = (math.pi * radius ** 2 + 2 * radius * length) * size ** 2
    assert cover.sum() == pytest.approx(area, rel=0.02)
    rim = (cover > 0) & (cover < 1)
    assert rim.sum() < 1.5 * 2 * (math.pi * radius + length) * size  # about one pixel wide all round


def test_compose_masks_follow_what_is_drawn_over_the_background_instances():
    background = np.full((2, 4, 4, 3), 50.0, dtype=np.float32)
    ids = np.zeros((2, 4, 4), dtype=np.uint8)
    ids[:, 0, :2] = 2  # an instance painted into the background: wholly at (0, 0), a third of (0, 1)
    shares = np.where(ids > 0, 1.0, 0.0).astype(np.float32)
    shares[:, 0, 1] = 1 / 3
    cover = np.zeros((2, 4, 4), dtype=np.float32)
    cover[:, 1:3, 1:3] = 1.0
    cover[:, 3, 3] = 0.4  # less than half of the pixel
    actor = BoxLayer(cover, 0, 0, np.array([250.0, 0.0, 0.0], dtype=np.float32), instance=1)
    front = np.zeros((2, 1, 2), dtype=np.float32)
    front[1] = 0.8  # in front, frame 1 only: hides most of the painted instance's (0, 0)
    distractor = BoxLayer(front, 0, 0, np.array([0.0, 0.0, 250.0], dtype=np.float32))
    video, masks = compose(background, [actor, distractor], 2, masks=True, ids=ids, shares=shares)
    assert video.dtype == np.uint8 and video[0, 1, 1].tolist() == [250, 0, 0] and video[0, 3, 3, 0] == 130
    assert masks[0].tolist() == [[2, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert masks[1, 0].tolist() == [0, 0, 0, 0]
    assert compose(background, [actor], 2)[1] is None
