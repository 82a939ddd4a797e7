"""Ray Train job: in-process mode and real 2-worker TorchTrainers on CPU — the same experiment on any
worker count, every cached-feature method under DDP — MLflow and best.pt outputs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import config, make_shifting_patch_store, make_signal_store, pixels_config

from fsar.config import ConfigError
from fsar.training.checkpoint import load_checkpoint
from pipelines.train import run


@pytest.fixture(scope="module")
def signal_store(tmp_path_factory):
    return make_signal_store(tmp_path_factory.mktemp("store") / "store")


@pytest.fixture(scope="module")
def in_process(signal_store, tmp_path_factory):
    """The reference run: one worker, in this process."""
    return run(config(signal_store, tmp_path_factory.mktemp("in-process") / "run", workers=0))


def check_outputs(result, steps, val_every):
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(val_every, steps + 1, val_every))
    assert lines[-1]["best_val_accuracy"] > lines[0]["val_accuracy"]  # improves over its first check
    assert result.best_val_accuracy == max(m["val_accuracy"] for m in lines)
    method, payload = load_checkpoint(result.best_checkpoint)
    assert payload["step"] == result.best_step and payload["val_accuracy"] == result.best_val_accuracy
    assert (result.run_dir / "train_config.yaml").is_file()
    return lines


def test_in_process(in_process, tmp_path):
    result = in_process
    check_outputs(result, 60, 20)
    from mlflow.tracking import MlflowClient

    logged = MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'mlflow.db'}").get_run(result.mlflow_run_id)
    assert logged.data.params["method"] == "protonet" and logged.data.params["knobs.proj_dim"] == "16"
    assert logged.data.metrics["best_val_accuracy"] == pytest.approx(result.best_val_accuracy)


def test_two_workers_run_the_same_experiment(signal_store, in_process, tmp_path, ray_local):
    """``episodes_per_step`` is global: two DDP workers with half the episodes each follow the one-worker run's
    training curve and end with its weights (up to the order of floating-point reductions)."""
    result = run(config(signal_store, tmp_path / "run", workers=2))
    lines = check_outputs(result, 60, 20)
    assert lines[-1]["episodes_per_s"] > 0
    reference = [json.loads(line) for line in (in_process.run_dir / "metrics.jsonl").read_text().splitlines()]
    for two, one in zip(lines, reference, strict=True):
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
        assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=1e-6)
    assert result.best_step == in_process.best_step
    ours, _ = load_checkpoint(result.best_checkpoint)
    theirs, _ = load_checkpoint(in_process.best_checkpoint)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=name)


def test_a_global_batch_the_workers_cannot_split_is_refused(signal_store, tmp_path):
    from fsar.config import ConfigError

    with pytest.raises(ConfigError, match="episodes_per_step=6 .* does not divide among 4 workers"):
        run(config(signal_store, tmp_path / "run", workers=4, episodes_per_step=6))


def test_mlflow_artifacts_stay_in_the_run_folder(signal_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(config(signal_store, tmp_path / "run", workers=0, steps=20))
    assert not (tmp_path / "mlruns").exists()
    assert list((result.run_dir / "mlartifacts").rglob("train_config.yaml"))


def test_no_secret_of_the_environment_reaches_mlflow_configs_or_files(signal_store, tmp_path, monkeypatch):
    """Credentials and tokens live in the environment; none may land in params, tags, artifacts or run files."""
    from mlflow.tracking import MlflowClient

    secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-value-4711", "RAY_AUTH_TOKEN": "s3cr3t-ray-token-4712",
               "AWS_SESSION_TOKEN": "s3cr3t-session-4713"}
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    result = run(config(signal_store, tmp_path / "run", workers=0, steps=20))
    run_logged = MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'mlflow.db'}").get_run(result.mlflow_run_id)
    logged = json.dumps({"params": run_logged.data.params, "tags": run_logged.data.tags})
    files = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert files and any(p.name == "train_config.yaml" for p in files)
    for value in secrets.values():
        assert value not in logged
        assert not [p for p in files if value.encode() in p.read_bytes()]  # the sqlite file and artifacts too


def test_every_cached_method_trains_under_ddp_with_two_workers(tmp_path, ray_local, synth):
    """One real 2-worker TorchTrainer runs a few DDP steps of every registered cached-feature method (and of
    the settings in which a method builds fewer parts) through ``train_worker`` and ``ddp_wrap``, then of methods
    on the backbone stage end to end (each regime that trains a part of the encoder, class text from the stage's
    text tower included). A parameter that gets no gradient would make DDP fail the step after it."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fsar.methods import list_methods, method_info

    with_text = str(make_shifting_patch_store(tmp_path / "store"))  # patch grid and class text
    textless = str(make_signal_store(tmp_path / "textless"))  # pooled frames only, no class text
    small = {"reduce_dim": 4, "embed_dim": 8, "weight_hidden": 8, "dim": 8, "heads": 2, "proj_dim": 8, "num_frames": 4}
    cases = []
    for name in list_methods():
        if method_info(name).input_kind == "pixels":
            continue
        fields = method_info(name).config.__dataclass_fields__
        cases.append((with_text, name, {k: v for k, v in small.items() if k in fields}))
    cases += [(with_text, "i2st", {"dim": 8, "heads": 2, "layers": 0, "match_features": "frame"}),
              (textless, "a2m2", {"reduce_dim": 4, "embed_dim": 8, "weight_hidden": 8})]
    assert {"protonet", "otam", "bimhm", "a2m2", "i2st"} <= {name for _, name, _ in cases}
    # End to end: (method, knobs, the stage's tune) on the manifest, decoded by each worker's thread pool.
    stage_cases = [("otam", {"proj_dim": 8}, "lora:2"), ("a2m2", {"reduce_dim": 4, "embed_dim": 8}, "last:1"),
                   ("i2st", {"dim": 8, "heads": 2}, "full")]
    settings = {"steps": 3, "val_every": 3, "val_episodes": 10, "episodes_per_step": 4, "workers": 2,
                "warmup_steps": 1}

    def loop(_: dict) -> None:
        import ray.train

        from fsar.data.sections import ManifestData, StageSettings, StoreData
        from fsar.training.config import TrainConfig
        from fsar.training.loop import train_worker
        from pipelines.train import ddp_wrap

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        done = []
        for i, (store, name, knobs) in enumerate(cases):
            # The pooled-only store gives a patch method its 1x1 grid when it asks for it (data.view=pooled).
            view = "pooled" if store == textless and method_info(name).input_kind == "patches" else "auto"
            config = TrainConfig(method=name, knobs=knobs, data=StoreData(store=store, view=view),
                                 out=str(tmp_path / f"run{i}"), **settings)
            steps = []
            train_worker(config, rank=rank, world_size=world, wrap=ddp_wrap(world),
                         report=lambda m, p, steps=steps: steps.append(m["step"]))
            done.append(name if steps == [3] else f"{name}: reports at {steps}")
        for i, (name, knobs, tune) in enumerate(stage_cases):
            data = ManifestData(manifest=synth, frames=4, decode="threads", decode_threads=1,
                                stage=StageSettings(tune=tune, patch_grid=2))
            config = TrainConfig(method=name, knobs=knobs, data=data, out=str(tmp_path / f"e2e{i}"),
                                 **(settings | {"way": 3, "query": 1}))  # the synth fixture: 4 train, 3 val classes
            steps = []
            train_worker(config, rank=rank, world_size=world, wrap=ddp_wrap(world),
                         report=lambda m, p, steps=steps: steps.append(m["step"]))
            done.append(f"{name} {tune}" if steps == [3] else f"{name} {tune}: reports at {steps}")
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(done))

    result = TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=2),
                          run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    assert result.error is None
    expected = [name for _, name, _ in cases] + [f"{name} {tune}" for name, _, tune in stage_cases]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected


def test_one_ray_worker_streams_decoded_episodes(synth, tmp_path, ray_local):
    """A manifest run through Ray Train: the worker decodes its own episodes in Ray Data tasks."""
    result = run(pixels_config(synth, tmp_path / "run", workers=1, steps=4, val_every=2))
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [2, 4] and lines[-1]["episodes_per_s"] > 0
    assert all(m["failed_videos"] == 0 for m in lines)
    method, payload = load_checkpoint(result.best_checkpoint)
    assert payload["method"] == "dmgal_adapter" and payload["frozen_rebuilt"]


def test_a_manifest_run_must_leave_a_cpu_for_decoding(tmp_path):
    from fsar.config import ConfigError
    from fsar.data.sections import ManifestData, StoreData
    from fsar.training.config import TrainConfig
    from pipelines.train import check_decode_room

    config = TrainConfig(method="dmgal_adapter", out=tmp_path, data=ManifestData(manifest=tmp_path / "m.parquet"),
                         workers=2)
    with pytest.raises(ConfigError, match="leaving none to decode"):
        check_decode_room(config, {"CPU": 2.0})
    check_decode_room(config, {"CPU": 3.0})
    check_decode_room(TrainConfig(method="otam", out=tmp_path, data=StoreData(store=tmp_path), workers=2),
                      {"CPU": 2.0})


def test_store_and_run_folder_on_object_storage(signal_store, in_process, tmp_path, ray_local, s3):
    """Store and run folder in a bucket: two Ray Train workers read the store from it, Ray Train keeps its
    checkpoints there (storage_path = the run URI), and rank 0 writes best.pt and the metrics there; the
    experiment is the in-process one."""
    import pyarrow.fs as pafs

    from fsar import storage

    pafs.copy_files(str(signal_store), f"{s3}/store")
    out = f"{s3}/runs/protonet"
    result = run(config(f"{s3}/store", out, workers=2, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert result.run_dir == out and result.best_checkpoint == f"{out}/best.pt"
    lines = [json.loads(line) for line in storage.read_text(f"{out}/metrics.jsonl").splitlines()]
    reference = [json.loads(line) for line in (in_process.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_accuracy"] for m in lines] == pytest.approx([m["val_accuracy"] for m in reference], abs=1e-6)
    method, payload = load_checkpoint(out)
    assert payload["step"] == result.best_step == in_process.best_step
    assert storage.list_files(f"{out}/ray_train", "checkpoint.pt", recursive=True)  # Ray Train's own checkpoints
    assert storage.is_file(f"{out}/train_config.yaml") and storage.is_file(f"{out}/finished.json")
    assert run(config(f"{s3}/store", out, workers=2, mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")) == result


def test_a_run_folder_on_object_storage_needs_a_tracking_uri(signal_store, s3, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="object storage.*MLFLOW_TRACKING_URI"):
        run(config(signal_store, f"{s3}/runs/x", workers=2))
