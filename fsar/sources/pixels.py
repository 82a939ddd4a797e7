"""Episodes from a manifest of videos (``data: {manifest: ...}``): end-to-end methods (input ``pixels``).

Each worker decodes exactly its own episodes, from the step it starts at (a resumed run decodes no completed
step again; episode e depends only on (seed, e)): only the sampled frames, with a TSN random offset per
segment and one random crop per clip, seeded by (seed, episode, video) (``fsar.sources.decoding``). With
Ray workers the decoding runs in Ray Data tasks that the worker starts for its own episode range
(``data.decode: ray``); otherwise a thread pool in the worker decodes a few steps ahead. Clips travel as
uint8 and are normalised on the device, from pinned memory; the method runs under bf16 autocast on CUDA.

Validation decodes the val split once (segment centres, centre crop), keeps it as uint8, and encodes every
video once per validation (``PixelSplit``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fsar import storage
from fsar.config import ConfigError, to_dict
from fsar.data.episodes import Episodes
from fsar.data.sections import ManifestData, StageSettings
from fsar.data.transforms import FramePreprocess
from fsar.devices import autocast, episode_class_text, to_device
from fsar.methods import FewShotMethod, method_info
from fsar.methods.base import Encoding, Supervision, concat_encodings
from fsar.sources.base import (
    SourceSettings,
    SplitKey,
    StepBatch,
    Validation,
    build_for_training,
    check_clip_length,
)
from fsar.sources.decoding import (
    EpisodeDecoder,
    decode_records,
    decode_split,
    episode_table,
    local_episode_stream,
    normalise,
    read_split_videos,
)
from fsar.sources.samplers import training_sampler, validation_sampler

VAL_EPISODE_BATCH = 50  # validation episodes per head call: per-task modules (C-MGA) run per episode
EVAL_EPISODE_BATCH = 64  # `fsar eval`: most episodes per head call, for the same reason


@dataclass
class PixelSplit:
    """A split's decoded clips, uint8 ``(N, T, 3, S, S)``, encoded ``chunk`` videos at a time on the device:
    copied from pinned memory, normalised there, run under bf16 autocast on CUDA, kept in fp32."""

    pixels: np.ndarray | Tensor
    preprocess: FramePreprocess
    chunk: int = 32

    def __len__(self) -> int:
        return len(self.pixels)

    @torch.no_grad()
    def encode(self, method: Any, device: torch.device) -> Encoding:
        pixels = torch.as_tensor(self.pixels)
        parts = []
        for start in range(0, len(pixels), self.chunk):
            clips = normalise(to_device(pixels[start : start + self.chunk], device), self.preprocess)
            with autocast(device):
                encoded = method.encode_for_scoring(clips)
            parts.append(type(encoded)(*(part.float() for part in encoded)))
        return concat_encodings(parts)


def ray_episode_stream(decoder: EpisodeDecoder, table: dict[str, np.ndarray], *,
                       episodes_per_step: int) -> Iterator[dict[str, np.ndarray]]:
    """The same records as ``local_episode_stream``, decoded by Ray Data tasks this worker starts (one
    episode per task: decoding ~25 videos is the unit of work), delivered in order, one step at a time."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver follows metrics.jsonl instead
    items = [{"episode": int(e), "rows": r} for e, r in zip(table["episode"], table["rows"], strict=True)]
    if not items:
        return
    ds = ray.data.from_items(items).map_batches(decode_records, fn_kwargs={"decoder": decoder}, batch_size=1,
                                                batch_format="numpy")
    ds.context.execution_options.preserve_order = True  # steps arrive in order
    yield from ds.iter_batches(batch_size=episodes_per_step, batch_format="numpy", prefetch_batches=2)


class PixelInputs:
    """How decoded clips reach an end-to-end method: uint8 chunks copied to the device from pinned memory and
    normalised there, the method under bf16 autocast on CUDA. Class text, for a method that reads it, comes
    from ``text``: the stage encoder's text tower over the manifest's class names ``(n_labels, E)``; no masks."""

    autocast = True
    may_skip_steps = True  # a step whose episodes all failed to decode has weight 0
    text: Tensor | None = None

    def method_inputs(self, inputs: Tensor, method: FewShotMethod, device: torch.device) -> Tensor:
        return normalise(to_device(inputs, device), method.preprocess)

    def episode_extras(self, episodes: Episodes | None, method: FewShotMethod,
                       device: torch.device) -> tuple[Tensor | None, Supervision | None]:
        if not method.uses_text or self.text is None or episodes is None:
            return None, None
        return episode_class_text(self.text.to(device), episodes), None


def stage_class_text(method: FewShotMethod, class_names: dict[int, str]) -> Tensor | None:
    """Class-name text ``(n_labels, E)`` (row = global label) from an end-to-end method's stage encoder, for a
    method that reads class text; None otherwise."""
    stage = getattr(method, "stage", None)
    if stage is None or not method.uses_text:
        return None
    names = [class_names.get(label, "") for label in range(max(class_names) + 1)]
    return stage.class_text(names)


def stage_settings(data: ManifestData, method: str) -> StageSettings | None:
    """The stage a manifest run of ``method`` trains with: ``data.stage`` (defaults when unset) for frames and
    patches methods; for pixels methods, which bring their own encoder, ``data.stage`` as given (None, or a stage
    that ``build_method`` refuses)."""
    if method_info(method).input_kind == "pixels":
        return data.stage
    return data.stage or StageSettings()


class PixelSource(PixelInputs):
    """Decoded videos of a manifest (see the module docstring)."""

    def __init__(self, config: SourceSettings) -> None:
        if not isinstance(config.data, ManifestData):
            raise ConfigError("PixelSource needs data: {manifest: ...}")
        self.config, self.data = config, config.data
        self.stage = stage_settings(config.data, config.method)
        self.train = read_split_videos(self.data.manifest, "train")

    def build_method(self) -> FewShotMethod:
        method = build_for_training(self.config, 0, stage=self.stage)
        check_clip_length(method, self.data.frames, source="are decoded per video (frames)")
        self.text = stage_class_text(method, self.train.class_names)
        return method

    def check(self) -> None:
        """Everything that can be wrong, without decoding a video: method, knobs, frame count, impossible
        training or validation episodes."""
        self.build_method()
        training_sampler(self.config, self.train.labels, self.train.class_names)
        val = read_split_videos(self.data.manifest, self.config.val_split)
        validation_sampler(self.config, val.labels, val.class_names)

    def decode_engine(self) -> str:
        """``ray`` (Ray Data tasks) or ``threads``; ``auto`` decodes with Ray when the run has Ray workers."""
        if self.data.decode != "auto":
            return self.data.decode
        return "ray" if self.config.workers > 0 else "threads"

    def steps(self, method: FewShotMethod, *, rank: int, world_size: int, per_worker: int, start_step: int,
              device: torch.device) -> Iterator[StepBatch]:
        sampler = training_sampler(self.config, self.train.labels, self.train.class_names)
        decoder = EpisodeDecoder(self.train, self.data.frames, method.preprocess, seed=self.config.seed, train=True)
        table = episode_table(sampler, rank=rank, world_size=world_size, episodes_per_step=per_worker,
                              steps=self.config.steps, start_step=start_step)
        if self.decode_engine() == "ray":
            batches = ray_episode_stream(decoder, table, episodes_per_step=per_worker)
        else:
            batches = local_episode_stream(decoder, table, episodes_per_step=per_worker,
                                           threads=self.data.decode_threads)
        for step, batch in enumerate(batches, start=start_step):
            expected = (step * world_size + rank) * per_worker
            if int(batch["episode"][0]) != expected:
                raise RuntimeError(f"rank {rank}: step {step} got episode {int(batch['episode'][0])}, expected {expected}")
            pixels = torch.from_numpy(np.asarray(batch["pixels"]))
            ok = np.asarray(batch["ok"], dtype=bool)
            # The step's episodes (their classes name the class text), drawn again: episode e depends only on (seed, e).
            episodes = sampler.batch(expected, per_worker) if method.uses_text else None
            # An episode that could not be filled is swapped for a complete one of the step (DDP needs every rank
            # to run the same number of backward passes, so the step is never skipped; weight 0 when none is good).
            if not ok.all() and ok.any():
                swap = np.where(ok, np.arange(len(ok)), np.flatnonzero(ok)[0])
                pixels = pixels[swap]
                if episodes is not None:
                    episodes = Episodes(episodes.classes[swap], episodes.support[swap], episodes.query[swap])
            yield StepBatch(pixels, episodes, weight=1.0 if ok.any() else 0.0,
                            failed_videos=int(np.asarray(batch["failed"]).sum()), incomplete_episodes=int((~ok).sum()))

    def validation(self, method: FewShotMethod, device: torch.device) -> Validation:
        val = read_split_videos(self.data.manifest, self.config.val_split)
        pixels, ok, errors = decode_split(val, frames=self.data.frames, preprocess=method.preprocess,
                                          threads=self.data.decode_threads or os.cpu_count() or 1, desc="decode val")
        if errors:
            print(f"validation: {len(errors)} video(s) could not be decoded and are left out, e.g. "
                  f"{next(iter(errors.values()))}")
        val = val.subset(ok)
        episodes = validation_sampler(self.config, val.labels, val.class_names).batch(0, self.config.val_episodes)
        text = stage_class_text(method, val.class_names) if method.uses_text else None
        return Validation(PixelSplit(pixels[ok], method.preprocess, self.data.encode_chunk), episodes,
                          None if text is None else text.to(device), batch_size=VAL_EPISODE_BATCH)

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"feature_dim": 0, "text_dim": None, "view": "auto", "resolved_view": "pixels", "store_meta": None,
                "manifest": str(self.data.manifest), "frames": self.data.frames,
                "stage": None if self.stage is None else to_dict(self.stage)}


class PixelEvaluation:
    """One split of a manifest for ``fsar eval``: end-to-end methods and runs, every video decoded once per
    frame count and pixel pipeline (segment centres, centre crop), kept as uint8; videos that cannot be
    decoded are left out (reported), the same set for every method."""

    episode_batch_limit = EVAL_EPISODE_BATCH

    def __init__(self, data: ManifestData, split: str) -> None:
        self.data, self.split = data, split
        self.location = str(data.manifest)
        self.videos = read_split_videos(data.manifest, split)
        self._decoded: dict[SplitKey, tuple[np.ndarray, np.ndarray]] = {}
        self._usable: np.ndarray | None = None
        self._text: dict[tuple[str, str | None, int], Tensor | None] = {}  # encoder → class-name text

    def dataset_name(self) -> str:
        return self.trained_dataset_name(self.location)

    def trained_dataset_name(self, location: str) -> str:
        return storage.name(storage.parent(storage.absolute(location)))

    def build(self, name: str, knobs: dict[str, Any]) -> tuple[FewShotMethod, SplitKey]:
        """An untrained end-to-end method by name; what it reads (frame count and pixel pipeline)."""
        from fsar.methods import build_method

        method = build_method(name, feature_dim=0, stage=stage_settings(self.data, name), **knobs)
        return method, self._key(method, self.data.frames)

    def accept(self, method: FewShotMethod, payload: dict[str, Any], where: str) -> SplitKey:
        """A trained end-to-end run (at the frame count it trained with); what it reads. A run trained on cached
        features is refused: its encoder is the store's, which a manifest cannot check."""
        if payload.get("store_meta") is not None or method.input_kind != "pixels":
            raise ConfigError(f"run {where} was trained on a feature store: evaluate it with --store, not --manifest")
        return self._key(method, int(payload.get("frames", self.data.frames)))

    @staticmethod
    def _key(method: FewShotMethod, frames: int) -> SplitKey:
        pre = method.preprocess
        return SplitKey("pixels", frames=frames, pixels=(pre.size, pre.interpolation, tuple(pre.mean), tuple(pre.std)),
                        preprocess=pre)

    def _decode(self, key: SplitKey) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._decoded:
            frames, pre = key.frames, key.preprocess
            pixels, ok, errors = decode_split(self.videos, frames=frames, preprocess=pre, progress=True,
                                              threads=self.data.decode_threads, desc=f"decode {self.split}")
            if errors:
                print(f"{len(errors)} {self.split} video(s) could not be decoded and are left out, e.g. "
                      f"{next(iter(errors.values()))}")
            if self._usable is not None and not np.array_equal(ok, self._usable):
                raise ConfigError("another frame count decodes a different set of videos; evaluate runs with "
                                  "different `frames` into separate folders")
            self._usable = ok
            self._decoded[key] = (pixels, ok)
        return self._decoded[key]

    @property
    def labels(self) -> np.ndarray:
        return self.videos.labels if self._usable is None else self.videos.labels[self._usable]

    @property
    def class_names(self) -> dict[int, str]:
        return self.videos.class_names

    def text_for(self, method: FewShotMethod) -> Tensor | None:
        """The class-name text of ``method``'s own stage encoder (runs on different encoders read different text),
        made once per encoder weights: the text tower never trains."""
        stage = getattr(method, "stage", None)
        if stage is None or not method.uses_text:
            return None
        key = (stage.settings.backbone, stage.encoder_weights, stage.settings.init_seed)
        if key not in self._text:
            self._text[key] = stage_class_text(method, self.class_names)
        return self._text[key]

    def split_for(self, key: SplitKey) -> PixelSplit:
        pixels, ok = self._decode(key)
        return PixelSplit(pixels[ok], key.preprocess, self.data.encode_chunk)

    def video_ids(self, key: SplitKey) -> list[str]:
        _, ok = self._decode(key)
        return self.videos.video_ids[ok].tolist()

    def describe(self) -> dict[str, str]:
        return {"manifest": str(self.data.manifest)}
