"""Ray Data → Ray Train for pixels methods: per-rank datasets of decoded episodes, one real Ray worker."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_pixels_source import small, synth  # noqa: F401 — the module-scoped synthetic dataset fixture

from fsar.training.checkpoint import load_checkpoint
from pipelines.train import run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.mark.slow  # the Ray Train test below checks rank 0's order too (shard_batches raises otherwise)
def test_episode_datasets_give_each_rank_its_own_episodes(synth, tmp_path, ray_local):  # noqa: F811
    from pipelines.train_frames import episode_datasets

    config = small(synth, tmp_path / "r", workers=2, steps=2, episodes_per_step=2)
    datasets = episode_datasets(config)
    assert sorted(datasets) == ["train_rank0", "train_rank1"]
    rows = datasets["train_rank1"].take_all()
    assert [int(r["episode"]) for r in rows] == [2, 3, 6, 7]  # (step·W + rank)·k … +k, in order
    assert np.asarray(rows[0]["pixels"]).shape == (2, 6, 4, 3, 64, 64)[1:] and bool(rows[0]["ok"])


def test_one_ray_worker_streams_decoded_episodes(synth, tmp_path, ray_local):  # noqa: F811
    result = run(small(synth, tmp_path / "run", workers=1, steps=4, val_every=2))
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4] and lines[-1]["episodes_per_s"] > 0
    method, payload = load_checkpoint(result.best_checkpoint)
    assert payload["method"] == "dmgal_adapter" and payload["frozen_rebuilt"]


def test_a_manifest_run_must_leave_a_cpu_for_decoding(tmp_path):
    from fsar.config import ConfigError
    from fsar.training.config import TrainConfig
    from pipelines.train import check_decode_room

    config = TrainConfig(method="dmgal_adapter", out=tmp_path, manifest=tmp_path / "m.parquet", workers=2)
    with pytest.raises(ConfigError, match="leaving none to decode"):
        check_decode_room(config, {"CPU": 2.0})
    check_decode_room(config, {"CPU": 3.0})
    check_decode_room(TrainConfig(method="otam", out=tmp_path, store=tmp_path, workers=2), {"CPU": 2.0})
