"""The source interfaces: where a training or evaluation run's videos come from.

One training loop (``fsar.training.loop``) and one scorer (``fsar.evaluation.scoring``) serve every method;
what differs between a feature store and a manifest of videos lives behind two interfaces:

- ``EpisodeSource`` (training): ``FeatureSource`` (``fsar.sources.features``) gathers a store's cached
  features per episode (fp16 on the host or the device), cast to fp32 on the device; ``PixelSource``
  (``fsar.sources.pixels``) decodes a manifest's videos per episode (Ray Data tasks, or a thread pool in the
  worker) into uint8 clips, normalised on the device, run under bf16 autocast on CUDA. Both yield the same
  ``StepBatch`` per optimiser step and the same ``Validation`` for rank 0, and own their up-front checks.
- ``EvaluationSource`` (``fsar eval``): one split of a store (``StoreEvaluation``) or of a manifest
  (``PixelEvaluation``), which builds or accepts each method and names what it reads with a ``SplitKey``,
  so methods that read the same thing share one load or decode of the split.

Sources read what a method declares (``uses_text``, ``clip_length``, ``mask_request``), never its knobs by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from fsar.config import ConfigError
from fsar.data.episodes import Episodes
from fsar.data.sections import ManifestData, StageSettings, StoreData
from fsar.data.transforms import FramePreprocess
from fsar.evaluation.scoring import EncodableSplit
from fsar.methods import FewShotMethod, build_method
from fsar.methods.base import Supervision


class SourceSettings(Protocol):
    """What a training source reads of a run's config (``fsar.training.config.TrainConfig`` has all of it)."""

    method: str
    knobs: dict[str, Any]
    data: StoreData | ManifestData
    way: int
    shot: int
    query: int
    steps: int
    val_split: str
    val_episodes: int
    seed: int
    workers: int
    drop_small_classes: bool


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
    """Where a training run's episodes come from (see the module docstring)."""

    autocast: bool  # run the method under bf16 autocast on CUDA (decoded pixels through a backbone)
    may_skip_steps: bool  # a step can hold no complete episode (StepBatch.weight 0): decoded videos can fail

    def build_method(self) -> FewShotMethod:
        """The method, seeded, sized for this data (feature and text widths), checked against it."""
        ...

    def check(self) -> None:
        """Everything that can be wrong, found without reading feature bytes or decoding a video."""
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


@dataclass(frozen=True)
class SplitKey:
    """What a method reads of an evaluation split; methods with equal keys share one load (or decode) of it."""

    view: str  # a store view (pooled, grid, patches), or "pixels" for decoded clips
    as_grid: bool = False  # store features kept as a (g, g) grid rather than flattened (patch methods)
    frames: int = 0  # pixels: frames decoded per video
    pixels: tuple[Any, ...] = ()  # pixels: size, interpolation, mean and std of the pixel pipeline
    preprocess: FramePreprocess | None = field(default=None, compare=False)  # pixels: the pipeline itself


class EvaluationSource(Protocol):
    """One split of a store or a manifest for ``fsar eval`` (see the module docstring)."""

    location: str  # the store or manifest it reads, as given
    episode_batch_limit: int | None  # most episodes per head call (per-episode modules of end-to-end methods)
    labels: np.ndarray  # (N,) global label of each usable video of the split
    class_names: dict[int, str]  # label → class name

    def dataset_name(self) -> str:
        """The name results carry when the user gives none: a store by its folder, a manifest by its folder."""
        ...

    def trained_dataset_name(self, location: str) -> str:
        """The same name for the data a run was trained on."""
        ...

    def build(self, name: str, knobs: dict[str, Any]) -> tuple[FewShotMethod, SplitKey]:
        """An untrained method by name, built for this data, and what it reads."""
        ...

    def accept(self, method: FewShotMethod, payload: dict[str, Any], where: str) -> SplitKey:
        """A trained run (its checkpoint ``payload``) checked against this data; what it reads."""
        ...

    def text_for(self, method: FewShotMethod) -> Tensor | None:
        """Class-name text ``(n_labels, E)`` of the split's labels as ``method`` reads it (the store's text tower,
        or an end-to-end method's own encoder's), None without."""
        ...

    def split_for(self, key: SplitKey) -> EncodableSplit:
        """The split as methods with this key read it."""
        ...

    def video_ids(self, key: SplitKey) -> list[str]:
        """Ids of the split's usable videos, in the order ``split_for`` encodes them."""
        ...

    def describe(self) -> dict[str, str]:
        """What an episode file records about the data."""
        ...


def build_for_training(settings: SourceSettings, feature_dim: int, *, text_dim: int | None = None,
                       stage: StageSettings | None = None) -> FewShotMethod:
    """The method with the run's seeded initialisation (on ``stage`` when given, end to end); one without
    learnable parameters is refused."""
    torch.manual_seed(settings.seed)
    method = build_method(settings.method, feature_dim=feature_dim, text_dim=text_dim, stage=stage, **settings.knobs)
    if not any(p.requires_grad for p in method.parameters()):
        raise ConfigError(
            f"method {settings.method} has no learnable parameters with knobs {settings.knobs}; "
            "give it some (e.g. knobs.proj_dim=256) or evaluate it untrained with `fsar eval`"
        )
    return method


def check_clip_length(method: FewShotMethod, frames: int, *, source: str) -> None:
    """A method built for a fixed clip length (``clip_length``) must get that many frames; ``source`` says
    where the count comes from, for the message."""
    wanted = method.clip_length
    if wanted is not None and wanted != frames:
        raise ConfigError(f"{method.method_name}: knobs.num_frames={wanted} but {frames} frames {source}; "
                          f"set knobs.num_frames={frames}")


def require_class_text(method: str, has_text: bool, where: str) -> None:
    """A method that needs class-name text refused on data without it (``where``: the store)."""
    if not has_text:
        raise ConfigError(f"method {method} needs class-name text embeddings but store {where} has none: "
                          "re-embed with a CLIP backbone that has a text tower")
