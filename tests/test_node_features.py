"""One copy of a split per node, on a real 2-node Ray cluster: two raylets on this machine (``ray start
--head`` and ``ray start --address``, one CPU each, so Ray Train must put one worker on each node). Every
node's actor reads the train split once, only rank 0's node reads the validation split, and training runs
as usual. The cluster is started here and stopped by killing its own processes (those naming its
temporary folder), as in ``test_cluster``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import RAY, RAY_ENV, VENV_BIN, free_port, make_signal_store, stop_cluster

REPO = Path(__file__).resolve().parents[1]


def start_head(temp_dir: Path, env: dict[str, str]) -> str:
    """A head on 127.0.0.1 with 1 CPU, every port chosen free; returns the GCS address."""
    gcs = free_port()
    head = [RAY, "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
            "--include-dashboard=false", "--num-cpus=1", "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
    started = subprocess.run(head, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    return f"127.0.0.1:{gcs}"


def add_node(address: str, env: dict[str, str]) -> None:
    """One more node (a second raylet on 127.0.0.1, 1 CPU) joining the cluster at ``address``."""
    second = [RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
              "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
              f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
              f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    started = subprocess.run(second, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr


def start_two_nodes(temp_dir: Path, env: dict[str, str]) -> str:
    """Head and one more node on 127.0.0.1, 1 CPU each; returns the GCS address."""
    address = start_head(temp_dir, env)
    add_node(address, env)
    return address


DRIVER = """
import json, sys
from pathlib import Path
import ray
from fsar.data.sections import StoreData
from fsar.training.config import TrainConfig
from pipelines.train import run

address, store, out = sys.argv[1:]
ray.init(address=address)
at_start = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
config = TrainConfig(data=StoreData(store=Path(store)), out=Path(out), method="protonet", knobs={"proj_dim": 16},
                     steps=20, episodes_per_step=4, lr=3e-2, val_every=10, val_episodes=100, warmup_steps=2,
                     workers=2)
result = run(config, address=address)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
Path(out, "nodes.json").write_text(json.dumps({"nodes": nodes, "at_start": at_start, "best": result.best_val_accuracy}))
"""


def test_each_node_reads_each_split_once(tmp_path):
    store = make_signal_store(tmp_path / "store")
    out = tmp_path / "run"
    temp_dir = Path(tempfile.mkdtemp(prefix="fsar-2n-", dir="/tmp"))  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_ENV
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    try:
        address = start_two_nodes(temp_dir, env)
        driver = subprocess.run([sys.executable, "-c", DRIVER, address, str(store), str(out)], cwd=REPO,
                                env=env | {"RAY_ADDRESS": address}, capture_output=True, text=True, timeout=600)
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    nodes = json.loads((out / "nodes.json").read_text())
    loads = json.loads((out / "feature_loads.json").read_text())
    assert len(nodes["nodes"]) == 2 and sorted(loads) == nodes["nodes"]  # one actor per node
    assert sorted(tuple(sorted(v.items())) for v in loads.values()) == [
        (("train/pooled", 1),), (("train/pooled", 1), ("val/pooled", 1))]  # rank 0's node also validates
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20] and nodes["best"] == max(m["val_accuracy"] for m in metrics)


@pytest.mark.slow
def test_a_node_that_joins_after_training_started_gets_its_actor_and_trains(tmp_path):
    """One node with 1 CPU; a 2-worker run starts and waits; a second node joins; the worker placed there asks
    for its node's copy, which the job's registry makes then, and training finishes on both nodes."""
    store = make_signal_store(tmp_path / "store")
    out = tmp_path / "run"
    temp_dir = Path(tempfile.mkdtemp(prefix="fsar-jn-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_ENV
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    try:
        address = start_head(temp_dir, env)
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(store), str(out)], cwd=REPO,
                                  env=env | {"RAY_ADDRESS": address}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        deadline = time.monotonic() + 180
        while not (out / "train_config.yaml").is_file() and time.monotonic() < deadline:
            time.sleep(1)  # the job has started (and cannot place its second worker on one CPU)
        time.sleep(5)
        add_node(address, env)
        output, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, output[-4000:]
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    nodes = json.loads((out / "nodes.json").read_text())
    loads = json.loads((out / "feature_loads.json").read_text())
    assert len(nodes["at_start"]) == 1 and len(nodes["nodes"]) == 2
    assert sorted(loads) == nodes["nodes"]  # the node that joined got its actor, and read the train split once
    assert all(v.get("train/pooled") == 1 for v in loads.values())


def test_split_copies_of_dead_actors_are_removed_and_live_ones_kept(tmp_path):
    from pipelines.node_features import remove_orphans, shared_path

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)  # that process has exited: its pid runs nothing (or something not ours)
    live = tmp_path / Path(shared_path("abc123", 0, 0)).name  # this process's copy
    dead = tmp_path / f"fsar-features-abc123-{dead_pid}-1.npy"
    other = tmp_path / "fsar-features-notes.txt"
    for path in (live, dead, other):
        path.write_bytes(b"x")
    if os.path.exists(f"/proc/{dead_pid}"):  # the pid was taken again at once: nothing to learn here
        return
    assert remove_orphans((str(tmp_path),)) == [str(dead)]
    assert live.exists() and other.exists() and not dead.exists()
