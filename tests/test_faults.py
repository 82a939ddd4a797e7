"""Hard kills (pipelines.bench.faults): a SIGKILLed embed or training driver, then the same command again, loses
nothing, duplicates nothing, and training resumes from its last checkpoint."""

from __future__ import annotations

import json

import pytest

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


def test_a_killed_prediction_job_then_a_rerun_predicts_every_video_once(synth, tmp_path):
    from pipelines.bench.faults import predict_scenario

    embed_scenario(synth, tmp_path / "store")
    train_scenario(tmp_path / "store", tmp_path / "run", steps=20, val_every=10)
    row = predict_scenario(synth, tmp_path / "run", tmp_path / "predict")
    assert row["killed"] and row["rerun_ok"], row["told"]
    assert row["lost"] == 0 and row["duplicated"] == 0


def test_killed_drivers_on_object_storage_lose_and_repeat_nothing(synth, s3, tmp_path):
    """The same hard kills with the store and run folder in a bucket: the reruns find what the killed jobs left
    there (finished shards, the last checkpoint) through the S3 server."""
    embed = embed_scenario(synth, f"{s3}/store")
    assert embed["killed"] and embed["rerun_ok"], embed
    assert embed["lost"] == 0 and embed["duplicated"] == 0 and embed["check_clean"]
    train = train_scenario(f"{s3}/store", f"{s3}/run", steps=40, val_every=10,
                           mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert train["killed"] and train["rerun_ok"] and train["finished"], train["told"]
    assert train["resumed_from"] >= 10 and 0 <= train["repeated"] <= 10
    assert "| fsar train (S3 server) |" in table([train])


def test_an_embed_rides_through_an_object_store_that_pauses(synth, s3, s3_server, tmp_path):
    """The S3 server stopped (SIGSTOP) for 2 s in the middle of an embed into a bucket: the job finishes, and the
    store holds every video exactly once."""
    import threading

    from helpers import embed_config, pause_s3_server

    from fsar.data.feature_store import FeatureStore
    from fsar.data.store_check import check_store
    from pipelines.embed import run as embed

    cfg = embed_config(synth, f"{s3}/store", shard_size=8, batch_size=4)
    outcome = {}
    job = threading.Thread(target=lambda: outcome.setdefault("summary", embed(cfg, progress=False)))
    job.start()
    pause_s3_server(2, after=1.0)
    job.join(timeout=300)
    assert not job.is_alive() and outcome["summary"].videos == 40
    ids = FeatureStore(f"{s3}/store").table["video_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 40 and check_store(f"{s3}/store")[0] == []


def test_a_training_run_on_object_storage_rides_through_a_pause(synth, s3, s3_server, tmp_path):
    """Store and run folder in a bucket, the S3 server stopped for 2 s mid-training (in-process): the run
    finishes with every validation logged once, and its checkpoints in the bucket."""
    import threading

    import pyarrow.fs as pafs
    from helpers import config, make_signal_store, pause_s3_server

    from fsar import storage
    from pipelines.train import run

    pafs.copy_files(str(make_signal_store(tmp_path / "store")), f"{s3}/store")
    out = f"{s3}/runs/protonet"
    cfg = config(f"{s3}/store", out, workers=0, steps=80, val_every=10, mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}")
    outcome = {}
    job = threading.Thread(target=lambda: outcome.setdefault("result", run(cfg)))
    job.start()
    pause_s3_server(2, after=2.0)
    job.join(timeout=300)
    assert not job.is_alive() and outcome["result"].steps == 80
    steps = [json.loads(line)["step"] for line in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    assert steps == list(range(10, 81, 10)) and storage.is_file(f"{out}/latest.pt")


# Slow (about 70 s each). The flake an earlier version had (a trial left unfinished after the rerun, 1 run in 4
# on disk, every run on the S3 server) came from the restored experiment state naming a checkpoint already
# pruned; two are kept now, and a trial that had finished keeps its status whatever its restore does.
@pytest.mark.slow
@pytest.mark.parametrize("where", ["disk", "s3"])
def test_a_killed_sweep_keeps_its_finished_trials_and_completes(synth, tmp_path, request, where):
    from pipelines.bench.faults import sweep_scenario

    embed_scenario(synth, tmp_path / "store")
    sweep = tmp_path / "sweep" if where == "disk" else request.getfixturevalue("s3") + "/sweep"
    row = sweep_scenario(tmp_path / "store", sweep, tmp_path / "space.yaml",
                         mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert row["killed"] and row["rerun_ok"] and row["kept"], row
    assert row["all_done"], row["statuses"]
    assert row["repeated"] == 0  # no trial logs a step twice
