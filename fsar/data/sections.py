"""The ``data:`` section of a job's config: where its videos are, as a feature store (cached-feature methods)
or a manifest of videos (end-to-end methods), each with its own fields.

Training, evaluation, sweeps and the sources all read these; they live here, below all of them, so none of
those packages imports another for them.
"""

from __future__ import annotations

import re
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


TUNE_PATTERN = re.compile(r"^(frozen|full|last:(\d+)|lora:(\d+))$")


@dataclass(frozen=True)
class Tuning:
    """A parsed ``tune`` setting: ``kind`` and its number (K blocks of ``last:K``, rank R of ``lora:R``, else 0)."""

    kind: Literal["frozen", "full", "last", "lora"]
    number: int = 0


def parse_tuning(tune: str) -> Tuning:
    """``frozen``, ``full``, ``last:K`` (K >= 1) or ``lora:R`` (R >= 1) → ``Tuning``; anything else is refused."""
    match = TUNE_PATTERN.match(tune.strip())
    number = int(next((g for g in match.groups()[1:] if g is not None), 0)) if match else 0
    if match is None or (":" in tune and number < 1):
        raise ConfigError(f"tune={tune!r}: use frozen, full, last:K (the last K blocks, K >= 1) or lora:R "
                          "(rank-R LoRA on every block's attention, R >= 1)")
    return Tuning(tune.strip().split(":")[0], number)  # type: ignore[arg-type]


@dataclass
class StageSettings:
    """``data.stage``: the image encoder a frames or patches method trains with, end to end on decoded videos
    (``fsar.backbones.stage``). It hands the method exactly the view a feature store would hold."""

    backbone: str = "fsar-tiny"  # open_clip model name (ViTs tune in pieces), or "resnet50" (torchvision; a local weights file)
    pretrained: str | None = None  # None/"none": seeded random init; a local weights file; an open_clip tag
    init_seed: int = 0  # seed of a random init, so every worker starts from the same weights
    tune: str = "full"  # frozen, full, last:K (last K blocks + final norm and projection), lora:R (rank-R LoRA on attention)
    lr_scale: float = 0.1  # the backbone's learning rate = lr × lr_scale (the method's parts get lr)
    view: Literal["auto", "pooled", "grid", "patches"] = "auto"  # as a store's data.view: what the method reads
    patch_grid: int = 4  # G of the G×G patch grid (grid and patches views), pooled from the encoder's own grid; 0: its own grid
    checkpointing: bool = False  # activation checkpointing in the trainable blocks: memory for recomputation

    def __post_init__(self) -> None:
        parse_tuning(self.tune)
        if not self.lr_scale >= 0:
            raise ConfigError(f"data.stage.lr_scale must be >= 0, got {self.lr_scale}")
        if self.patch_grid < 0:
            raise ConfigError(f"data.stage.patch_grid must be >= 1, or 0 for the encoder's own grid; got {self.patch_grid}")

    @property
    def tuning(self) -> Tuning:
        return parse_tuning(self.tune)


@dataclass
class ManifestData:
    """``data:`` a manifest of videos, decoded while a method trains end to end: a pixels method (DMGAL-FT,
    DMGAL-Adapter) on its own encoder, or a frames or patches method on the ``stage`` encoder."""

    manifest: Location  # manifest.parquet (from `fsar manifest` or `fsar synth`), a local path or a URI
    frames: int = 8  # frames decoded per video (TSN segments; random offsets in training)
    decode: Literal["auto", "ray", "threads"] = "auto"  # who decodes: Ray Data tasks (auto with Ray workers) or a thread pool in the worker
    decode_threads: int = 0  # thread-pool decoding and every validation decode: parallel decodes (0 = number of CPUs)
    encode_chunk: int = 32  # videos per no-grad encoder forward at validation and evaluation
    stage: StageSettings | None = None  # frames/patches methods: the encoder trained with them (None: defaults); pixel methods bring their own

    def __post_init__(self) -> None:
        for name in ("frames", "encode_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_threads < 0:
            raise ConfigError(f"data.decode_threads must be >= 0 (0 = number of CPUs), got {self.decode_threads}")
