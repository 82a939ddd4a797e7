"""The episode-source interface: where a training or evaluation run's episodes come from.

One training loop (``fsar.training.loop``) and one scorer (``fsar.evaluation.scoring``) serve every method;
what differs between a feature store and a manifest of videos lives behind this interface:

- ``FeatureSource`` (``fsar.sources.features``): a store's cached features, gathered per episode (fp16 on
  the host or the device), cast to fp32 on the device;
- ``PixelSource`` (``fsar.sources.pixels``): a manifest's videos, decoded per episode (Ray Data tasks, or a
  thread pool in the worker) into uint8 clips, normalised on the device, run under bf16 autocast on CUDA.

Both yield the same ``StepBatch`` per optimiser step and the same ``Validation`` for rank 0, and own their
up-front checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from fsar.data.episodes import Episodes
from fsar.evaluation.scoring import EncodableSplit
from fsar.methods.base import FewShotMethod, Supervision


@dataclass
class StepBatch:
    """One optimiser step's episodes on one worker."""

    inputs: Tensor  # (k, V, T, ...) each episode's support then query videos: gathered features or uint8 clips
    episodes: Episodes | None  # the k episodes (class text and supervision are looked up from them); None: none needed
    weight: float = 1.0  # 0: no complete episode this step (the step still runs, so every DDP rank stays in step)
    failed_videos: int = 0  # videos that could not be decoded (and were replaced)
    incomplete_episodes: int = 0  # episodes that could not be filled (replaced by a complete one of the step)


@dataclass
class Validation:
    """Rank 0's fixed validation episodes and the split they index."""

    split: EncodableSplit
    episodes: Episodes
    class_text: Tensor | None = None  # (n_labels, E) on the device, for methods that read text
    batch_size: int = 500  # episodes per head call


class EpisodeSource(Protocol):
    """Where a run's episodes come from (see the module docstring)."""

    autocast: bool  # run the method under bf16 autocast on CUDA (decoded pixels through a backbone)

    def build_method(self) -> FewShotMethod:
        """The method, seeded, sized for this data (feature and text widths), checked against it."""
        ...

    def steps(self, method: FewShotMethod, *, rank: int, world_size: int, per_worker: int, start_step: int,
              device: torch.device) -> Iterator[StepBatch]:
        """This worker's step batches from ``start_step`` on; episode e depends only on (seed, e)."""
        ...

    def method_inputs(self, inputs: Tensor, method: FewShotMethod, device: torch.device) -> Tensor:
        """A chunk of ``StepBatch.inputs`` as the method's input on ``device``."""
        ...

    def episode_extras(self, episodes: Episodes | None, method: FewShotMethod,
                       device: torch.device) -> tuple[Tensor | None, Supervision | None]:
        """Class text ``(k, way, E)`` and training-only supervision of a chunk of episodes (None when unused)."""
        ...

    def validation(self, method: FewShotMethod, device: torch.device) -> Validation:
        """The validation split (each video encoded once per validation) and its fixed episodes."""
        ...

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint records about the data (store metadata and view, or manifest and frames)."""
        ...


def autocast(device: torch.device, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA when ``enabled``; nothing elsewhere (bf16 matmuls on a CPU are slower than fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
