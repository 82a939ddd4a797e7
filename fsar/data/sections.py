"""The ``data:`` section of a job's config: where its videos are, as a feature store (cached-feature methods)
or a manifest of videos (end-to-end methods), each with its own fields.

Training, evaluation, sweeps and the sources all read these; they live here, below all of them, so none of
those packages imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fsar.config import ConfigError
from fsar.storage import Location


@dataclass
class StoreData:
    """``data:`` a feature store (from ``fsar embed``): cached-feature methods (input ``frames``/``patches``)."""

    store: Location  # feature store folder, or its URI (s3://, gs://, ...)
    view: Literal["auto", "pooled", "grid", "patches"] = "auto"  # features read: pooled, flattened grid, or patch grid (auto: what the method takes)
    feature_placement: Literal["auto", "device", "host"] = "auto"  # whole splits on the device, or fp16 on the host with each step's episodes copied over; auto = device when they fit in a quarter of its free memory
    backbone: str | None = None  # if set, refuse a store built with another backbone


@dataclass
class ManifestData:
    """``data:`` a manifest of videos: end-to-end methods (input ``pixels``) decode them while they train."""

    manifest: Location  # manifest.parquet (from `fsar manifest` or `fsar synth`), a local path or a URI
    frames: int = 8  # frames decoded per video (TSN segments; random offsets in training)
    decode: Literal["auto", "ray", "threads"] = "auto"  # who decodes: Ray Data tasks (auto with Ray workers) or a thread pool in the worker
    decode_threads: int = 0  # thread-pool decoding and every validation decode: parallel decodes (0 = number of CPUs)
    encode_chunk: int = 32  # videos per no-grad encoder forward at validation and evaluation

    def __post_init__(self) -> None:
        for name in ("frames", "encode_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_threads < 0:
            raise ConfigError(f"data.decode_threads must be >= 0 (0 = number of CPUs), got {self.decode_threads}")
