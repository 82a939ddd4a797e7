"""fsar.data.masks: the on-disk mask format, pooling to the patch grid, loading, PNG conversion, `fsar masks`."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from fsar.config import ConfigError
from fsar.data.masks import (
    MaskConvertConfig,
    MaskFileError,
    convert_png_masks,
    load_masks,
    mask_path,
    nearest_frames,
    pool_to_grid,
    read_mask_file,
    read_png_mask,
    write_mask_file,
)


def test_write_read_round_trip_and_checks(tmp_path):
    masks = np.random.default_rng(0).integers(0, 3, size=(3, 6, 8), dtype=np.uint8)
    path = write_mask_file(tmp_path, "cls/vid1", masks, [0, 4, 9])
    assert path == tmp_path / "cls" / "vid1.npz" and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))  # written via a temporary name, nothing left behind
    read, indices = read_mask_file(path)
    assert np.array_equal(read, masks) and indices.tolist() == [0, 4, 9]
    with pytest.raises(MaskFileError, match="strictly increasing"):
        write_mask_file(tmp_path, "v", masks, [0, 4, 4])
    with pytest.raises(MaskFileError, match="uint8"):
        write_mask_file(tmp_path, "v", masks.astype(np.float32), [0, 4, 9])
    with pytest.raises(MaskFileError, match="3 masks but"):
        write_mask_file(tmp_path, "v", masks, [0, 4])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(MaskFileError, match="bad.npz: not an fsar mask file"):
        read_mask_file(tmp_path / "bad.npz")


def test_mask_path_stays_under_the_root(tmp_path):
    assert mask_path(tmp_path, "a/b") == tmp_path / "a" / "b.npz"
    for bad in ("../escape", "/abs/path", ""):
        with pytest.raises(MaskFileError):
            mask_path(tmp_path, bad)


def test_pool_to_grid_centre_crops_like_the_embedder():
    mask = np.zeros((1, 4, 8), dtype=np.uint8)  # wide frame: the embedder keeps the centre 4×4 (columns 2..5)
    mask[0, :, 0:2] = 1  # foreground outside the crop: ignored
    mask[0, 0:2, 2:4] = 7  # top-left quarter of the crop, any non-zero value counts
    grid = pool_to_grid(mask, 2)
    assert grid.shape == (1, 2, 2) and grid.dtype == np.float32
    assert grid[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    half = np.zeros((1, 6, 6), dtype=np.uint8)
    half[0, :3] = 255
    assert pool_to_grid(half, 1)[0, 0, 0] == pytest.approx(0.5)  # foreground fraction of the cell


def test_nearest_frames():
    available = np.array([0, 10, 20])
    assert nearest_frames(available, np.array([0, 4, 5, 6, 19, 99, -3])).tolist() == [0, 0, 0, 1, 2, 2, 0]
    assert nearest_frames(np.array([7]), np.array([0, 50])).tolist() == [0, 0]


def square_masks(frames, side=4, grid=2):
    """Masks whose foreground is one grid cell, a different cell per frame (cell = frame % grid²)."""
    cell = side // grid
    out = np.zeros((frames, side, side), dtype=np.uint8)
    for f in range(frames):
        r, c = divmod(f % (grid * grid), grid)
        out[f, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 1
    return out


def test_load_masks_picks_the_sampled_frames_and_reports_missing(tmp_path, caplog):
    write_mask_file(tmp_path, "a", square_masks(8), np.arange(8))
    write_mask_file(tmp_path, "b", square_masks(2), [2, 30])  # sparse: nearest frame is used
    (tmp_path / "broken.npz").write_bytes(b"junk")
    write_mask_file(tmp_path, "unknown_frames", square_masks(2), [0, 1])
    indices = np.array([[1, 2, 7], [0, 3, 29], [0, 1, 2], [0, 1, 2], [-1, -1, -1]])
    ids = ["a", "b", "missing", "broken", "unknown_frames"]
    with caplog.at_level(logging.WARNING, logger="fsar.data.masks"):
        masks, valid = load_masks(tmp_path, ids, indices, grid=2)
    assert masks.shape == (5, 3, 2, 2) and masks.dtype == np.float32
    assert valid.tolist() == [True, True, False, False, False]
    # Video a, frames 1, 2, 7 → cells 1, 2, 3; video b's frames 2 and 30 are cells 0 and 1.
    assert [int(np.argmax(m)) for m in masks[0].reshape(3, 4)] == [1, 2, 3]
    assert [int(np.argmax(m)) for m in masks[1].reshape(3, 4)] == [0, 0, 1]
    assert float(masks[2:].sum()) == 0.0
    message = caplog.text
    assert "2 of 5 videos loaded" in message and "1 without a mask file" in message and "2 unusable" in message
    with pytest.raises(ConfigError, match="does not exist"):
        load_masks(tmp_path / "nope", ids, indices, grid=2)


def test_load_masks_keeps_instances_apart_when_asked(tmp_path):
    ids = np.zeros((2, 8, 8), dtype=np.uint8)
    ids[:, :4, :4], ids[:, 4:, 4:], ids[0, :4, 4:] = 1, 2, 3  # instance 3 in frame 0 only
    write_mask_file(tmp_path, "v", ids, [0, 1])
    masks, valid = load_masks(tmp_path, ["v"], np.array([[0, 1]]), grid=2, instances=2)
    assert masks.shape == (1, 2, 2, 2, 2) and valid.tolist() == [True]
    np.testing.assert_array_equal(masks[0, :, 0].reshape(2, 4), [[1, 0, 0, 0]] * 2)  # id 1: top-left cell
    np.testing.assert_array_equal(masks[0, :, 1].reshape(2, 4), [[0, 0, 0, 1]] * 2)  # id 2: bottom-right; id 3 left out
    foreground, _ = load_masks(tmp_path, ["v"], np.array([[0, 1]]), grid=2)
    np.testing.assert_array_equal(foreground[0].reshape(2, 4), [[1, 1, 0, 1], [1, 0, 0, 1]])  # every id > 0


def write_png(path, array, mode):
    """Save ``array`` as a PNG of ``mode``; a palette (P) image keeps the array's values as its indices."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode == "P":
        image = image.convert("P")
        image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    else:
        image = image.convert(mode)
    image.save(path)


def test_read_png_mask_modes(tmp_path):
    labels = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    write_png(tmp_path / "p.png", labels, "P")
    write_png(tmp_path / "l.png", labels * 100, "L")
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 1] = (0, 0, 200)
    write_png(tmp_path / "rgb.png", rgb, "RGB")
    assert read_png_mask(tmp_path / "p.png").tolist() == [[0, 1], [2, 0]]  # instance ids kept
    assert read_png_mask(tmp_path / "l.png").tolist() == [[0, 100], [200, 0]]
    assert read_png_mask(tmp_path / "rgb.png").tolist() == [[0, 1], [0, 0]]


def make_png_tree(root):
    for f, mask in zip((3, 0, 12), square_masks(3, side=8), strict=True):
        write_png(root / "cls" / "v1" / f"frame_{f:05d}.png", mask * 255, "L")
    for f in (0, 1):
        write_png(root / "v2" / f"{f}.png", np.zeros((4, 6), dtype=np.uint8), "L")
    write_png(root / "bad_sizes" / "0.png", np.zeros((4, 6), dtype=np.uint8), "L")
    write_png(root / "bad_sizes" / "1.png", np.zeros((5, 6), dtype=np.uint8), "L")
    write_png(root / "no_number" / "mask.png", np.zeros((4, 6), dtype=np.uint8), "L")


def test_convert_png_masks(tmp_path):
    make_png_tree(tmp_path / "png")
    report = convert_png_masks(MaskConvertConfig(png=tmp_path / "png", out=tmp_path / "masks"))
    assert report.written == 2 and report.skipped == 0
    assert sorted(f.split(":")[0] for f in report.failed) == ["bad_sizes", "no_number"]
    masks, indices = read_mask_file(tmp_path / "masks" / "cls" / "v1.npz")
    assert indices.tolist() == [0, 3, 12]  # ordered by frame number, not by name or creation
    expected = square_masks(3, side=8) * 255
    assert np.array_equal(masks, expected[[1, 0, 2]])
    assert read_mask_file(tmp_path / "masks" / "v2.npz")[0].shape == (2, 4, 6)
    again = convert_png_masks(MaskConvertConfig(png=tmp_path / "png", out=tmp_path / "masks"))
    assert again.written == 0 and again.skipped == 2  # a rerun skips finished videos
    forced = convert_png_masks(MaskConvertConfig(png=tmp_path / "png", out=tmp_path / "masks", overwrite=True))
    assert forced.written == 2
    with pytest.raises(ConfigError, match="not a folder"):
        convert_png_masks(MaskConvertConfig(png=tmp_path / "nope", out=tmp_path / "masks"))


def test_cli_masks_command(tmp_path, capsys):
    from pipelines.cli import main

    make_png_tree(tmp_path / "png")
    assert main(["masks", "--png", str(tmp_path / "png"), "--out", str(tmp_path / "masks")]) == 0
    out = capsys.readouterr().out
    assert "2 videos converted" in out and "2 failed" in out
    assert (tmp_path / "masks" / "v2.npz").is_file()
    assert main(["masks", "--png", str(tmp_path / "missing"), "--out", str(tmp_path / "m2")]) == 2
    assert "not a folder" in capsys.readouterr().err
