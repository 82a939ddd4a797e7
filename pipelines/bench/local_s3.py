"""A moto S3 server on 127.0.0.1 for benchmarks and tests: started as a process, stopped by its process id.

Its clients find it through the standard AWS variables only (``AWS_ENDPOINT_URL`` and test credentials), which
the caller sets before anything (Ray included) starts, so that child processes inherit them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test or a benchmark starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_settings(port: int) -> dict[str, str]:
    """The AWS variables that point every S3 client at the local server (never real credentials)."""
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "fsar-test",
            "AWS_SECRET_ACCESS_KEY": "fsar-test", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


@contextmanager
def moto_server(port: int, *, start_timeout_s: float = 30) -> Iterator[subprocess.Popen]:
    """Run ``moto_server`` (from ``moto[server]``, beside this Python) on 127.0.0.1:``port`` for the block."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        raise RuntimeError(f"{binary} not found: install the dev extra (`pip install -e '.[dev]'`, moto[server])")
    server = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + start_timeout_s
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the moto S3 server did not start on 127.0.0.1:{port}") from None
                time.sleep(0.2)
        yield server
    finally:
        if server.poll() is None:
            os.kill(server.pid, 15)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def make_bucket(name: str) -> str:
    """Create ``name`` on the server the environment names; returns ``s3://name``."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
