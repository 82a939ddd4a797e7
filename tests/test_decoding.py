"""Pixel episodes: seeded decode + augmentation, bad-video replacement, split decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.data.episodes import EpisodeSampler
from fsar.data.manifest import write_manifest
from fsar.data.transforms import FramePreprocess
from fsar.sources.decoding import (
    EpisodeDecoder,
    decode_split,
    episode_rows,
    episode_table,
    local_episode_stream,
    normalise,
    read_split_videos,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture
def split(tmp_path, counter_video):
    """Three classes × three counter videos (16 frames, 48×64) plus one corrupt file in class 0."""
    records = []
    for c in range(3):
        for v in range(3):
            path = counter_video(16 + v, name=f"c{c}v{v}.mp4")
            records.append({"video_id": f"c{c}v{v}", "path": str(path), "label": c, "class_name": f"k{c}",
                            "split": "train"})
    (tmp_path / "bad.mp4").write_text("not a video\n" * 10)
    records.append({"video_id": "bad", "path": str(tmp_path / "bad.mp4"), "label": 0, "class_name": "k0",
                    "split": "train"})
    return read_split_videos(write_manifest(records, tmp_path / "m.parquet"), "train")


PRE = FramePreprocess(size=32)


def test_episode_table_matches_the_sampler_stream(split):
    sampler = EpisodeSampler(split.labels, way=2, shot=1, query=1, seed=3)
    table = episode_table(sampler, rank=1, world_size=2, episodes_per_step=2, steps=3)
    stream = sampler.stream(rank=1, world_size=2, episodes_per_step=2)
    expected = np.concatenate([episode_rows(next(stream)) for _ in range(3)])
    assert np.array_equal(table["rows"], expected)
    assert table["episode"].tolist() == [2, 3, 6, 7, 10, 11]


def test_decode_is_seeded_by_episode_and_video(split):
    decoder = EpisodeDecoder(split, 4, PRE, seed=0)
    rows = np.array([0, 3, 1, 4])
    a, ok, failed = decoder.decode_episode(5, rows)
    b, _, _ = decoder.decode_episode(5, rows)
    c, _, _ = decoder.decode_episode(6, rows)
    assert ok and failed == 0 and a.shape == (4, 4, 3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    centre = EpisodeDecoder(split, 4, PRE, seed=0, train=False)
    assert np.array_equal(centre.decode_episode(5, rows)[0], centre.decode_episode(6, rows)[0])


def test_a_bad_video_is_replaced_by_one_of_its_class(split):
    bad = int(np.flatnonzero(split.video_ids == "bad")[0])
    decoder = EpisodeDecoder(split, 4, PRE, seed=0)
    pixels, ok, failed = decoder.decode_episode(0, np.array([bad, 3]))
    assert ok and failed == 1 and pixels[0].any()
    # No replacement left (all other class-0 videos already in the episode): flagged, not raised.
    rows = np.array([bad, 0, 1, 2])
    _, ok, failed = decoder.decode_episode(1, rows)
    assert not ok and failed == 1


def test_local_stream_yields_steps_in_order(split):
    sampler = EpisodeSampler(split.labels, way=2, shot=1, query=1, seed=0)
    table = episode_table(sampler, rank=0, world_size=1, episodes_per_step=2, steps=3)
    batches = list(local_episode_stream(EpisodeDecoder(split, 4, PRE, seed=0), table, episodes_per_step=2, threads=2))
    assert [b["episode"].tolist() for b in batches] == [[0, 1], [2, 3], [4, 5]]
    assert batches[0]["pixels"].shape == (2, 4, 4, 3, 32, 32)


def test_decode_split_leaves_out_bad_videos(split):
    pixels, ok, errors = decode_split(split, frames=4, preprocess=PRE, threads=2)
    assert ok.sum() == 9 and list(errors) == ["bad"]
    assert pixels.dtype == np.uint8 and pixels.shape[:3] == (10, 4, 3)  # uint8 until the device normalises it
    assert torch.allclose(normalise(torch.full((3, 1, 1), 255, dtype=torch.uint8), PRE).flatten(),
                          torch.tensor([(1 - m) / s for m, s in zip(PRE.mean, PRE.std, strict=True)]))
    again, _, _ = decode_split(split, frames=4, preprocess=PRE, threads=1)
    assert np.array_equal(again[ok], pixels[ok])  # segment centres, centre crop: no randomness, any thread count
