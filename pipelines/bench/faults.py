"""Hard kills of a job's driver, then the same command again: what was lost, duplicated or repeated.

``python -m pipelines.bench.faults --out DIR [--videos-per-class 4]``

Each scenario starts an fsar command as its own process, SIGKILLs it once it has done part of its work, and
reruns the same command to the end:

- ``embed``: ``fsar embed`` (local engine) killed after its first shard file; afterwards every manifest video
  must be in the store exactly once (or in its failures), and ``fsar store check`` clean;
- ``train``: ``fsar train`` (in-process) killed after its first validation; the rerun must resume from the last
  checkpoint (its first metrics line says ``resumed_from_step``), repeat no more steps than one validation
  interval, and finish;
- ``sweep``: ``fsar tune`` killed once a trial has finished; the rerun must keep that trial as it was and finish
  the others (Tune's own experiment state, restored).

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


def embed_scenario(manifest: Path, store: Path) -> dict[str, Any]:
    """Kill ``fsar embed`` after its first shard, rerun it, and count what the store holds."""
    import pyarrow.parquet as pq

    from fsar.data.feature_store import FeatureStore
    from fsar.data.store_check import check_store

    cmd = _fsar(["embed", "--manifest", str(manifest), "--out", str(store), "--backbone", "fsar-tiny",
                 "--pretrained", "none", "--frames", "4", "engine=local", "shard_size=8", "chunk_size=4",
                 "mlflow=false"])
    killed = kill_when(cmd, lambda: any(store.glob("shard-*.parquet")))
    again = rerun(cmd)
    ids = FeatureStore(store).table["video_id"].to_pylist()
    failed = pq.read_table(store / "failures.parquet").num_rows if (store / "failures.parquet").is_file() else 0
    wanted = pq.read_table(manifest).num_rows
    return {"job": "fsar embed (local disk)", "injected": "SIGKILL of the driver after its first shard",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": wanted - len(set(ids)) - failed,
            "duplicated": len(ids) - len(set(ids)), "repeated": "—", "check_clean": not check_store(store)[0],
            "told": again.stdout.strip().splitlines()[-1] if again.stdout.strip() else again.stderr[-300:]}


def train_scenario(store: Path, run_dir: Path, *, steps: int = 60, val_every: int = 10) -> dict[str, Any]:
    """Kill ``fsar train`` after its first validation, rerun it, and read where it resumed."""
    cmd = _fsar(["train", "--store", str(store), "--method", "protonet", "--out", str(run_dir), "--steps", str(steps),
                 f"val_every={val_every}", "val_episodes=40", "episodes_per_step=2", "knobs.proj_dim=8", "way=3", "query=2"])
    metrics = run_dir / "metrics.jsonl"

    def validated() -> bool:
        return metrics.is_file() and bool(metrics.read_text().strip())

    killed = kill_when(cmd, validated)
    before = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    again = rerun(cmd)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumed = [m for m in lines if "resumed_from_step" in m]
    start = int(resumed[0]["resumed_from_step"]) if resumed else 0
    return {"job": "fsar train (local disk)", "injected": "SIGKILL of the driver after its first validation",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": 0, "duplicated": 0,
            # Steps logged before the kill that the rerun trained again (the state is saved before its metrics
            # line, so the resume point may also be past the last line logged: none repeated then).
            "repeated": max(0, max(before) - start) if before else None, "resumed_from": start,
            "finished": bool(lines) and lines[-1]["step"] == steps,
            "told": again.stdout.strip().splitlines()[-1] if again.stdout.strip() else again.stderr[-300:]}


def sweep_scenario(store: Path, sweep: Path, space: Path) -> dict[str, Any]:
    """Kill ``fsar tune`` once its first trial has finished, rerun it: finished trials must be kept as they were."""
    import yaml

    space.write_text(yaml.safe_dump({
        "method": "protonet", "trials": 3, "search_seed": 0,
        "fixed": {"steps": 30, "val_every": 10, "val_episodes": 40, "episodes_per_step": 2, "warmup_steps": 1,
                  "proj_dim": 8, "way": 3, "query": 2},
        "space": {"lr": {"loguniform": [1.0e-3, 3.0e-2]}}}))
    cmd = _fsar(["tune", "--store", str(store), "--space", str(space), "--out", str(sweep), "--cpus-per-trial", "1",
                 "max_concurrent=1", "verbose=0"])

    def one_finished() -> bool:
        return any(f.is_file() for f in sweep.glob("trials/*/status.json"))

    killed = kill_when(cmd, one_finished)
    finished = {f.parent.name: (f.parent / "metrics.jsonl").read_text() for f in sweep.glob("trials/*/status.json")}
    again = rerun(cmd)
    kept = all((sweep / "trials" / t / "metrics.jsonl").read_text() == text for t, text in finished.items())
    statuses = [json.loads(f.read_text())["status"] for f in sweep.glob("trials/*/status.json")]
    repeated = 0
    for metrics in sweep.glob("trials/*/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        repeated += len(steps) - len(set(steps))
    return {"job": "fsar tune (local disk)", "injected": "SIGKILL of the driver after its first finished trial",
            "killed": killed, "rerun_ok": again.returncode == 0, "lost": 0, "duplicated": 0,
            "repeated": repeated, "kept": kept and bool(finished), "trials": len(statuses),
            "all_done": len(statuses) == 3 and all(s in ("finished", "stopped") for s in statuses),
            "told": again.stdout.strip().splitlines()[-1] if again.stdout.strip() else again.stderr[-300:]}


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


def _run(args: Any) -> int:
    from fsar.data.synthetic import SynthConfig, generate

    out = args.out.resolve()
    manifest = generate(SynthConfig(out=out / "data", classes=12, class_split=(6, 3, 3),
                                    videos_per_class=args.videos_per_class, frames=16, size=64), progress=False)
    rows = [embed_scenario(manifest, out / "store")]
    rows.append(train_scenario(out / "store", out / "run"))
    rows.append(sweep_scenario(out / "store", out / "sweep", out / "space.yaml"))
    print(table(rows))
    (out / "faults.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


COMMAND = Command("bench_faults", "hard kills of a job's driver, then the same command again", _arguments, _run,
                  takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.faults")


if __name__ == "__main__":
    raise SystemExit(main())
