"""Hard kills (pipelines.bench.faults): a SIGKILLed embed or training driver, then the same command again, loses
nothing, duplicates nothing, and training resumes from its last checkpoint."""

from __future__ import annotations

from pipelines.bench.faults import embed_scenario, table, train_scenario


def test_a_killed_embed_then_a_rerun_stores_every_video_once(synth, tmp_path):
    row = embed_scenario(synth, tmp_path / "store")
    assert row["killed"] and row["rerun_ok"], row
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["check_clean"]


def test_a_killed_training_run_resumes_from_its_last_checkpoint(synth, tmp_path):
    embed_scenario(synth, tmp_path / "store")
    row = train_scenario(tmp_path / "store", tmp_path / "run", steps=40, val_every=10)
    assert row["killed"] and row["rerun_ok"] and row["finished"], row
    assert row["resumed_from"] >= 10 and 0 <= row["repeated"] <= 10  # at most one validation interval again
    assert "| fsar train (local disk) |" in table([row])
