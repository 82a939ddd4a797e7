"""Decoding for end-to-end methods (input kind ``pixels``): only the sampled frames of each episode's videos,
augmented, as uint8 clips.

Training: an episode record is (episode index, the split rows of its videos: support then query). The
decoder turns a record into uint8 clips ``(V, T, 3, S, S)``: TSN segment sampling with a random offset
per segment and one random crop per clip (no horizontal flip: direction-sensitive labels such as SSv2's
"left to right" change meaning under a flip), both seeded by (seed, episode, video row), so a run
reproduces on any worker count and any decode order. Clips travel as uint8 (a quarter of float32) and
are normalised by the consumer (``normalise``), on its device.

A video that cannot be decoded is never fatal: it is replaced by another video of the same class not in
the episode (bounded retries, in an order seeded like the rest); an episode that still cannot be filled
is flagged ``ok = False`` and the trainer re-uses a good episode of the step in its place.

Evaluation / validation: every video of a split decoded once at segment centres (``decode_split``); the
pixels source encodes each once (``fsar.sources.pixels.PixelSplit``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fsar.data.episodes import Episodes, EpisodeSampler
from fsar.data.manifest import ManifestError, read_manifest
from fsar.data.transforms import FramePreprocess
from fsar.data.video import VideoDecodeError, load_clip

_KNOWN_BAD: dict[str, str] = {}  # path -> reason, per process: a bad file is tried once, not once per episode
_KNOWN_BAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class SplitVideos:
    """The videos of one manifest split, in manifest order (row i of every array is video i)."""

    split: str  # split name
    video_ids: np.ndarray  # (N,) object: unique video ids
    paths: np.ndarray  # (N,) object: absolute paths (or URLs)
    labels: np.ndarray  # (N,) int64: global class labels
    class_names: dict[int, str] = field(default_factory=dict)  # label -> class name

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, keep: np.ndarray) -> SplitVideos:
        """The videos where ``keep`` (bool ``(N,)``) is true, order kept."""
        return dataclasses.replace(self, video_ids=self.video_ids[keep], paths=self.paths[keep],
                                   labels=self.labels[keep])


def read_split_videos(manifest: str | Path, split: str) -> SplitVideos:
    """One split of a manifest; an empty split is a ManifestError naming the splits there are."""
    table = read_manifest(manifest)
    splits = np.asarray(table["split"].to_pylist(), dtype=object)
    rows = np.flatnonzero(splits == split)
    if rows.size == 0:
        raise ManifestError(f"manifest {manifest} has no {split!r} videos (splits: {sorted(set(splits.tolist()))})")
    take = lambda column: np.asarray(table[column].to_pylist(), dtype=object)[rows]  # noqa: E731
    labels = take("label").astype(np.int64)
    names = {int(label): str(name) for label, name in zip(labels, take("class_name"), strict=True)}
    return SplitVideos(split, take("video_id"), take("path"), labels, names)


def clip_uint8(frames: np.ndarray, preprocess: FramePreprocess, *, train: bool,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Crop and resize one clip as the backbone wants, kept as uint8: ``(T, H, W, 3)`` → ``(T, 3, S, S)``.

    The same crop and resize as ``preprocess`` (random position and scale when ``train``, centre crop
    otherwise); normalisation is left to ``normalise`` so that clips move and cache at one byte a value.
    """
    unit = dataclasses.replace(preprocess, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return unit(frames, train=train, rng=rng).mul_(255.0).round_().to(torch.uint8).numpy()


def normalise(pixels: Tensor, preprocess: FramePreprocess) -> Tensor:
    """uint8 clips ``(..., 3, S, S)`` → float32 normalised with the backbone's mean and std (on their device)."""
    mean, std = _channel_stats(tuple(preprocess.mean), tuple(preprocess.std), pixels.device)
    return (pixels.float() / 255.0 - mean) / std


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Mean and std ``(3, 1, 1)`` on ``device``, made once: a fresh host tensor copied per batch would make
    every step wait for the device (a copy from pageable memory synchronises)."""
    return (torch.tensor(mean, device=device).view(3, 1, 1), torch.tensor(std, device=device).view(3, 1, 1))


def episode_rows(episodes: Episodes) -> np.ndarray:
    """Split rows of each episode's videos, support then query, class-major: ``(E, way·shot + way·query)``."""
    e = len(episodes)
    return np.concatenate([episodes.support.reshape(e, -1), episodes.query.reshape(e, -1)], axis=1)


def episode_table(sampler: EpisodeSampler, *, rank: int, world_size: int, episodes_per_step: int, steps: int,
                  start_step: int = 0) -> dict[str, np.ndarray]:
    """The records one worker trains on, in order: ``episode`` ``(n,)`` and ``rows`` ``(n, V)`` for steps
    ``start_step … steps-1`` — the same episodes ``sampler.stream(rank=…)`` yields (episode e depends only
    on (seed, e))."""
    k = episodes_per_step
    starts = [(step * world_size + rank) * k for step in range(start_step, steps)]
    if not starts:
        return {"episode": np.zeros(0, np.int64), "rows": np.zeros((0, 0), np.int64)}
    episodes = [sampler.batch(s, k) for s in starts]
    index = np.concatenate([np.arange(s, s + k) for s in starts])
    return {"episode": index.astype(np.int64), "rows": np.concatenate([episode_rows(e) for e in episodes])}


@dataclass
class EpisodeDecoder:
    """Episode records → uint8 clips; picklable, so Ray Data tasks and a local thread pool share it."""

    videos: SplitVideos  # the split the episodes index
    frames: int  # segments (frames) per video
    preprocess: FramePreprocess  # the method's pixel pipeline (crop size; normalisation is applied later)
    seed: int  # run seed: offsets, crops and replacements are drawn from (seed, episode, row)
    train: bool = True  # random segment offsets and crops; False: segment centres, centre crop
    retries: int = 3  # other videos of the class tried in place of one that cannot be decoded
    backend: str = "auto"  # decord with PyAV fallback, or one of them

    def __post_init__(self) -> None:
        labels = self.videos.labels
        self._members = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}

    def decode_video(self, row: int, episode: int) -> np.ndarray:
        """One video's clip ``(T, 3, S, S)`` uint8; raises VideoDecodeError."""
        path = str(self.videos.paths[row])
        with _KNOWN_BAD_LOCK:
            known = _KNOWN_BAD.get(path)
        if known is not None:
            raise VideoDecodeError(known)
        rng = np.random.default_rng([self.seed, episode, row]) if self.train else None
        try:
            clip = load_clip(path, num_segments=self.frames, mode="train" if self.train else "eval", rng=rng,
                             backend=self.backend)  # type: ignore[arg-type]
        except VideoDecodeError as exc:
            with _KNOWN_BAD_LOCK:
                _KNOWN_BAD[path] = str(exc)
            raise
        return clip_uint8(clip.frames, self.preprocess, train=self.train, rng=rng)

    def decode_episode(self, episode: int, rows: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """Clips ``(V, T, 3, S, S)`` of one episode, whether it is complete, and how many videos failed."""
        size = self.preprocess.size
        out = np.zeros((len(rows), self.frames, 3, size, size), dtype=np.uint8)
        used = {int(r) for r in rows}
        ok, failed = True, 0
        for slot, row in enumerate(rows):
            candidates, done, attempt = [int(row)], False, 0
            while attempt < len(candidates) and not done:
                try:
                    out[slot] = self.decode_video(candidates[attempt], episode)
                    used.add(candidates[attempt])
                    done = True
                except VideoDecodeError:
                    failed += 1
                    if attempt == 0:  # a seeded order of replacements: same class, not in the episode
                        others = [int(r) for r in self._members[int(self.videos.labels[row])] if int(r) not in used]
                        rng = np.random.default_rng([self.seed, episode, int(row), 1])
                        candidates += [others[i] for i in rng.permutation(len(others))[: self.retries]]
                attempt += 1
            ok = ok and done
        return out, ok, failed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of records (``episode`` ``(n,)``, ``rows`` ``(n, V)``) → ``episode``, ``pixels``
        ``(n, V, T, 3, S, S)`` uint8, ``ok`` ``(n,)`` bool, ``failed`` ``(n,)`` int64 (videos that failed)."""
        decoded = [self.decode_episode(int(e), np.asarray(r)) for e, r in zip(batch["episode"], batch["rows"], strict=True)]
        return stack_decoded(np.asarray(batch["episode"], dtype=np.int64), decoded)


def decode_records(batch: dict[str, np.ndarray], *, decoder: EpisodeDecoder) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function (a plain function, so it runs as tasks, not an actor pool)."""
    return decoder(batch)


def stack_decoded(episodes: np.ndarray, decoded: list[tuple[np.ndarray, bool, int]]) -> dict[str, np.ndarray]:
    return {
        "episode": episodes,
        "pixels": np.stack([d[0] for d in decoded]),
        "ok": np.asarray([d[1] for d in decoded], dtype=bool),
        "failed": np.asarray([d[2] for d in decoded], dtype=np.int64),
    }


def _decode_indexed(decoder: EpisodeDecoder, episode: int, rows: np.ndarray) -> tuple[np.ndarray, bool, int, int]:
    return (*decoder.decode_episode(episode, rows), episode)


def local_episode_stream(decoder: EpisodeDecoder, table: dict[str, np.ndarray], *, episodes_per_step: int,
                         threads: int = 0, prefetch_steps: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """In-process stand-in for the Ray Data stream: the same records decoded by a thread pool, one batch of
    ``episodes_per_step`` per step, ``prefetch_steps`` steps decoded ahead of the consumer."""
    n = len(table["episode"])
    k = episodes_per_step
    pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1, thread_name_prefix="fsar-decode")
    pending: collections.deque[list[Future]] = collections.deque()
    next_start = 0

    def submit() -> None:
        nonlocal next_start
        if next_start < n:
            pending.append([pool.submit(_decode_indexed, decoder, int(table["episode"][i]), table["rows"][i])
                            for i in range(next_start, min(n, next_start + k))])
            next_start += k

    try:
        for _ in range(prefetch_steps + 1):
            submit()
        while pending:
            futures = pending.popleft()
            submit()
            decoded = [f.result() for f in futures]
            yield stack_decoded(np.asarray([d[3] for d in decoded], dtype=np.int64), [d[:3] for d in decoded])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def decode_split(videos: SplitVideos, *, frames: int, preprocess: FramePreprocess, threads: int = 0,
                 progress: bool = False, desc: str = "decode") -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Every video of a split at segment centres (centre crop): uint8 ``(N, T, 3, S, S)``, ``ok`` ``(N,)``
    and the reason for each video that could not be decoded (by video id)."""
    from tqdm.auto import tqdm

    decoder = EpisodeDecoder(videos, frames, preprocess, seed=0, train=False)
    size = preprocess.size
    pixels = np.zeros((len(videos), frames, 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(videos), dtype=bool)
    errors: dict[str, str] = {}

    def one(row: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return row, decoder.decode_video(row, 0), None
        except VideoDecodeError as exc:
            return row, None, str(exc)

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        for row, clip, error in tqdm(pool.map(one, range(len(videos))), total=len(videos), desc=desc, unit="video",
                                     disable=not progress):
            if clip is None:
                errors[str(videos.video_ids[row])] = error or "unknown error"
            else:
                pixels[row], ok[row] = clip, True
    return pixels, ok, errors
