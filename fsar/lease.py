"""One writer at a time per store or run folder: a lease file with an owner and a heartbeat.

``with Lease(folder, job="fsar embed"):`` writes ``<folder>/.fsar-lease.json`` (host, pid, job, since, heartbeat)
and refreshes its heartbeat from a thread every ``ttl / 3`` seconds; leaving removes it. A second writer finds a
live lease and is refused with a message naming the holder. A lease is taken over when its holder is dead: its
heartbeat is older than ``ttl``, or it was taken on this host by a process that no longer runs.

Works on a local path and on object storage. Locally the first lease is created exclusively (``O_EXCL``);
an object store has no such call, so there a writer reads its lease back after writing it and gives way when
another writer's landed last.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fsar import storage
from fsar.config import ConfigError

LEASE_FILE = ".fsar-lease.json"
DEFAULT_TTL_S = 60.0


class LeaseHeld(ConfigError):
    """The folder is being written by a live job."""


def process_runs(pid: object) -> bool | None:
    """Whether process ``pid`` of this host runs (None where the host keeps no ``/proc`` to tell)."""
    return os.path.exists(f"/proc/{pid}") if Path("/proc").is_dir() else None


def _alive_here(record: dict[str, Any]) -> bool | None:
    """Whether the holder's process runs, when it was taken on this host (None: another host, unknowable here)."""
    return process_runs(record.get("pid")) if record.get("host") == socket.gethostname() else None


class Lease:
    """The lease of ``folder`` for one job (a context manager); see the module docstring."""

    def __init__(self, folder: str | Path, *, job: str, ttl: float = DEFAULT_TTL_S) -> None:
        self.folder, self.job, self.ttl = storage.absolute(folder), job, ttl
        self.path = storage.join(self.folder, LEASE_FILE)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"token": self.token, "job": self.job, "host": socket.gethostname(), "pid": os.getpid(),
                "since": self._since, "heartbeat": time.time()}

    def holder(self) -> dict[str, Any] | None:
        """The lease on the folder now, if any (an unreadable one counts as none: a writer died mid-write)."""
        try:
            return json.loads(storage.read_text(self.path)) if storage.is_file(self.path) else None
        except (ValueError, storage.StorageError):
            return None

    def _live(self, record: dict[str, Any]) -> bool:
        alive = _alive_here(record)
        if alive is not None:
            return alive
        return time.time() - float(record.get("heartbeat", 0)) < self.ttl

    def _refuse(self, record: dict[str, Any]) -> LeaseHeld:
        age = time.time() - float(record.get("since", time.time()))
        return LeaseHeld(f"{self.folder} is being written by {record.get('job', 'another job')} (pid {record.get('pid')} "
                         f"on {record.get('host')}, for {age:.0f} s): wait for it to finish or stop it, or write "
                         "elsewhere; a lease whose holder died is taken over "
                         f"(after {self.ttl:.0f} s without a heartbeat from another host)")

    def acquire(self) -> Lease:
        self._since = time.time()
        current = self.holder()
        if current is not None and current.get("token") != self.token and self._live(current):
            raise self._refuse(current)
        storage.make_dirs(self.folder)
        mine = json.dumps(self._record())
        if isinstance(self.path, Path) and current is None:
            try:  # exclusive create: of two writers starting together, one gets the lease
                with open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w") as f:
                    f.write(mine)
            except FileExistsError:
                raise self._refuse(self.holder() or {}) from None
        else:
            storage.write_text(self.path, mine)
            landed = self.holder()
            if landed is None or landed.get("token") != self.token:  # another writer's landed last
                raise self._refuse(landed or {})
        self._thread = threading.Thread(target=self._beat, name="fsar-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            # A failed beat is retried at the next; the lease lapses only after ttl without one.
            with contextlib.suppress(OSError, storage.StorageError):
                storage.write_text(self.path, json.dumps(self._record()))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.holder()
        if current is not None and current.get("token") == self.token:
            storage.delete(self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
