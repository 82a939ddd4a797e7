"""Jobs on a real Ray cluster: `ray job submit` of embed + train, a training worker killed mid-run, reruns.

The cluster is started by the tests (`ray start --head` on 127.0.0.1 with its own temporary folder and
free ports) and stopped at the end by killing only its own processes: `ray stop` would stop every Ray
process on the machine, other people's test clusters included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import RAY, RAY_ENV, VENV_BIN, free_port, stop_cluster

from fsar.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 420  # the machine is 2 cores shared with other test runs: generous


@dataclass(frozen=True)
class LocalCluster:
    """A one-node Ray cluster started for these tests; ``dashboard`` is the job-submission address."""

    dashboard: str
    gcs: str
    temp_dir: Path
    env: dict[str, str]

    @property
    def job_env(self) -> dict[str, str]:
        """Environment of the job's processes. RAY_ADDRESS pins Ray's own helpers (e.g. Ray Train's placement
        group cleaner) to this cluster: with several clusters on one machine they cannot guess which."""
        return RAY_ENV | {"RAY_ADDRESS": self.gcs}

    def submit(self, entrypoint: str, *, extra: list[str] | None = None,
               timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``ray job submit --working-dir <repo> -- <entrypoint>``: the command a user types, waited on."""
        runtime_env = json.dumps({"env_vars": self.job_env})
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO),
               "--runtime-env-json", runtime_env, *(extra or []), "--", "bash", "-c", entrypoint]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def started_cluster(extra_env: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """``ray start --head`` on 127.0.0.1 with free ports and its own temporary folder, stopped by process id."""
    # A short path: Ray puts unix sockets under it (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="fsar-ray-", dir="/tmp"))
    gcs_port, dash_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_ENV | (extra_env or {})
    # Workers and job drivers inherit the raylet's PATH: `python` in an entrypoint is this venv's.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    cmd = [RAY, "start", "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
           # Fixed default ports would collide with another cluster on this machine.
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           "--num-cpus=2", "--disable-usage-stats"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        cluster = LocalCluster(f"http://127.0.0.1:{dash_port}", f"127.0.0.1:{gcs_port}", temp_dir, env)
        _wait_for_job_server(cluster)
        yield cluster
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    with started_cluster() as cluster:
        yield cluster


def _wait_for_job_server(cluster: LocalCluster, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:  # in a subprocess with the cluster's environment: its token, if it has one
            probe = subprocess.run([RAY, "job", "list", "--address", cluster.dashboard], env=cluster.env,
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                return
            raise RuntimeError(probe.stderr[-500:])
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.fixture(scope="module")
def synth_videos(tmp_path_factory) -> Path:
    """6 classes × 3 generated videos (16 frames, 64 px), two classes per split; returns the manifest."""
    from fsar.data.synthetic import SynthConfig, generate

    return generate(SynthConfig(out=tmp_path_factory.mktemp("synth"), classes=6, videos_per_class=3, frames=16,
                                size=64, class_split=(2, 2, 2), workers=1), progress=False)


# Slow: 100-210 s on the shared 2-core development machine (a cluster start, a job with an embed and a
# 2-worker Ray Train run); `pytest -m slow` runs it.
@pytest.mark.slow
def test_job_submit_embeds_and_trains_on_the_cluster(local_cluster, synth_videos, tmp_path):
    store, run_dir = tmp_path / "store", tmp_path / "run"
    (tmp_path / "embed.yaml").write_text(yaml.safe_dump({
        "manifest": str(synth_videos), "out": str(store), "backbone": "fsar-tiny", "pretrained": "none",
        "frames": 4, "batch_size": 6}))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "data": {"store": str(store)}, "out": str(run_dir), "method": "protonet", "knobs": {"proj_dim": 16},
        "way": 2, "shot": 1, "query": 2, "steps": 6, "val_every": 3, "val_episodes": 20, "workers": 2,
        "episodes_per_step": 2}))
    job = local_cluster.submit(f"python -m pipelines.embed --config {tmp_path / 'embed.yaml'} && "
                               f"python -m pipelines.train --config {tmp_path / 'train.yaml'}")
    (tmp_path / "job.log").write_text(job.stdout + job.stderr)  # for a failure's post-mortem
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "succeeded" in job.stdout

    from fsar.data.feature_store import FeatureStore
    from fsar.training.checkpoint import load_checkpoint

    ids = FeatureStore(store).table["video_id"].to_pylist()
    assert len(ids) == 18 and len(set(ids)) == 18  # every video embedded exactly once
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6]
    _, payload = load_checkpoint(run_dir / "best.pt")
    assert payload["step"] in (3, 6)
    assert (run_dir / "mlflow.db").is_file() and (run_dir / "finished.json").is_file()


def _train_worker_pids(dashboard: str) -> list[int]:
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [int(a.pid) for a in actors if a.pid]


# Slow: 115-225 s there (two worker-group starts, 150 steps with a checkpoint every 10).
@pytest.mark.slow
def test_killed_training_worker_is_replaced_and_resumes_from_checkpoint(local_cluster, tmp_path):
    from helpers import make_signal_store
    from ray.job_submission import JobStatus, JobSubmissionClient

    from fsar.training.checkpoint import load_checkpoint

    store, run_dir = make_signal_store(tmp_path / "store"), tmp_path / "run"
    steps, val_every, kill_after = 150, 10, 30
    client = JobSubmissionClient(local_cluster.dashboard)
    job_id = client.submit_job(
        entrypoint=f"python -m pipelines.train --store {store} --method protonet --out {run_dir} --workers 2 "
                   f"--steps {steps} val_every={val_every} val_episodes=50 episodes_per_step=4 knobs.proj_dim=16",
        runtime_env={"working_dir": str(REPO), "env_vars": local_cluster.job_env})

    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    killed = None
    while killed is None:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-4000:]
        assert client.get_job_status(job_id) == JobStatus.RUNNING or not metrics.is_file(), (
            "the job ended before a worker could be killed:\n" + client.get_job_logs(job_id)[-4000:])
        logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        if logged and logged[-1] >= kill_after:
            pids = _train_worker_pids(local_cluster.dashboard)
            if len(pids) == 2:
                killed = max(pids)  # either rank: losing one stops the group, which Ray Train replaces
                os.kill(killed, signal.SIGKILL)
                killed_at = logged[-1]
        time.sleep(0.2)

    while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-4000:]
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    (tmp_path / "job.log").write_text(logs)  # for a failure's post-mortem
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-4000:]

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumed = [m for m in lines if "resumed_from_step" in m]
    assert resumed, "no metrics after a resume"
    first = resumed[0]
    start = int(first["resumed_from_step"])
    # Resumed from a checkpoint taken before the kill (not from step 0), and carried on from there.
    assert val_every <= start <= killed_at + val_every and start % val_every == 0
    assert first["step"] == start + val_every
    assert lines[-1]["step"] == steps
    assert killed not in _train_worker_pids(local_cluster.dashboard)
    _, payload = load_checkpoint(run_dir / "best.pt")
    assert payload["step"] % val_every == 0 and payload["val_accuracy"] == max(m["val_accuracy"] for m in lines)
    # Seen with `pytest -s`. The resume step can trail the kill: the controller collects reports every 2 s,
    # and the checkpoints of reports it had not collected when the group died are not resumed from.
    print(f"killed worker pid {killed} after step {killed_at}; resumed from step {start}")


def test_rerunning_a_finished_training_run_is_a_no_op(tmp_path):
    from helpers import config, make_signal_store

    from pipelines.train import run

    cfg = config(make_signal_store(tmp_path / "store"), tmp_path / "run", workers=0, steps=20, val_every=10,
                 val_episodes=50)
    first = run(cfg)
    before = (first.run_dir / "metrics.jsonl").read_text()
    start = time.perf_counter()
    again = run(cfg)
    assert time.perf_counter() - start < 5
    assert again == first and (first.run_dir / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="holds a finished run of another config.*--overwrite"):
        run(dataclasses.replace(cfg, steps=30))  # a finished run is never replaced without asking
    changed = run(dataclasses.replace(cfg, steps=30), overwrite=True)  # then the folder starts afresh
    steps = [json.loads(line)["step"] for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert changed.steps == 30 and steps == [10, 20, 30]


def test_rerunning_a_finished_embed_job_is_a_no_op(videos, ray_local):
    from helpers import embed_config

    from pipelines.embed import run

    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store", engine="ray")
    assert run(cfg, progress=False).shards_written == 3
    start = time.perf_counter()
    again = run(cfg, progress=False)
    assert (again.shards_written, again.shards_skipped, again.videos) == (0, 3, 6)
    assert time.perf_counter() - start < 30


def test_a_chunk_written_twice_is_stored_once(videos):
    """A retried Ray task rewrites its chunk's part under the same name, and its report may reach the driver
    twice: the merged shard still holds each video once, and the tracker counts the chunk once."""
    from helpers import embed_config

    from fsar.data.feature_store import FeatureStore
    from fsar.embedding import (
        ShardTracker,
        decode_chunk,
        finish_embedding,
        load_backbone,
        merge_shard,
        plan_embedding,
        write_chunk,
    )

    manifest, tmp = videos
    cfg = embed_config(manifest, tmp / "store", chunk_size=2)
    backbone = load_backbone(cfg, device="cpu")
    plan = plan_embedding(cfg, backbone)
    tracker = ShardTracker(plan)
    for chunk in plan.chunks + plan.chunks[:2]:  # the first two chunks run again (a retry after a lost worker)
        report = write_chunk(chunk, decode_chunk(chunk, cfg), backbone, cfg)
        for _ in range(2):  # ... and their reports arrive twice
            if tracker.add(report):
                merge_shard(plan.root, chunk.shard, plan.parts[chunk.shard])
    summary = finish_embedding(plan, tracker)
    ids = FeatureStore(tmp / "store").table["video_id"].to_pylist()
    assert (summary.videos, summary.failures) == (6, 3) and (tracker.videos, tracker.failures) == (6, 3)
    assert sorted(ids) == [f"good{i}" for i in range(6)]


def test_embed_job_survives_a_worker_that_dies_mid_task(videos, ray_local, monkeypatch):
    """The task of the chunk holding video good3 kills its worker process the first time (as a lost node
    would), after other chunks' parts are written and reported; Ray retries the task and the store still
    holds every good video exactly once."""
    from helpers import embed_config

    import pipelines.embed as embed
    from fsar.data.feature_store import FeatureStore

    manifest, tmp = videos
    marker = tmp / "crashed"
    real = embed._embed_chunks

    def crash_once(batch, **kwargs):  # a local function: Ray pickles it by value to the workers
        if any(a <= 3 < b for a, b in zip(batch["start"], batch["stop"], strict=True)):  # the row of good3
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass  # the retry
        return real(batch, **kwargs)

    monkeypatch.setattr(embed, "_embed_chunks", crash_once)
    summary = embed.run(embed_config(manifest, tmp / "store", engine="ray", chunk_size=1), progress=False)
    assert marker.is_file(), "no worker was killed"
    ids = FeatureStore(tmp / "store").table["video_id"].to_pylist()
    assert (summary.videos, summary.failures) == (6, 3)
    assert sorted(ids) == [f"good{i}" for i in range(6)]


def test_a_cluster_with_token_authentication_refuses_a_stranger_and_runs_the_token_holders_job(tmp_path):
    """What every recipe in cluster/ turns on: RAY_AUTH_MODE=token. A submission without the token is refused;
    the same submission with it (RAY_AUTH_TOKEN in the environment, as the recipes hand it over) runs."""
    import secrets

    token = secrets.token_hex(16)
    with started_cluster({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}) as cluster:
        job = ["job", "submit", "--address", cluster.dashboard, "--", "python", "-c", "print('fsar ok')"]
        stranger = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"} | {"RAY_AUTH_MODE": "disabled"}
        refused = subprocess.run([RAY, *job], env=stranger, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "fsar ok" not in refused.stdout
        wrong = cluster.env | {"RAY_AUTH_TOKEN": secrets.token_hex(16)}
        assert subprocess.run([RAY, *job], env=wrong, capture_output=True, text=True, timeout=120).returncode != 0
        ran = subprocess.run([RAY, *job], env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        assert ran.returncode == 0 and "fsar ok" in ran.stdout, ran.stdout[-2000:] + ran.stderr[-2000:]
        assert token not in ran.stdout + ran.stderr  # the secret is not echoed into logs
