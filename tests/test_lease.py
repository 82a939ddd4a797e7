"""fsar.lease: one writer at a time per folder, on a path and on object storage; a dead holder's lease is taken."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from fsar import storage
from fsar.lease import LEASE_FILE, Lease, LeaseHeld

HOLD = """
import sys, time
from fsar.lease import Lease
with Lease(sys.argv[1], job="fsar embed"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    return tmp_path / "store" if request.param == "local" else request.getfixturevalue("s3") + "/store"


def test_a_live_holder_refuses_a_second_writer_naming_itself_and_leaving_frees_the_folder(folder):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"is being written by fsar embed \\(pid {holder.pid} on "):
            Lease(folder, job="fsar embed").acquire()
    finally:
        holder.kill()
        holder.wait()
    # Killed: its lease stays behind, but its process is gone on this host: the next writer takes it over.
    assert storage.is_file(storage.join(folder, LEASE_FILE))
    with Lease(folder, job="fsar train"):
        record = json.loads(storage.read_text(storage.join(folder, LEASE_FILE)))
        assert record["pid"] == os.getpid() and record["job"] == "fsar train"
    assert not storage.is_file(storage.join(folder, LEASE_FILE))  # released on leaving


def test_a_lease_from_another_host_lapses_after_its_ttl_and_beats_keep_a_lease_alive(tmp_path):
    path = tmp_path / "run" / LEASE_FILE
    path.parent.mkdir()
    record = {"token": "x", "job": "fsar train", "host": socket.gethostname() + "-elsewhere", "pid": 1,
              "since": time.time(), "heartbeat": time.time()}
    path.write_text(json.dumps(record))
    with pytest.raises(LeaseHeld, match="after 60 s without a heartbeat"):
        Lease(tmp_path / "run", job="fsar train").acquire()
    path.write_text(json.dumps(record | {"heartbeat": time.time() - 61}))
    with Lease(tmp_path / "run", job="fsar train", ttl=0.3) as lease:
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(path.read_text())["heartbeat"] > first and lease.holder()["token"] == lease.token


def test_two_embeds_into_one_store_one_is_refused_before_it_writes(tmp_path, videos):
    from helpers import embed_config

    from pipelines.embed import run as embed

    cfg = embed_config(videos[0], tmp_path / "store")
    with Lease(tmp_path / "store", job="fsar embed"), pytest.raises(LeaseHeld, match="being written by fsar embed"):
        embed(cfg, progress=False)
    assert not list((tmp_path / "store").glob("shard-*"))
    assert embed(cfg, progress=False).videos > 0  # once the holder is done, it goes through
