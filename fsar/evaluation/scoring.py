"""Scoring fixed episodes: every video of a split encoded once, then each batch of episodes scored from the
encodings on the split's device — one path for cached features and decoded pixels.

A split to score is anything with ``encode(method, device) -> Encoding`` (all its videos, in order): a
``FeatureSplit`` (store features, here) or a decoded-pixels split (``fsar.sources.pixels``). The scorer
then takes the fast path the method **declares**: ``pair_table`` methods (OTAM, Bi-MHM, A2M2, I2ST) get an
``(N, N)`` table of pair distances filled on demand, each (query, support) pair solved once however many
episodes share it, and so do ``one_shot_pair_table`` methods (TRX) on 1-shot episodes; others gather their
encodings per episode and run their head. Every tensor made here
lives on the scoring device: index and label tensors come through pinned memory, and nothing waits for
the device until the caller reads the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fsar.data.episodes import Episodes, episode_labels
from fsar.devices import episode_class_text, episode_indices, episode_label_tensors, host_to_device, to_device
from fsar.methods.base import Encoding, concat_encodings, index_encoding, keep_fields

EpisodeScorer = Callable[[Episodes], torch.Tensor]


class EncodableSplit(Protocol):
    """The videos of a split, in order, that can encode themselves for a method on a device."""

    def __len__(self) -> int: ...

    def encode(self, method: Any, device: torch.device) -> Encoding: ...


@dataclass
class FeatureSplit:
    """A split's cached features ``(N, T, ...)`` (fp16 on the host, or already on a device), encoded in chunks
    of ``chunk`` videos: only one chunk is ever in fp32, so memory follows the encodings, not a float32
    copy of the split."""

    features: np.ndarray | torch.Tensor
    chunk: int = 256  # 256 videos of 8×512 fp32: 4 MB at a time beside the fp16 split

    def __len__(self) -> int:
        return len(self.features)

    def encode(self, method: Any, device: torch.device) -> Encoding:
        return concat_encodings([method.encode_for_scoring(to_device(self.features[i : i + self.chunk], device, dtype=torch.float32))
                                 for i in range(0, len(self.features), self.chunk)])


def as_split(data: EncodableSplit | np.ndarray | torch.Tensor) -> EncodableSplit:
    """Cached features ``(N, T, ...)`` as a ``FeatureSplit``; a split passes through."""
    return FeatureSplit(data) if isinstance(data, (np.ndarray, torch.Tensor)) else data


def episode_scorer(method: Any, encoded: Encoding, way: int, *, class_text: torch.Tensor | None = None,
                   pair_limit: int = 8192) -> EpisodeScorer:
    """A function from a batch of episodes to logits ``(E, way·query, way)``, from a split's encodings (every
    video encoded once), on their device. A ``pair_table`` method on at most ``pair_limit`` videos reads an
    on-demand table of pair distances (a ``one_shot_pair_table`` method too, in 1-shot batches); any other
    runs its head on the gathered encodings. ``class_text``
    ``(n_labels, E)``: each split label's class-name embedding, for methods that read text."""
    device = encoded[0].device
    if not method.uses_text:
        class_text = None
    if class_text is not None:
        class_text = class_text.to(device)
    n_videos = len(encoded[0])
    if method.pair_table and n_videos <= pair_limit:
        return pair_table_scorer(method, encoded, n_videos, way, class_text)

    def from_encoded(batch: Episodes) -> torch.Tensor:
        s_idx, q_idx = episode_indices(batch, device)
        s_lab, _ = episode_label_tensors(batch, device)
        return method.head(index_encoding(encoded, s_idx), s_lab, index_encoding(encoded, q_idx), way,
                           class_text=episode_class_text(class_text, batch)).logits

    if not (method.one_shot_pair_table and n_videos <= pair_limit):
        return from_encoded
    tables: list[EpisodeScorer] = []  # the table is made at the first 1-shot batch: k-shot ones never need it

    def by_shots(batch: Episodes) -> torch.Tensor:
        if batch.support.shape[2] != 1:
            return from_encoded(batch)
        if not tables:
            tables.append(pair_table_scorer(method, encoded, n_videos, way, class_text))
        return tables[0](batch)

    return by_shots


def pair_table_scorer(method: Any, encoded: Encoding, n_videos: int, way: int,
                      class_text: torch.Tensor | None, *, chunk: int = 4096) -> EpisodeScorer:
    """Scorer of a ``pair_table`` method: an ``(N, N)`` table of pair distances filled on demand, so a
    (query, support) pair shared by many episodes is solved once (5-shot episodes share most pairs).

    The table lives on the encodings' device; which pairs are known is kept on the host, where the episode
    indices are, so deciding what to solve never waits for the device."""
    device = encoded[0].device
    table = torch.full((n_videos, n_videos), float("nan"), device=device)
    known = np.zeros(n_videos * n_videos, dtype=bool)
    # Per episode only the fields logits_from_pairs reads are gathered (A2M2: the video embeddings, not the
    # candidate sets, which the pair table already summarises).
    needed = keep_fields(encoded, method.pair_table_reads)
    width = method.pair_table_row
    support_side = encoded if method.pair_table_support_reads is None else keep_fields(
        encoded, method.pair_table_support_reads)

    def fill(batch: Episodes) -> None:
        e = len(batch)
        flat = (batch.query.reshape(e, -1)[:, :, None] * n_videos + batch.support.reshape(e, -1)[:, None, :]).ravel()
        todo = np.unique(flat[~known[flat]])
        for start in range(0, len(todo), chunk):
            pairs = todo[start : start + chunk]
            queries, supports, slots = pair_rows(pairs // n_videos, pairs % n_videos, width)
            # Each row a one-query "episode" of `width` supports: (R, width, ...) against (R, 1, ...).
            dist = method.pair_distance(index_encoding(support_side, host_to_device(supports, device)),
                                        index_encoding(encoded, host_to_device(queries[:, None], device)))
            flat = dist.reshape(-1) if width == 1 else dist.reshape(-1)[host_to_device(slots, device)]
            table.view(-1)[host_to_device(pairs, device)] = flat.to(table.dtype)
        known[todo] = True

    def from_pairs(batch: Episodes) -> torch.Tensor:
        fill(batch)
        s_idx, q_idx = episode_indices(batch, device)
        s_lab, _ = episode_label_tensors(batch, device)
        distance = table[q_idx[:, :, None], s_idx[:, None, :]]
        return method.logits_from_pairs(distance, index_encoding(needed, s_idx), s_lab, index_encoding(needed, q_idx),
                                        way, class_text=episode_class_text(class_text, batch))

    return from_pairs


def pair_rows(query: np.ndarray, support: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(P,)`` sorted by query → rows of at most ``width`` supports of one query: each row's query
    ``(R,)``, its supports ``(R, width)`` (a short row repeats its first support) and each pair's slot in the
    flat ``(R·width,)`` rows. A method whose query encoding is costly to gather reads it once per row."""
    if width == 1:
        return query, support[:, None], np.arange(len(query))
    index = np.arange(len(query))
    first = np.r_[True, query[1:] != query[:-1]]  # each query's first pair
    rank = index - np.maximum.accumulate(np.where(first, index, 0))  # place among its query's pairs
    opens = rank % width == 0  # a pair that opens a row
    slots = (np.cumsum(opens) - 1) * width + rank % width
    supports = np.repeat(support[opens], width)
    supports[slots] = support
    return query[opens], supports.reshape(-1, width), slots


@torch.no_grad()
def episode_accuracies(method: Any, split: EncodableSplit | np.ndarray | torch.Tensor, episodes: Episodes, *,
                       class_text: torch.Tensor | None = None, batch_size: int = 1000, device: torch.device | None = None,
                       progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Accuracy of each episode ``(E,)`` in [0, 1]: ``split`` (or cached features ``(N, T, ...)``, fp16 on the
    host is fine) encoded once on ``device`` (default: the features' device, else the CPU), then
    ``batch_size`` episodes at a time."""
    split = as_split(split)
    if device is None:
        features = getattr(split, "features", None)
        device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    way = episodes.support.shape[1]
    return score_episodes(method, lambda: episode_scorer(method, split.encode(method, device), way,
                                                         class_text=class_text),
                          episodes, batch_size=batch_size, progress=progress, desc=desc)


@torch.no_grad()
def episode_correct(method: torch.nn.Module, make_scorer: Callable[[], EpisodeScorer], episodes: Episodes, *,
                    batch_size: int, progress: bool = False, desc: str = "eval") -> torch.Tensor:
    """Per-episode accuracy ``(E,)`` in [0, 1] on the scorer's device: ``method`` in eval mode, the scorer
    ``make_scorer()`` builds (after the mode switch, so encodings use running statistics) run ``batch_size``
    episodes at a time. Nothing waits for the device until the caller reads the result."""
    from tqdm.auto import tqdm

    way, query = episodes.support.shape[1], episodes.query.shape[2]
    labels = torch.as_tensor(episode_labels(way, query))
    parts = []
    was_training = method.training
    method.eval()
    try:
        score = make_scorer()
        for start in tqdm(range(0, len(episodes), batch_size), desc=desc, unit="batch", disable=not progress):
            logits = score(episodes[start : start + batch_size])
            if labels.device != logits.device:
                labels = labels.to(logits.device)
            parts.append((logits.argmax(-1) == labels).float().mean(-1))
    finally:
        method.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0)


def score_episodes(method: torch.nn.Module, make_scorer: Callable[[], EpisodeScorer], episodes: Episodes, *,
                   batch_size: int, progress: bool = False, desc: str = "eval") -> np.ndarray:
    """:func:`episode_correct` as a float64 numpy array on the host."""
    correct = episode_correct(method, make_scorer, episodes, batch_size=batch_size, progress=progress, desc=desc)
    return correct.cpu().numpy().astype(np.float64)


def gather_episodes(features: torch.Tensor, episodes: Episodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """Per-video tensors ``(N, T, ...)`` as a batch of episodes on their device: support ``(E, way·shot, T, ...)``,
    support labels ``(E, way·shot)``, query ``(E, way·query, T, ...)``, query labels ``(E, way·query)``."""
    s_idx, q_idx = episode_indices(episodes, features.device)
    s_lab, q_lab = episode_label_tensors(episodes, features.device)
    return features[s_idx], s_lab, features[q_idx], q_lab
