"""fsar.run_folder: a run folder's files, on a local path (the object-storage path is the same ``storage`` code,
tested with the training and evaluation jobs on a moto server)."""

from __future__ import annotations

import json

from fsar.data.sections import StoreData
from fsar.run_folder import RunFolder
from fsar.training.config import TrainConfig


def config(out, steps=10):
    return TrainConfig(method="otam", out=out, data=StoreData(store=out / "store"), steps=steps)


def test_config_is_recognised_only_when_identical(tmp_path):
    run = RunFolder.at(tmp_path / "run")
    assert not run.holds_config(config(tmp_path / "run"))
    run.write_config(config(tmp_path / "run"))
    assert run.holds_config(config(tmp_path / "run")) and not run.holds_config(config(tmp_path / "run", steps=11))


def test_metrics_keep_the_last_line_of_each_step_in_step_order(tmp_path):
    run = RunFolder.at(tmp_path)
    assert run.metrics() == [] and run.metrics_lines() == []
    for step, loss in ((10, 1.0), (20, 0.5), (10, 0.9)):  # step 10 again, after a resume
        run.append_metrics({"step": step, "loss": loss})
    assert run.metrics() == [{"step": 10, "loss": 0.9}, {"step": 20, "loss": 0.5}]
    assert len(run.metrics_lines()) == 3


def test_finished_needs_the_best_checkpoint_and_afresh_clears_the_run_state(tmp_path):
    run = RunFolder.at(tmp_path)
    run.mark_finished({"best_step": 3})
    assert not run.is_finished()  # finished.json without best.pt is not a finished run
    run.best_checkpoint.write_bytes(b"x")
    run.write_mlflow_run_id("abc")
    (tmp_path / "ray_train").mkdir()
    assert run.is_finished() and run.mlflow_run_id() == "abc"
    assert json.loads((tmp_path / "finished.json").read_text()) == {"best_step": 3}
    run.write_config(config(tmp_path))
    run.start_afresh()
    assert not run.is_finished() and not run.has_best() and run.mlflow_run_id() is None
    assert not (tmp_path / "ray_train").exists() and run.config_file.is_file()  # the config is rewritten by the job


def test_status_and_the_folder_of_a_checkpoint(tmp_path):
    run = RunFolder.at(tmp_path / "trial")
    assert run.status() is None
    run.write_status("stopped")
    assert run.status() == "stopped"
    assert RunFolder.of_checkpoint(tmp_path / "trial" / "best.pt") == run
    assert RunFolder.of_checkpoint(tmp_path / "trial").name == "trial"
