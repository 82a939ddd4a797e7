"""Episodes from a feature store (``data: {store: ...}``): cached-feature methods (input ``frames``/``patches``).

Up front (``check``, no feature bytes read): the store against the method's input kind and the job's
backbone, the method's knobs and widths (features, class text), its clip length, its mask source, and
the training and validation episode requests. In the worker: the train split's fp16 features on the host
or the device (``feature_placement``), each step's episodes gathered there and cast to fp32 on the
device; class-name text and mask supervision per episode; the validation split encoded once per
validation.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fsar import storage
from fsar.config import ConfigError
from fsar.data.episodes import Episodes
from fsar.data.feature_store import FeatureStore, FeatureStoreError, SplitFeatures, View
from fsar.data.sections import StoreData
from fsar.devices import episode_class_text, episode_indices, to_device
from fsar.evaluation.scoring import FeatureSplit
from fsar.methods import FewShotMethod, build_method, method_info
from fsar.methods.base import Supervision
from fsar.sources.base import (
    SourceSettings,
    SplitKey,
    StepBatch,
    Validation,
    build_for_training,
    check_clip_length,
    require_class_text,
)
from fsar.sources.masks import MaskTable, check_mask_inputs, load_mask_table
from fsar.sources.samplers import training_sampler, validation_sampler

# How a store's split is read: (store, split, view, as_grid) → SplitFeatures. The default reads the store's
# files; a Ray job passes one that maps the node's shared copy (pipelines.node_features).
SplitLoader = Callable[[FeatureStore, str, str, bool], SplitFeatures]


def read_split(store: FeatureStore, split: str, view: str, as_grid: bool) -> SplitFeatures:
    return store.load_split(split, view=view, as_grid=as_grid)  # type: ignore[arg-type]


def host_tensor(features: np.ndarray) -> Tensor:
    """fp16 features as a host tensor without a copy. A split shared by the workers of a node is a read-only
    mapping; nothing here writes into it (every read indexes or casts, which copies)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(features)


def place_features(features: np.ndarray, device: torch.device, placement: str) -> Tensor:
    """A split's fp16 features ``(N, T, ...)`` where training reads them: on ``device`` (``placement=device``,
    or ``auto`` when they fit in a quarter of its free memory) or on the host, where they are not copied.
    They stay fp16 either way and are cast per batch, so memory holds one fp16 copy, not a float32 one."""
    tensor = host_tensor(features)
    if device.type == "cpu" or placement == "host":
        return tensor
    if placement == "auto" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if tensor.numel() * tensor.element_size() > free / 4:
            return tensor
    return to_device(tensor, device)


class FeatureSource:
    """Cached features of a store (see the module docstring)."""

    autocast = False  # features are already the backbone's output; the heads run in fp32
    may_skip_steps = False  # every episode of a store is complete

    def __init__(self, config: SourceSettings, *, split_loader: SplitLoader | None = None) -> None:
        if not isinstance(config.data, StoreData):
            raise ConfigError("FeatureSource needs data: {store: ...}")
        self.config, self.data = config, config.data
        self.split_loader = split_loader or read_split
        info = method_info(config.method)
        if info.input_kind == "pixels":
            raise ConfigError(
                f"method {config.method} is end-to-end (input: pixels): it trains on decoded videos, not on a feature "
                f"store; pass --manifest MANIFEST.parquet (from `fsar manifest` or `fsar synth`) instead of --store"
            )
        self.store = FeatureStore(self.data.store)
        self.view: View = self.store.meta.view_for(info.input_kind, self.data.view)
        self.store.check(backbone=self.data.backbone, view=self.view)
        self.as_grid = info.input_kind == "patches"
        self.text = self.store.class_text()
        if info.needs_text:
            require_class_text(config.method, self.text is not None, str(self.store.root))
        self._train: SplitFeatures | None = None
        self._masks: MaskTable | None = None
        self._text_device: Tensor | None = None

    @property
    def text_dim(self) -> int | None:
        return None if self.text is None else int(self.text.shape[-1])

    def build_method(self) -> FewShotMethod:
        method = build_for_training(self.config, self.store.meta.view_dim(self.view), text_dim=self.text_dim)
        check_clip_length(method, self.store.meta.frames, source=f"per video are in store {self.store.root}")
        check_mask_inputs(method, self.store)
        return method

    def check(self) -> None:
        """Everything that can be wrong, without reading feature bytes: method and knobs against the store,
        impossible training or validation episodes."""
        self.build_method()
        training_sampler(self.config, *self.store.split_labels("train"))
        validation_sampler(self.config, *self.store.split_labels(self.config.val_split))

    def _load(self, split: str) -> SplitFeatures:
        return self.split_loader(self.store, split, self.view, self.as_grid)

    def steps(self, method: FewShotMethod, *, rank: int, world_size: int, per_worker: int, start_step: int,
              device: torch.device) -> Iterator[StepBatch]:
        self._train = train = self._load("train")
        self._masks = load_mask_table(method, self.store, train, device=device)
        features = place_features(train.features, device, self.data.feature_placement)
        stream = training_sampler(self.config, train.labels, train.class_names).stream(
            rank=rank, world_size=world_size, episodes_per_step=per_worker)
        for _ in range(start_step):  # a resumed run continues the same episode stream
            next(stream)
        for episodes in stream:
            s_idx, q_idx = episode_indices(episodes, features.device)
            yield StepBatch(torch.cat([features[s_idx], features[q_idx]], dim=1), episodes)

    def method_inputs(self, inputs: Tensor, method: FewShotMethod, device: torch.device) -> Tensor:
        return to_device(inputs, device, dtype=torch.float32)

    def episode_extras(self, episodes: Episodes | None, method: FewShotMethod,
                       device: torch.device) -> tuple[Tensor | None, Supervision | None]:
        text = self._text_on(device) if method.uses_text else None
        supervision = None if self._masks is None or episodes is None else self._masks.supervision(episodes)
        return episode_class_text(text, episodes) if episodes is not None else None, supervision

    def _text_on(self, device: torch.device) -> Tensor | None:
        if self.text is None:
            return None
        if self._text_device is None or self._text_device.device != device:
            self._text_device = torch.from_numpy(self.text).to(device)
        return self._text_device

    def validation(self, method: FewShotMethod, device: torch.device) -> Validation:
        val = self._load(self.config.val_split)
        episodes = validation_sampler(self.config, val.labels, val.class_names).batch(0, self.config.val_episodes)
        split = FeatureSplit(place_features(val.features, device, self.data.feature_placement))
        return Validation(split, episodes, self._text_on(device) if method.uses_text else None)

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"feature_dim": self.store.meta.view_dim(self.view), "text_dim": self.text_dim,
                "view": self.data.view, "resolved_view": self.view, "store_meta": dataclasses.asdict(self.store.meta)}


class StoreEvaluation:
    """One split of a store for ``fsar eval``: untrained methods and trained runs checked against the store,
    and each method's features (by view) loaded once and shared by the methods that read them."""

    episode_batch_limit = None  # cached features: the caller's batch size

    def __init__(self, data: StoreData, split: str) -> None:
        self.data, self.split = data, split
        self.location = str(data.store)
        self.store = FeatureStore(data.store)
        self.labels, self.class_names = self.store.split_labels(split)
        text = self.store.class_text()
        self.class_text = None if text is None else torch.from_numpy(text)
        self._features: dict[SplitKey, SplitFeatures] = {}

    def text_for(self, method: FewShotMethod) -> Tensor | None:
        return self.class_text  # every method on a store reads the store's text

    def dataset_name(self) -> str:
        return storage.name(self.data.store)

    def trained_dataset_name(self, location: str) -> str:
        return storage.name(location)

    def build(self, name: str, knobs: dict[str, Any]) -> tuple[FewShotMethod, SplitKey]:
        """An untrained method by name, built for this store, and the features it reads (its view)."""
        info = method_info(name)  # unknown names fail here
        if info.input_kind == "pixels":
            raise ConfigError(f"method {name} is end-to-end (input: pixels): evaluate it with --manifest, not --store")
        asked = self.data.view if info.input_kind == "frames" or self.data.view == "pooled" else "auto"
        view = self.store.meta.view_for(info.input_kind, asked)
        text_dim = self.store.text_dim()
        if info.needs_text:
            require_class_text(name, text_dim is not None, str(self.store.root))
        method = build_method(name, feature_dim=self.store.meta.view_dim(view), text_dim=text_dim, **knobs)
        return method, SplitKey(view, info.input_kind == "patches")

    def accept(self, method: FewShotMethod, payload: dict[str, Any], where: str) -> SplitKey:
        """A trained run checked against this store; the features it reads (the view it was trained on).

        The store may hold another dataset (cross-dataset evaluation) but must hold the same features: the
        same backbone and weights, the same frames per video and, for the grid or patches, the same grid."""
        meta = payload["store_meta"]
        if meta is None:  # an end-to-end (pixels) run: no store behind it
            raise ConfigError(f"run {where} trained {payload['method']} end to end: evaluate it with --manifest")
        here = self.store.meta
        if (meta["backbone"], meta["pretrained"]) != (here.backbone, here.pretrained):
            raise FeatureStoreError(
                f"run {where} was trained on {meta['backbone']}/{meta['pretrained']} features but store "
                f"{self.store.root} holds {here.backbone}/{here.pretrained}: evaluate it on a store embedded with "
                f"the same backbone (fsar embed --backbone {meta['backbone']})")
        if meta["pretrained"] is None and "init_seed" in meta and meta["init_seed"] != here.init_seed:
            raise FeatureStoreError(
                f"run {where} was trained on {meta['backbone']} features of random weights seeded {meta['init_seed']}, "
                f"but store {self.store.root} holds those of seed {here.init_seed}: other weights, other features; "
                f"evaluate it on a store embedded with init_seed={meta['init_seed']}")
        if meta["frames"] != here.frames:
            raise FeatureStoreError(
                f"run {where} was trained on {meta['frames']} frames per video but store {self.store.root} holds "
                f"{here.frames}: re-embed with --frames {meta['frames']}")
        trained_view = payload.get("resolved_view") or payload.get("view", "auto")  # older runs: the view asked for
        view = here.view_for(method.input_kind, trained_view)
        if view != "pooled" and meta["patch_grid"] != here.patch_grid:
            raise FeatureStoreError(
                f"run {where} read a {meta['patch_grid']}x{meta['patch_grid']} patch grid but store "
                f"{self.store.root} holds {here.patch_grid}x{here.patch_grid}: re-embed with --patch-grid "
                f"{meta['patch_grid']}")
        return SplitKey(view, method.input_kind == "patches")

    def features(self, key: SplitKey) -> SplitFeatures:
        if key not in self._features:
            self._features[key] = self.store.load_split(self.split, view=key.view, as_grid=key.as_grid)  # type: ignore[arg-type]
        return self._features[key]

    def split_for(self, key: SplitKey) -> FeatureSplit:
        """The split as the method reads it (fp16 on the host; each chunk is cast on the device as it is encoded)."""
        return FeatureSplit(self.features(key).features)

    def video_ids(self, key: SplitKey) -> list[str]:
        return self.features(key).video_ids

    def describe(self) -> dict[str, str]:
        return {"store": str(self.data.store)}
