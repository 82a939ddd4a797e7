"""Shared test set-up: offline, quiet Ray, and small real mp4 files written with PyAV."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every S3 client of the session (pyarrow, boto3, Ray's storage, in this process and in the Ray workers it
# starts) talks to the moto server of the `s3` fixture, through the standard AWS variables only. Set before
# anything starts Ray, so that the workers inherit them; never real credentials.
S3_PORT = _free_port()
os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_ACCESS_KEY_ID": "fsar-test",
                   "AWS_SECRET_ACCESS_KEY": "fsar-test", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_EC2_METADATA_DISABLED": "true"})

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def touch(path: Path) -> Path:
    """An empty file at ``path`` (parents created): enough for manifest code, which never opens videos."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def class_tree(root: Path, classes: int, per_class: int = 3) -> None:
    """``root/classNN/clipV.mp4`` empty files: a class-per-folder video tree."""
    for c in range(classes):
        for v in range(per_class):
            touch(root / f"class{c:02d}" / f"clip{v}.mp4")


def frame_value(i: int) -> int:
    """Grey level of frame ``i`` in ``counter_video``: far apart, so codec noise cannot confuse two frames."""
    return 20 + (i * 23) % 216


def write_counter_video(path: Path, num_frames: int, *, size: tuple[int, int] = (48, 64), fps: int = 10) -> Path:
    """An H.264 mp4 whose frame i is uniformly grey at ``frame_value(i)``: decoded pixels reveal the index."""
    import av

    h, w = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10", "bf": "0", "preset": "ultrafast"}
        for i in range(num_frames):
            img = np.full((h, w, 3), frame_value(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_pattern_video(path: Path, num_frames: int, *, size: tuple[int, int], fps: int = 10) -> Path:
    """An H.264 mp4 of a textured pattern (diagonal stripes per channel, shifting per frame): resizing it
    changes pixels, unlike the uniform grey of ``write_counter_video``. ``size`` = (height, width), even."""
    import av

    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10", "bf": "0", "preset": "ultrafast"}
        for i in range(num_frames):
            img = np.stack([(x * 9 + y * 5 + 17 * i + 60 * c) % 256 for c in range(3)], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_index(frame: np.ndarray, num_frames: int) -> int:
    """Which counter-video frame a decoded frame is (nearest grey level)."""
    values = np.array([frame_value(i) for i in range(num_frames)])
    return int(np.abs(values - frame.mean()).argmin())


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


MIXED_SIZES = ((48, 64), (80, 96), (64, 80), (48, 64), (96, 80), (40, 40))  # (H, W): up, down, equal to S=64


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


def embed_config(manifest: Path, out: Path, **kw: Any):
    """A small embed config over the ``videos`` fixture: 4 frames, 2×2 patches, shards of 3 videos."""
    from fsar.backbones import TINY_MODEL
    from fsar.embedding import EmbedConfig

    settings = {"backbone": TINY_MODEL, "pretrained": "none", "frames": 4, "patch_grid": 2, "batch_size": 2,
                "shard_size": 3, "engine": "local", "mlflow": False} | kw
    return EmbedConfig(manifest=manifest, out=out, **settings)


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
    import subprocess
    import sys
    import time
    import urllib.request

    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"], timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("the moto S3 server did not start") from None
            time.sleep(0.2)
    yield os.environ["AWS_ENDPOINT_URL"]
    os.kill(server.pid, 15)
    server.wait(timeout=30)


@pytest.fixture
def s3(s3_server, request) -> str:
    """A fresh bucket on the test server, as ``s3://<bucket>``."""
    import re

    import boto3

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{_free_port()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors gain nothing from a second one, and on a busy 2-core
    machine the threads' spin-waiting makes small ops 5-100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
