"""Ray Tune sweeps: trials on tiny synthetic features, ASHA, MLflow parent and child runs, the exported
best config, interrupt and resume, refusals before any trial starts, the example sweep files, and the
results tables (fsar.sweep)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from helpers import make_signal_store
from ray.tune import Callback

from fsar.config import ConfigError
from fsar.search_space import Distribution, SearchSpace, load_search_space
from fsar.sweep import TrialRecord, best_trial, record_from_metrics, write_results_md, write_trials_csv
from pipelines.cli import main as cli
from pipelines.tune import SweepConfig, run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sweeps"
# Short trials: 40 steps validated every 10 on 100 episodes; a fraction of a second each once a trial
# process is warm.
FIXED = {"steps": 40, "val_every": 10, "val_episodes": 100, "episodes_per_step": 4, "warmup_steps": 2, "proj_dim": 16}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_signal_store(tmp_path_factory.mktemp("store") / "store")


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory):
    """An empty MLflow sqlite store, made once: creating its tables takes seconds, copying it does not."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(mlflow_template, tmp_path):
    path = tmp_path / "mlflow" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(mlflow_template, path)
    return f"sqlite:///{path}"


def write_space(path: Path, **kw) -> Path:
    data = {"method": "protonet", "trials": 4, "fixed": FIXED,
            "space": {"lr": {"choice": [1.0e-5, 3.0e-2]}, "temperature": {"uniform": [0.5, 1.0]}}} | kw
    path.write_text(yaml.safe_dump(data))
    return path


def mlflow_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fsar-tune")
    return client, client.search_runs([experiment.experiment_id])


def test_four_trial_sweep(store, tmp_path, ray_local, mlflow_uri):
    """Search seed 2 draws lr = 3e-2, 1e-5, 1e-5, 1e-5, and the trials run one at a time, in that order, so
    what ASHA sees does not depend on timing (run concurrently, the three 1e-5 trials could reach step 20
    first, tie, and all finish). At the step-20 rung each trial meets the median of those before it: the
    second and third (untrained, 20.6%) fall below it (43% or the median of 43% and 20.6%) and stop; the
    fourth ties the median of {43, 20.6, 20.6} = 20.6, is not below it, and runs to the end."""
    out = tmp_path / "sweep"
    space = write_space(tmp_path / "space.yaml", search_seed=2)
    assert cli(["tune", "--store", str(store), "--space", str(space), "--out", str(out),
                "--mlflow-uri", mlflow_uri, "grace_period=20", "max_concurrent=1", "verbose=0"]) == 0

    rows = {r["trial_id"]: r for r in (json.loads((f / "status.json").read_text()) | {"trial_id": f.name,
            "metrics": [json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()]}
            for f in (out / "trials").iterdir())}
    ordered = [rows[t] for t in sorted(rows)]  # trial ids end in their creation index
    assert [r["status"] for r in ordered] == ["finished", "stopped", "stopped", "finished"]
    assert [r["metrics"][-1]["step"] for r in ordered] == [40, 20, 20, 40]
    assert ordered[0]["metrics"][1]["val_accuracy"] > ordered[1]["metrics"][1]["val_accuracy"]

    client, runs = mlflow_runs(mlflow_uri)
    parents = [r for r in runs if r.data.tags.get("fsar.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("fsar.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["space.method"] == "protonet"
    assert parent.data.params["space.space.lr"] == "choice[1e-05, 0.03]"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.png", "trials.csv", "best_config.yaml", "sweep.yaml"} <= artifacts
    for child in children:
        trial_id = child.data.tags["fsar.trial_id"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["fsar.status"] == rows[trial_id]["status"]
        config = yaml.safe_load((out / "trials" / trial_id / "train_config.yaml").read_text())
        assert child.data.params["lr"] == str(config["lr"]) and config["lr"] in (1e-5, 3e-2)
        assert child.data.params["knobs.temperature"] == str(config["knobs"]["temperature"])
        assert child.data.params["knobs.proj_dim"] == "16" and child.data.params["steps"] == "40"
        curve = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert [m.step for m in curve] == [m["step"] for m in rows[trial_id]["metrics"]]
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["train_config.yaml"]

    table = (out / "trials.csv").read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("trial_id,status,lr,temperature,steps")
    assert (out / "results.png").stat().st_size > 10_000 and "stopped" in (out / "results.md").read_text()

    (loads,) = json.loads((out / "feature_loads.json").read_text()).values()  # one node
    assert loads == {"train/pooled": 1, "val/pooled": 1}  # four trials, one copy of each split

    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["lr"] == 3e-2 and best["knobs"]["proj_dim"] == 16 and best["mlflow_parent_run_id"] is None
    assert best["out"] == str(out / "best") and best["data"]["store"] == str(store.resolve())
    assert cli(["train", "--config", str(out / "best_config.yaml"), f"mlflow_uri={mlflow_uri}"]) == 0
    assert (out / "best" / "best.pt").is_file()


def test_a_sweep_on_object_storage(store, tmp_path, ray_local, mlflow_uri, s3):
    """Store and sweep folder in a bucket: Tune keeps its experiment there (storage_path = the sweep URI) and
    the driver writes every trial's folder and the results there."""
    import pyarrow.fs as pafs

    from fsar import storage

    pafs.copy_files(str(store), f"{s3}/store")
    out, space = f"{s3}/sweep", write_space(tmp_path / "space.yaml", trials=2)
    assert cli(["tune", "--store", f"{s3}/store", "--space", str(space), "--out", out, "--mlflow-uri", mlflow_uri,
                "max_concurrent=1", "verbose=0"]) == 0
    statuses = [json.loads(storage.read_text(p))["status"] for p in storage.list_files(out, "status.json", recursive=True)]
    assert len(statuses) == 2 and set(statuses) <= {"finished", "stopped"} and "finished" in statuses
    assert len(storage.list_files(f"{out}/trials", "metrics.jsonl", recursive=True)) == 2
    assert storage.list_files(f"{out}/tune", recursive=True, limit=1)  # Tune's own experiment state
    best = yaml.safe_load(storage.read_text(f"{out}/best_config.yaml"))
    assert best["out"] == f"{out}/best" and best["data"]["store"] == f"{s3}/store"
    assert "finished" in storage.read_text(f"{out}/results.md") and storage.size(f"{out}/results.png") > 10_000
    assert storage.is_file(f"{out}/trials.csv") and storage.is_file(f"{out}/feature_loads.json")


class InterruptAfter(Callback):
    """Sends this process SIGUSR1, which Ray Tune takes as Ctrl+C (save the state, stop), once ``n`` trials
    have completed. Tune pickles callbacks into its state, so the resumed sweep holds a copy too: the
    marker file keeps that copy quiet."""

    def __init__(self, n: int, marker: Path) -> None:
        self.n, self.marker, self.done = n, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.n and not self.marker.exists():
            self.marker.touch()
            assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None), "Tune installed no handler"
            os.kill(os.getpid(), signal.SIGUSR1)


def test_interrupt_and_resume(store, tmp_path, ray_local, monkeypatch):
    """The OTAM example sweep, shortened, one trial at a time: interrupted after two trials, resumed by
    running it again; the two are not rerun and no trial repeats a step."""
    monkeypatch.chdir(tmp_path)
    config = SweepConfig(store=store, space=EXAMPLES / "otam.yaml", out=tmp_path / "sweep", trials=3, max_concurrent=1,
                         fixed=FIXED | {"steps": 20}, verbose=0)
    first = run(config, callbacks=[InterruptAfter(2, tmp_path / "interrupted")])
    assert not first.complete and first.best_config is None
    done = {r.trial_id for r in first.records if r.status in ("finished", "stopped")}
    assert len(done) == 2
    before = {t: (tmp_path / "sweep" / "trials" / t / "metrics.jsonl").read_text() for t in done}
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")  # the default store
    assert next(r for r in runs if r.data.tags["fsar.kind"] == "sweep").info.status == "KILLED"

    second = run(config)
    assert second.complete and len(second.records) == 3 and second.best_config.is_file()
    assert all(r.status in ("finished", "stopped") for r in second.records)
    for trial_id, text in before.items():  # finished before the interruption: nothing new
        assert (tmp_path / "sweep" / "trials" / trial_id / "metrics.jsonl").read_text() == text
    for record in second.records:
        steps = [json.loads(line)["step"] for line in
                 (tmp_path / "sweep" / "trials" / record.trial_id / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)), record  # resumed trials continue from their checkpoint
    rungs = json.loads((tmp_path / "sweep" / "asha.json").read_text())
    assert {t for bracket in rungs for _, recorded in bracket for t in recorded} == {r.trial_id for r in second.records}
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")  # the default store
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # 1 parent + 3 children, reused

    assert not (tmp_path / "mlruns").exists() and list((tmp_path / "sweep" / "mlartifacts").rglob("results.md"))

    third = run(config)  # a finished sweep rerun: the same results, nothing trained
    assert [r.trial_id for r in third.records] == [r.trial_id for r in second.records]
    assert {t: (tmp_path / "sweep" / "trials" / t / "metrics.jsonl").read_text() for t in done} == before


@pytest.mark.parametrize(("space", "message"), [
    ({"space": {"lr": {"choice": [1e-3]}, "gama": {"choice": [0.1]}}}, "unknown parameter 'gama'"),
    ({"space": {"lr": {"loguniform": [1e-2, 1e-4]}}}, "space.lr: loguniform range .* is empty"),
    ({"space": {"temperature": {"uniform": [-1.0, 1.0]}}}, "space.temperature: .*would give -1.0"),
    ({"fixed": FIXED | {"way": 7}}, "val: way=7 needs 7 classes"),  # the store has 6 validation classes
])
def test_refused_before_any_trial(store, tmp_path, monkeypatch, capsys, space, message):
    def no_ray(**kw):
        raise AssertionError("Ray was started for a sweep that should have been refused")

    monkeypatch.setattr("pipelines.ray_runtime.init_ray", no_ray)
    path = write_space(tmp_path / "space.yaml", **space)
    assert cli(["tune", "--store", str(store), "--space", str(path), "--out", str(tmp_path / "sweep")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "sweep" / "tune").exists() and not (tmp_path / "sweep" / "trials").exists()


def test_sweep_settings_refused_up_front(store, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.ray_runtime.init_ray", lambda **kw: pytest.fail("Ray started"))
    path = write_space(tmp_path / "space.yaml")
    for bad, message in ((dict(reduction_factor=1.0), "reduction_factor must be > 1"),
                         (dict(grace_period=41), "grace_period=41 must be in \\[1, steps=40\\]"),
                         (dict(cpus_per_trial=0.0), "a trial needs some CPU or GPU")):
        with pytest.raises(ConfigError, match=message):
            run(SweepConfig(store=store, space=path, out=tmp_path / "sweep", **bad))
    (tmp_path / "sweep" / "tune").mkdir(parents=True)
    (tmp_path / "sweep" / "sweep.yaml").write_text(yaml.safe_dump({"store": str(store), "space": {"method": "otam"}}))
    with pytest.raises(ConfigError, match="holds a sweep started with another space;"):
        run(SweepConfig(store=store, space=path, out=tmp_path / "sweep"))


def test_example_otam_sweep_is_valid(store):
    space = load_search_space(EXAMPLES / "otam.yaml")
    assert space.method == "otam" and {"lr", "gamma", "temporal_centre"} <= set(space.space)
    assert space.space["lr"].kind == "loguniform" and space.fixed["shot"] == 1
    from fsar.training.loop import check_training_inputs

    for values in space.probe_values():  # every probe trains on a frame store
        check_training_inputs(space.train_config(values, source=store, out="unused"))


def test_example_a2m2_sweep_is_valid():
    from fsar.methods import list_methods

    if "a2m2" not in list_methods():
        pytest.skip("a2m2 is not registered")
    space = load_search_space(EXAMPLES / "a2m2.yaml")
    assert space.method == "a2m2" and {"ot_epsilon", "scales", "lr"} <= set(space.space)
    assert [4, 8] in space.space["scales"].values  # the default set is among the choices


def test_example_clip_fsar_sweep_is_valid(tmp_path):
    from helpers import make_signal_store

    from fsar.training.loop import check_training_inputs

    space = load_search_space(EXAMPLES / "clip_fsar.yaml")
    assert space.method == "clip_fsar" and 3.0 in space.space["text_loss_weight"].values
    store = make_signal_store(tmp_path / "store", text=True)
    for values in space.probe_values():  # every probe builds on a store with class text
        check_training_inputs(space.train_config(values, source=store, out="unused"))


def test_results_tables(tmp_path):
    space = SearchSpace(method="otam", space={"lr": {"loguniform": [1e-4, 1e-2]}, "gamma": {"choice": [0.01, 0.1]}})
    curve = [{"step": 10, "val_accuracy": 30.0}, {"step": 20, "val_accuracy": 45.0}, {"step": 30, "val_accuracy": 45.0}]
    record = record_from_metrics("t1", {"lr": 1e-3, "gamma": 0.1}, curve, status="finished", mlflow_run_id="r1")
    assert (record.steps, record.val_accuracy, record.best_val_accuracy, record.best_step) == (30, 45.0, 45.0, 20)
    never = record_from_metrics("t0", {"lr": 1e-4, "gamma": 0.01}, [], status="error", mlflow_run_id=None)
    assert math.isnan(never.best_val_accuracy) and never.steps == 0
    early = TrialRecord("t2", "stopped", {"lr": 1e-2, "gamma": 0.01}, 10, 45.0, 45.0, 10, "r2")
    assert best_trial([never, early, record]) == record  # ties go to the trial that trained longer
    assert best_trial([never]) is None
    write_trials_csv([never, early, record], space, tmp_path / "trials.csv")
    lines = (tmp_path / "trials.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["trial_id", "t1", "t2", "t0"]
    text = write_results_md([never, early, record], space, tmp_path / "results.md").read_text()
    assert "| **t1** | **finished** | **0.001** | **0.1** |" in text and "1 stopped early by ASHA" in text
    assert "1 failed" in text


def test_results_plot_with_list_valued_choices(tmp_path):
    from fsar.sweep import plot_sweep

    space = SearchSpace(method="otam", space={"gamma": {"choice": [0.01, 0.1]}, "lr": {"uniform": [1e-4, 1e-2]}})
    space.space["gamma"] = Distribution("choice", ([1], [1, 2], [1, 2, 4]))  # list values, as A2M2's scale sets
    records = [TrialRecord(f"t{i}", "finished" if i % 2 else "stopped", {"gamma": [1, 2][: 1 + i % 2], "lr": 1e-3 * (i + 1)},
                           40, 30.0 + i, 30.0 + i, 40, None) for i in range(4)]
    path = plot_sweep(records, space, tmp_path / "results.png", chance=20.0)
    assert path.stat().st_size > 10_000


@pytest.mark.slow
def test_example_otam_sweep_on_the_demo_store(tmp_path, ray_local):
    """The OTAM example as shipped, on the embedded synthetic default (`fsar demo`'s store)."""
    from fsar.backbones import TINY_MODEL
    from fsar.data.synthetic import SynthConfig, generate
    from fsar.embedding import EmbedConfig
    from pipelines.embed import run as embed

    manifest = generate(SynthConfig(out=tmp_path / "data", classes=100, videos_per_class=20, frames=32, size=64),
                        progress=False)
    embed(EmbedConfig(manifest=manifest, out=tmp_path / "store", backbone=TINY_MODEL, pretrained="none", frames=8,
                      patch_grid=4, engine="ray"), progress=False)
    result = run(SweepConfig(store=tmp_path / "store", space=EXAMPLES / "otam.yaml", out=tmp_path / "sweep",
                             fixed={"view": "grid"}, verbose=0))
    assert result.complete and len(result.records) == 8
    assert any(r.status == "stopped" for r in result.records)
    assert result.best.best_val_accuracy > 50 and result.best.values["temporal_centre"] is True


def test_an_end_to_end_sweep_whose_trial_is_a_two_worker_ray_train_run(synth, tmp_path, ray_local, mlflow_uri):
    """``--manifest`` with ``--workers-per-trial 2``: the trial drives a 2-worker Ray Train run on the backbone
    stage, its validations reach Tune (and the tracker) through TuneReportCallback, and the workers leave the
    logging to the tracker: one metrics line per validation, one MLflow run per trial."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "protonet", "trials": 1,
        "fixed": {"steps": 4, "val_every": 2, "val_episodes": 10, "episodes_per_step": 2, "warmup_steps": 1,
                  "way": 3, "query": 1, "frames": 4, "stage": {"tune": "last:1"}},
        "space": {"stage.lr_scale": {"choice": [0.5]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}}))
    out = tmp_path / "sweep"
    assert cli(["tune", "--manifest", str(synth), "--space", str(space), "--out", str(out), "--workers-per-trial", "2",
                "--cpus-per-trial", "0.5", "--mlflow-uri", mlflow_uri, "verbose=0"]) == 0
    (trial,) = (out / "trials").iterdir()
    config = yaml.safe_load((trial / "train_config.yaml").read_text())
    assert config["workers"] == 2 and config["data"]["manifest"] == str(synth.resolve())
    assert config["data"]["stage"] == config["data"]["stage"] | {"tune": "last:1", "lr_scale": 0.5}
    assert config["data"]["decode"] == "threads"  # Ray Data decode tasks would find no CPU beside the workers
    metrics = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert json.loads((trial / "status.json").read_text())["status"] == "finished"
    assert (trial / "best.pt").is_file()
    _, runs = mlflow_runs(mlflow_uri)
    assert sorted(r.data.tags.get("fsar.kind") for r in runs) == ["sweep", "trial"]
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["workers"] == 2 and best["data"]["stage"]["lr_scale"] == 0.5


def test_a_sweep_takes_one_source_and_whole_gpus_per_worker(store, synth, tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.ray_runtime.init_ray", lambda **kw: pytest.fail("Ray started"))
    path = write_space(tmp_path / "space.yaml")
    for bad, message in ((dict(store=store, manifest=synth), "exactly one of --store"),
                         (dict(), "exactly one of --store"),
                         (dict(store=store, workers_per_trial=2, gpus_per_trial=0.5), "takes a whole GPU"),
                         (dict(store=store, workers_per_trial=-1), "workers_per_trial must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            run(SweepConfig(space=path, out=tmp_path / "sweep", **bad))
    stage_knob = write_space(tmp_path / "stage.yaml", space={"stage.lr_scale": {"choice": [0.1, 1.0]}})
    with pytest.raises(ConfigError, match="unknown parameter 'stage.lr_scale'"):  # a store sweep has no stage
        run(SweepConfig(store=store, space=stage_knob, out=tmp_path / "sweep"))


def test_example_end_to_end_sweep_is_valid():
    space = load_search_space(EXAMPLES / "dmgal_adapter_e2e.yaml", data="manifest")
    assert space.method == "dmgal_adapter" and space.data == "manifest" and set(space.space) == {"lr", "temperature"}
    config = space.train_config({"lr": 1e-3, "temperature": 0.5}, source="/data/m.parquet", out="/sweeps/t")
    assert config.data.decode == "threads" and config.knobs == {"pool": "mean", "temperature": 0.5}
    with pytest.raises(ConfigError, match="unknown parameter 'frames'"):  # a manifest setting, on a store sweep
        load_search_space(EXAMPLES / "dmgal_adapter_e2e.yaml")
