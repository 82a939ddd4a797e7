"""``fsar train``'s configuration: what every run shares, and a ``data:`` section that is either a feature
store (cached-feature methods) or a manifest of videos (end-to-end methods): ``fsar.data.sections``.

Where a worker trains (its device) and how much of each step it runs (its share of the global batch) are
derived here too, so the Ray job, Tune trials and the in-process loop agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from fsar.config import ConfigError
from fsar.data.sections import ManifestData, StoreData
from fsar.devices import resolve_device
from fsar.storage import Location


@dataclass
class TrainConfig:
    """``fsar train``: one method trained episodically on the train split of its ``data``."""

    # Keys that moved into the data section: refused with their new name.
    # How a user gives each required key on the command line (named when one is missing).
    MISSING_HINTS: ClassVar[dict[str, str]] = {
        "data": "give --store STORE (cached features) or --manifest MANIFEST (videos, end to end)",
        "method": "give --method NAME (fsar methods lists them)", "out": "give --out DIR",
    }
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "store": "data.store", "manifest": "data.manifest", "view": "data.view",
        "feature_placement": "data.feature_placement", "backbone": "data.backbone", "frames": "data.frames",
        "decode_threads": "data.decode_threads", "encode_chunk": "data.encode_chunk",
    }

    method: str  # registered method name (`fsar methods`)
    out: Location  # run folder or URI (Ray Train's storage_path too): best.pt, train_config.yaml, metrics, mlflow.db
    data: StoreData | ManifestData  # where the episodes come from: {store: ...} or {manifest: ...}
    knobs: dict[str, Any] = field(default_factory=dict)  # the method's config fields, e.g. {proj_dim: 256}
    way: int = 5  # classes per training episode
    shot: int = 1  # support videos per class
    query: int = 4  # query videos per class in training episodes
    steps: int = 500  # optimiser steps
    episodes_per_step: int = 8  # episodes per optimiser step over all workers together, split evenly across them
    episodes_per_forward: int = 0  # episodes per forward/backward on a worker, gradients accumulated (0 = its whole share)
    lr: float = 1e-3  # learning rate
    optimizer: Literal["adamw", "sgd"] = "adamw"  # optimiser
    weight_decay: float = 1e-4  # decoupled weight decay (AdamW) or L2 (SGD)
    warmup_steps: int = 20  # linear warm-up, then cosine decay to 0
    grad_clip: float = 5.0  # max gradient norm (0 = off)
    val_every: int = 50  # validate every this many steps (and at the last step)
    val_episodes: int = 500  # fixed validation episodes (seed `seed + 1`), 1 query per class
    val_split: str = "val"  # split validated on; never the test split
    drop_small_classes: bool = False  # leave out classes with fewer than shot + query videos (default: refuse them, named)
    max_nonfinite_steps: int = 20  # stop after this many steps in a row with a NaN/Inf loss or gradient (0: never)
    seed: int = 0  # training episodes and initialisation seed
    workers: int = 0  # Ray Train workers (0 = run the loop in this process)
    use_gpu: bool = False  # one GPU per Ray Train worker
    device: str = "auto"  # auto (the worker's GPU with use_gpu, CUDA in-process when present, else CPU), cpu, cuda, cuda:N
    threads_per_worker: int = 1  # torch CPU threads per worker
    mlflow_uri: str | None = None  # MLflow tracking URI (default: sqlite file in the run folder)
    log_checkpoint: bool = False  # also copy best.pt into MLflow's artifact store (its path is always a run tag)
    init_from: Location | None = None  # warm start: a trained run (folder or .pt) of the same method, e.g. a cached run before an end-to-end one
    experiment: str = "fsar"  # MLflow experiment name
    mlflow_parent_run_id: str | None = None  # set by a sweep: the run is logged as this run's child
    recipe: str | None = None  # the recipe it started from, NAME@VERSION (set by --recipe; fsar.recipes)

    def __post_init__(self) -> None:
        if self.val_split == "test":
            raise ConfigError("val_split=test: model selection on the test split is not allowed; validate on 'val'")
        for name in ("steps", "episodes_per_step", "val_every", "val_episodes", "way", "shot", "query"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"max_nonfinite_steps must be >= 0 (0 = never stop), got {self.max_nonfinite_steps}")
        if self.episodes_per_forward < 0:
            raise ConfigError(f"episodes_per_forward must be >= 0 (0 = a worker's whole share), got "
                              f"{self.episodes_per_forward}")

    @property
    def source(self) -> Literal["store", "manifest"]:
        return "store" if isinstance(self.data, StoreData) else "manifest"


def episodes_per_worker(config: TrainConfig, world_size: int) -> int:
    """Each worker's share of the global ``episodes_per_step``; a count the workers cannot split evenly is
    refused (uneven shares would weigh the workers' gradients unequally)."""
    if config.episodes_per_step % world_size:
        raise ConfigError(
            f"episodes_per_step={config.episodes_per_step} (episodes per optimiser step, over all workers) does not "
            f"divide among {world_size} workers; use a multiple of {world_size}"
        )
    return config.episodes_per_step // world_size


def check_device_settings(config: TrainConfig) -> None:
    """``device`` and ``use_gpu`` must agree, and the global batch must split across the workers."""
    episodes_per_worker(config, max(1, config.workers))
    named = config.device.split(":")[0]
    if named not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={config.device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if config.use_gpu and named == "cpu":
        raise ConfigError("use_gpu=true trains on a GPU but device=cpu on the CPU; drop one of them")
    if config.workers > 0 and named == "cuda" and not config.use_gpu:
        raise ConfigError(f"device={config.device} with Ray workers needs use_gpu=true (Ray assigns the GPUs)")


def training_device(config: TrainConfig, *, assigned: torch.device | None = None) -> torch.device:
    """Where one worker trains. ``assigned``: the device Ray gave this worker (``ray.train.torch.get_device()``
    in a Ray Train worker, the trial's GPU or CPU in a Tune trial), None in-process.

    A named ``device`` wins; ``auto`` takes the assigned device, else CUDA when ``use_gpu`` or when present.
    """
    if config.device != "auto":
        return resolve_device(config.device)
    if assigned is not None:
        return assigned
    return resolve_device("cuda" if config.use_gpu else "auto")
