"""pipelines.bench.stage_memory: autograd's saved bytes per frame, and the memory-sized overlays it writes
(on ``fsar-tiny``: the estimate's arithmetic does not depend on the encoder's size)."""

from __future__ import annotations

import pytest
import yaml

from fsar.config import from_dict
from fsar.training.config import TrainConfig
from pipelines.bench.stage_memory import plan, saved_bytes, saved_bytes_per_frame, write_overlays

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_saved_bytes_follow_the_regime_and_grow_linearly_with_frames():
    full, per_forward = saved_bytes_per_frame("fsar-tiny", "full", checkpointing=False)
    assert saved_bytes_per_frame("fsar-tiny", "frozen", checkpointing=False) == (0, 0)  # no autograd at all
    assert 0 < saved_bytes_per_frame("fsar-tiny", "last:1", checkpointing=False)[0] < full
    assert saved_bytes_per_frame("fsar-tiny", "full", checkpointing=True)[0] < full
    assert per_forward > 0  # autocast's weight copies, whatever the frames
    # The slope and intercept from 2 and 4 frames predict 8.
    assert saved_bytes("fsar-tiny", "full", checkpointing=False, frames=8) == pytest.approx(per_forward + 8 * full,
                                                                                           rel=1e-3)


def test_plan_fills_a_card_and_the_overlays_are_train_configs(tmp_path):
    rows = plan("fsar-tiny", frames=8)
    assert {r["tune"] for r in rows} == {"full", "last:2", "lora:8"} and {r["card_gb"] for r in rows} == {24, 48, 80}
    by = {(r["tune"], r["card_gb"]): r for r in rows}
    for tune in ("full", "last:2", "lora:8"):  # a bigger card never holds fewer episodes
        assert by[(tune, 24)]["episodes_per_forward"] <= by[(tune, 48)]["episodes_per_forward"] <= by[(tune, 80)]["episodes_per_forward"]
    paths = write_overlays(rows, "fsar-tiny", 8, tmp_path)
    assert len(paths) == 9
    overlay = yaml.safe_load(paths[0].read_text())
    config = from_dict(TrainConfig, {"method": "otam", "out": str(tmp_path / "run"), **overlay,
                                     "data": {"manifest": str(tmp_path / "m.parquet"), **overlay["data"]}})
    assert config.data.stage.backbone == "fsar-tiny" and config.episodes_per_forward >= 1
