"""Hard kills of a job's driver, then the same command again: what was lost, duplicated or repeated.

``python -m pipelines.bench.faults --out DIR [--videos-per-class 4]``

Each scenario starts an fsar command as its own process, SIGKILLs it once it has done part of its work, and
reruns the same command to the end:

- ``embed``: ``fsar embed`` (local engine) killed after its first shard file; afterwards every manifest video
  must be in the store exactly once (or in its failures), and ``fsar store check`` clean;
- ``train``: ``fsar train`` (in-process) killed after its first validation; the rerun must resume from the last
  checkpoint (its first metrics line says ``resumed_from_step``), repeat no more steps than one validation
  interval, and finish;
- ``predict``: ``fsar predict`` killed after its first part file; afterwards every query must be predicted exactly
  once;
- ``sweep``: ``fsar tune`` killed once a trial has finished; the rerun must keep that trial as it was and finish
  the others (Tune's own experiment state, restored).

The embed, training and sweep rows run again with the store, run and sweep folders on a local S3 server (moto, on
127.0.0.1, stopped by its process id) unless ``--s3-port -1``.

``tests/test_faults.py`` runs both at a tiny size; this prints one row per scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fsar import storage
from fsar.storage import Location
from pipelines.command import Command, run_alone

ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _fsar(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def kill_when(cmd: list[str], ready: Any, *, timeout: float = 300) -> bool:
    """Start ``cmd``; SIGKILL it (and its children) as soon as ``ready()`` holds. False: it ended first."""
    process = subprocess.Popen(cmd, env=os.environ | ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        raise TimeoutError(f"{cmd} did not reach its kill point in {timeout} s")
    return False


def rerun(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=os.environ | ENV, capture_output=True, text=True, timeout=600)


def _where(location: Location) -> str:
    return "S3 server" if storage.is_uri(location) else "local disk"


def _told(process: subprocess.CompletedProcess[str]) -> str:
    return process.stdout.strip().splitlines()[-1] if process.stdout.strip() else process.stderr[-300:]


def embed_scenario(manifest: Path, store: Location) -> dict[str, Any]:
    """Kill ``fsar embed`` after its first shard, rerun it, and count what the store holds. ``store``: a folder
    or a URI."""
    import pyarrow.parquet as pq

    from fsar.data.feature_store import FeatureStore
    from fsar.data.store_check import check_store

    cmd = _fsar(["embed", "--manifest", str(manifest), "--out", str(store), "--backbone", "fsar-tiny",
                 "--pretrained", "none", "--frames", "4", "engine=local", "shard_size=8", "chunk_size=4",
                 "mlflow=false"])
    killed = kill_when(cmd, lambda: bool(storage.list_files(store, "shard-*.parquet", limit=1)))
    again = rerun(cmd)
    ids = FeatureStore(store).table["video_id"].to_pylist()
    failures = storage.join(store, "failures.parquet")
    fs, path = storage.filesystem(failures)
    failed = pq.read_table(path, filesystem=fs).num_rows if storage.is_file(failures) else 0
    wanted = pq.read_table(manifest).num_rows
    return {"job": f"fsar embed ({_where(store)})", "injected": "SIGKILL of the driver after its first shard",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": wanted - len(set(ids)) - failed,
            "duplicated": len(ids) - len(set(ids)), "repeated": "—", "check_clean": not check_store(store)[0],
            "told": _told(again)}


def train_scenario(store: Location, run_dir: Location, *, steps: int = 60, val_every: int = 10,
                   mlflow_uri: str = "") -> dict[str, Any]:
    """Kill ``fsar train`` after its first validation, rerun it, and read where it resumed. Store and run folder:
    folders or URIs (a run folder on object storage needs a tracking URI, ``mlflow_uri``)."""
    cmd = _fsar(["train", "--store", str(store), "--method", "protonet", "--out", str(run_dir), "--steps", str(steps),
                 f"val_every={val_every}", "val_episodes=40", "episodes_per_step=2", "knobs.proj_dim=8", "way=3",
                 "query=2", *([f"mlflow_uri={mlflow_uri}"] if mlflow_uri else [])])
    metrics = storage.join(run_dir, "metrics.jsonl")

    def logged() -> list[dict[str, Any]]:
        return [json.loads(line) for line in storage.read_text(metrics).splitlines()] if storage.is_file(metrics) else []

    killed = kill_when(cmd, lambda: bool(logged()))
    before = [m["step"] for m in logged()]
    again = rerun(cmd)
    lines = logged()
    resumed = [m for m in lines if "resumed_from_step" in m]
    start = int(resumed[0]["resumed_from_step"]) if resumed else 0
    return {"job": f"fsar train ({_where(run_dir)})", "injected": "SIGKILL of the driver after its first validation",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": 0, "duplicated": 0,
            # Steps logged before the kill that the rerun trained again (the state is saved before its metrics
            # line, so the resume point may also be past the last line logged: none repeated then).
            "repeated": max(0, max(before) - start) if before else None, "resumed_from": start,
            "finished": bool(lines) and lines[-1]["step"] == steps, "told": _told(again)}


def sweep_scenario(store: Location, sweep: Location, space: Path, *, mlflow_uri: str = "") -> dict[str, Any]:
    """Kill ``fsar tune`` once its first trial has finished, rerun it: finished trials must be kept as they were.
    ``sweep``: a folder or a URI (then Tune keeps its experiment state there too)."""
    import yaml

    space.write_text(yaml.safe_dump({
        "method": "protonet", "trials": 3, "search_seed": 0,
        "fixed": {"steps": 30, "val_every": 10, "val_episodes": 40, "episodes_per_step": 2, "warmup_steps": 1,
                  "proj_dim": 8, "way": 3, "query": 2},
        "space": {"lr": {"loguniform": [1.0e-3, 3.0e-2]}}}))
    cmd = _fsar(["tune", "--store", str(store), "--space", str(space), "--out", str(sweep), "--cpus-per-trial", "1",
                 "max_concurrent=1", "verbose=0", *([f"mlflow_uri={mlflow_uri}"] if mlflow_uri else [])])

    def trial_files(name: str) -> list[Location]:
        return storage.list_files(storage.join(sweep, "trials"), name, recursive=True)

    def metrics_of(status: Location) -> str:
        return storage.read_text(storage.join(storage.parent(status), "metrics.jsonl"))

    killed = kill_when(cmd, lambda: bool(trial_files("status.json")))
    finished = {str(f): metrics_of(f) for f in trial_files("status.json")}
    again = rerun(cmd)
    kept = all(metrics_of(f) == text for f, text in finished.items())
    statuses = [json.loads(storage.read_text(f))["status"] for f in trial_files("status.json")]
    repeated = 0
    for metrics in trial_files("metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in storage.read_text(metrics).splitlines()]
        repeated += len(steps) - len(set(steps))
    return {"job": f"fsar tune ({_where(sweep)})", "injected": "SIGKILL of the driver after its first finished trial",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": 0, "duplicated": 0,
            "repeated": repeated, "kept": kept and bool(finished), "trials": len(statuses), "statuses": statuses,
            "all_done": len(statuses) == 3 and all(s in ("finished", "stopped") for s in statuses),
            "told": _told(again)}


def predict_scenario(manifest: Path, run_dir: Path, out: Path) -> dict[str, Any]:
    """Kill ``fsar predict`` after its first part file, rerun it: every query predicted exactly once. Supports: two
    clips of each test class (copied beside ``out``); queries: every video of the manifest, four per shard."""
    import shutil

    from fsar.data.manifest import read_manifest
    from fsar.prediction.output import read_predictions

    support = out.parent / f"{out.name}-support"
    taken: dict[str, int] = {}
    for r in read_manifest(manifest).to_pylist():
        if r["split"] == "test" and taken.get(r["class_name"], 0) < 2:
            (support / r["class_name"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(r["path"], support / r["class_name"] / Path(r["path"]).name)
            taken[r["class_name"]] = taken.get(r["class_name"], 0) + 1
    cmd = _fsar(["predict", "--run", str(run_dir), "--support", str(support), "--query", str(manifest), "--out",
                 str(out), "engine=local", "shard_size=4", "threshold=-1000", "mlflow=false"])
    killed = kill_when(cmd, lambda: any((out / "predictions").glob("part-*.parquet")))
    again = rerun(cmd)
    ids = read_predictions(out)["video_id"].to_pylist()
    wanted = set(read_manifest(manifest)["video_id"].to_pylist())
    return {"job": "fsar predict (local disk)", "injected": "SIGKILL of the driver after its first part",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": len(wanted - set(ids)),
            "duplicated": len(ids) - len(set(ids)), "repeated": "—", "told": _told(again)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| job | injected | rerun | videos lost | videos duplicated | steps repeated after resume | told |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['job']} | {r['injected']} | {'completed' if r['rerun_ok'] else 'FAILED'} | {r['lost']} | "
                     f"{r['duplicated']} | {r['repeated']} | {r['told'][:90]} |")
    return "\n".join(lines)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--videos-per-class", dest="videos_per_class", type=int, default=4)
    p.add_argument("--s3-port", dest="s3_port", type=int, default=0,
                   help="also run the embed and training rows on a local moto S3 server on this port (0: a free one; "
                        "-1: disk rows only)")


def _run(args: Any) -> int:
    from fsar.data.synthetic import SynthConfig, generate
    from pipelines.bench.local_s3 import free_port

    out = args.out.resolve()
    manifest = generate(SynthConfig(out=out / "data", classes=12, class_split=(6, 3, 3),
                                    videos_per_class=args.videos_per_class, frames=16, size=64), progress=False)
    rows = [embed_scenario(manifest, out / "store")]
    rows.append(train_scenario(out / "store", out / "run"))
    rows.append(sweep_scenario(out / "store", out / "sweep", out / "space.yaml"))
    rows.append(predict_scenario(manifest, out / "run", out / "predict"))
    if args.s3_port >= 0:
        rows += _s3_rows(manifest, port=args.s3_port or free_port())
    print(table(rows))
    (out / "faults.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _s3_rows(manifest: Path, *, port: int) -> list[dict[str, Any]]:
    """The embed, training and sweep rows again with their folders in a bucket of a local S3 server (the commands
    find it through ``AWS_ENDPOINT_URL``, which their processes inherit)."""
    from pipelines.bench.local_s3 import client_settings, make_bucket, moto_server

    saved = {k: os.environ.get(k) for k in client_settings(port)}
    os.environ.update(client_settings(port))
    try:
        with moto_server(port):
            bucket = make_bucket("fsar-faults")
            tracking = f"sqlite:///{manifest.parent.parent / 'mlflow-s3.db'}"
            return [embed_scenario(manifest, f"{bucket}/store"),
                    train_scenario(f"{bucket}/store", f"{bucket}/run", mlflow_uri=tracking),
                    sweep_scenario(f"{bucket}/store", f"{bucket}/sweep", manifest.parent.parent / "space-s3.yaml",
                                   mlflow_uri=tracking)]
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


COMMAND = Command("bench_faults", "hard kills of a job's driver, then the same command again", _arguments, _run,
                  takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.faults")


if __name__ == "__main__":
    raise SystemExit(main())
