"""Seeded few-shot episodes: ``way`` classes × (``shot`` support + ``query`` query) videos of one split.

Episodes are numbered. Episode ``e`` depends only on (seed, e): episodes are drawn in fixed blocks,
block ``b`` from ``numpy.random.default_rng([seed, b])``, all of a block's episodes in one vectorised
draw. A worker of rank ``r`` among ``W`` takes episodes ``(step·W + r)·k … +k`` for ``k`` episodes per
step, so ranks get disjoint streams and the episodes seen in total do not depend on the worker count.

Evaluation episodes are materialised once (``write_episode_file``), as video ids, so every method and
every checkpoint is scored on the very same episodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsar.atomic import atomic_write_text

EPISODE_FILE_FORMAT = "fsar-episodes/1"
_BLOCK_ELEMENTS = 1 << 22  # bounds one block's random-key matrix (episodes × way × largest class)


class EpisodeError(ValueError):
    """An episode request cannot be met by the data; the message says what to lower or fix."""


@dataclass(frozen=True)
class Episodes:
    """A batch of E episodes as row indices into the split's video list.

    ``classes`` (E, way): the split's class labels, in episode order (class i gets episode label i);
    ``support`` (E, way, shot) and ``query`` (E, way, query): video rows, disjoint within an episode.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def __getitem__(self, item: slice) -> Episodes:
        return Episodes(self.classes[item], self.support[item], self.query[item])


class EpisodeSampler:
    """Draws episodes from the videos of one split, given each video's class label.

    Impossible requests fail here, before any work: fewer than ``way`` classes, or a class with fewer
    than ``shot + query`` videos (name those classes; ``drop_small_classes=True`` leaves them out instead).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        *,
        way: int,
        shot: int,
        query: int,
        seed: int,
        class_names: dict[int, str] | None = None,
        drop_small_classes: bool = False,
        split: str = "split",
    ) -> None:
        for name, value in (("way", way), ("shot", shot), ("query", query)):
            if value < 1:
                raise EpisodeError(f"{name} must be >= 1, got {value}")
        labels = np.asarray(labels, dtype=np.int64)
        self.way, self.shot, self.query, self.seed = way, shot, query, seed
        classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        need = shot + query
        small = counts < need
        if small.any() and not drop_small_classes:
            names = class_names or {}
            listed = ", ".join(f"{names.get(int(c), int(c))} ({int(n)})" for c, n in zip(classes[small], counts[small], strict=True))
            raise EpisodeError(
                f"{split}: shot+query={need} but {int(small.sum())} class(es) have fewer videos: {listed[:400]}. "
                "Lower shot/query, or set drop_small_classes=true to leave those classes out"
            )
        if len(classes) - int(small.sum()) < way:
            raise EpisodeError(
                f"{split}: way={way} needs {way} classes with >= {need} videos each, but only "
                f"{len(classes) - int(small.sum())} of {len(classes)} classes have that many; lower way"
            )
        keep = np.flatnonzero(~small)
        self.classes = classes[keep]
        counts = counts[keep]
        # members[c, j]: row of the j-th video of kept class c; padding is -1 (never drawn: key +inf).
        remap = np.full(len(classes), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        cls_of_row = remap[inverse]
        order = np.argsort(cls_of_row, kind="stable")
        order = order[cls_of_row[order] >= 0]
        self.counts = counts.astype(np.int64)
        width = int(counts.max())
        self.members = np.full((len(keep), width), -1, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        within = np.arange(len(order)) - np.repeat(starts, counts)
        self.members[np.repeat(np.arange(len(keep)), counts), within] = order
        self._padding = np.arange(width)[None, :] >= self.counts[:, None]
        self.block_size = int(max(1, min(1024, _BLOCK_ELEMENTS // (way * width))))
        self._cache: dict[int, Episodes] = {}

    def _block(self, b: int) -> Episodes:
        if b in self._cache:
            return self._cache[b]
        rng = np.random.default_rng([self.seed, b])
        n, way, k = self.block_size, self.way, self.shot + self.query
        class_keys = rng.random((n, len(self.classes)))
        chosen = np.argsort(class_keys, axis=1)[:, :way]  # (n, way) kept-class rows, random order
        keys = rng.random((n, way, self.members.shape[1]))
        keys[self._padding[chosen]] = np.inf
        part = np.argpartition(keys, k - 1, axis=-1)[..., :k] if k < keys.shape[-1] else \
            np.broadcast_to(np.arange(keys.shape[-1]), keys.shape).copy()
        # argpartition leaves the k smallest unordered; sort them by key so support/query is a fair split.
        part = np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, -1), axis=-1), -1)
        videos = self.members[chosen[..., None], part]
        block = Episodes(self.classes[chosen], videos[..., : self.shot], videos[..., self.shot :])
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[b] = block
        return block

    def batch(self, start: int, count: int) -> Episodes:
        """Episodes ``start … start+count-1`` (deterministic for the seed)."""
        if start < 0 or count < 0:
            raise ValueError("start and count must be >= 0")
        parts = []
        pos, end = start, start + count
        while pos < end:
            b, offset = divmod(pos, self.block_size)
            take = min(end - pos, self.block_size - offset)
            parts.append(self._block(b)[offset : offset + take])
            pos += take
        if not parts:
            empty = np.zeros((0, self.way), dtype=np.int64)
            return Episodes(empty, np.zeros((0, self.way, self.shot), np.int64), np.zeros((0, self.way, self.query), np.int64))
        return Episodes(
            np.concatenate([p.classes for p in parts]),
            np.concatenate([p.support for p in parts]),
            np.concatenate([p.query for p in parts]),
        )

    def stream(self, *, rank: int = 0, world_size: int = 1, episodes_per_step: int = 1) -> Iterator[Episodes]:
        """Endless per-worker stream: step ``s`` yields episodes ``(s·W + rank)·k … +k``."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        step = 0
        while True:
            yield self.batch((step * world_size + rank) * episodes_per_step, episodes_per_step)
            step += 1


def episode_labels(way: int, per_class: int) -> np.ndarray:
    """Episode-local labels ``(way·per_class,)`` matching a ``(way, per_class)`` block flattened row-major."""
    return np.repeat(np.arange(way), per_class)


def write_episode_file(
    path: str | Path, episodes: Episodes, video_ids: Sequence[str], *, meta: dict[str, Any]
) -> Path:
    """Materialise episodes as video ids (JSON), so any store holding those videos can replay them."""
    ids = np.asarray(video_ids, dtype=object)
    payload = {
        "format": EPISODE_FILE_FORMAT,
        **meta,
        "way": int(episodes.support.shape[1]),
        "shot": int(episodes.support.shape[2]),
        "query": int(episodes.query.shape[2]),
        "count": len(episodes),
        "support": ids[episodes.support].tolist(),
        "query_ids": ids[episodes.query].tolist(),
    }
    atomic_write_text(Path(path), json.dumps(payload, separators=(",", ":")))
    return Path(path)


def read_episode_file(
    path: str | Path, video_ids: Sequence[str], labels: Sequence[int] | np.ndarray
) -> tuple[Episodes, dict[str, Any]]:
    """Load an episode file and map its ids to rows of ``video_ids`` (with class ``labels``); ids absent
    from ``video_ids`` are an error."""
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(f"episode file {path} does not exist")
    payload = json.loads(path.read_text())
    if payload.get("format") != EPISODE_FILE_FORMAT:
        raise EpisodeError(f"{path} is not an fsar episode file (format {payload.get('format')!r})")
    index = {v: i for i, v in enumerate(video_ids)}
    support_ids = np.asarray(payload["support"], dtype=object)
    query_ids = np.asarray(payload["query_ids"], dtype=object)
    missing = sorted({v for v in np.concatenate([support_ids.ravel(), query_ids.ravel()]) if v not in index})
    if missing:
        raise EpisodeError(
            f"{path}: {len(missing)} video(s) of these episodes are not in the feature store "
            f"(e.g. {missing[:3]}); the episodes were made for another dataset or the store lost videos"
        )
    lookup = np.vectorize(index.__getitem__, otypes=[np.int64])
    support, query = lookup(support_ids), lookup(query_ids)
    meta = {k: v for k, v in payload.items() if k not in ("support", "query_ids")}
    classes = np.asarray(labels, dtype=np.int64)[support[:, :, 0]]
    return Episodes(classes, support, query), meta
