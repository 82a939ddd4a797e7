"""Shared test set-up: offline, quiet Ray, an S3 test server, and the fixtures several test modules use
(small real mp4 files written with PyAV, a synthetic video dataset, one local Ray). Plain helpers are in
``helpers.py``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from helpers import MIXED_SIZES, free_port, write_counter_video, write_pattern_video  # noqa: E402

from pipelines.bench.local_s3 import client_settings  # noqa: E402

# Every S3 client of the session (pyarrow, boto3, Ray's storage, in this process and in the Ray workers it
# starts) talks to the moto server of the `s3` fixture, through the standard AWS variables only. Set before
# anything starts Ray, so that the workers inherit them; never real credentials.
S3_PORT = free_port()
os.environ.update(client_settings(S3_PORT))


@pytest.fixture
def counter_video(tmp_path: Path):
    def make(num_frames: int, name: str = "counter.mp4", **kw) -> Path:
        return write_counter_video(tmp_path / name, num_frames, **kw)

    return make


@pytest.fixture
def videos(tmp_path: Path) -> tuple[Path, Path]:
    """Six good counter videos in two classes plus three broken files."""
    root = tmp_path / "videos"
    root.mkdir()
    records = []
    for i in range(6):
        path = write_counter_video(root / f"good{i}.mp4", 12 + 3 * i)
        records.append({"video_id": f"good{i}", "path": str(path), "label": i % 2, "class_name": f"c{i % 2}", "split": "test"})
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n" * 20)
    (root / "cut.mp4").write_bytes((root / "good5.mp4").read_bytes()[:400])
    for name in ("empty", "text", "cut"):
        records.append({"video_id": name, "path": str(root / f"{name}.mp4"), "label": 0, "class_name": "c0", "split": "test"})
    from fsar.data.manifest import write_manifest

    manifest = write_manifest(records, tmp_path / "manifest.parquet")
    return manifest, tmp_path


@pytest.fixture
def mixed_videos(tmp_path: Path) -> tuple[Path, Path]:
    """Textured videos of several native sizes (two share 48×64; fsar-tiny's input side is 64, so some are
    enlarged, some reduced, one only cropped) plus one broken file, in one manifest."""
    from fsar.data.manifest import write_manifest

    root = tmp_path / "mixed"
    root.mkdir()
    records = []
    for i, size in enumerate(MIXED_SIZES):
        path = write_pattern_video(root / f"v{i}.mp4", 10 + i, size=size)
        records.append({"video_id": f"v{i}", "path": str(path), "label": i % 2, "class_name": f"c{i % 2}", "split": "test"})
    (root / "text.mp4").write_text("not a video\n" * 20)
    records.insert(2, {"video_id": "text", "path": str(root / "text.mp4"), "label": 0, "class_name": "c0", "split": "test"})
    return write_manifest(records, tmp_path / "mixed.parquet"), tmp_path


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """10 motion classes (4 train / 3 val / 3 test) × 4 videos, 16 frames, 64 px (`fsar synth`); returns the
    manifest. Module-scoped: made once per test module that uses it."""
    from fsar.data.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth")
    return generate(SynthConfig(out=out, classes=10, videos_per_class=4, frames=16, size=64, class_split=(4, 3, 3),
                                workers=1))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard, 127.0.0.1) shared by the tests that need Ray."""
    from pipelines.ray_runtime import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (the port of ``AWS_ENDPOINT_URL``), stopped by its process id."""
    from pipelines.bench.local_s3 import moto_server

    with moto_server(S3_PORT):
        yield os.environ["AWS_ENDPOINT_URL"]


@pytest.fixture
def s3(s3_server, request) -> str:
    """A fresh bucket on the test server, as ``s3://<bucket>``."""
    import re

    from pipelines.bench.local_s3 import make_bucket

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{free_port()}"
    return make_bucket(bucket)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors gain nothing from a second one, and on a busy 2-core
    machine the threads' spin-waiting makes small ops 5-100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
