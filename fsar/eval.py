"""Few-shot evaluation: per-episode accuracy, mean ± 95% confidence interval, the results file.

``results.json`` is a JSON list with one record per evaluated method (DESIGN "Results"); accuracy and
ci95 are percentages, ci95 = 1.96 · std / √N over N episodes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsar.atomic import atomic_path, atomic_write_text
from fsar.data.episodes import Episodes, episode_labels

RESULT_KEYS = ("method", "dataset", "split", "way", "shot", "episodes", "accuracy", "ci95", "seed", "store", "run", "seconds")


@dataclass(frozen=True)
class ResultRecord:
    """One method's score on one fixed set of episodes."""

    method: str  # registered method name (or a run's label)
    dataset: str  # dataset / manifest name
    split: str  # split the episodes were drawn from
    way: int  # classes per episode
    shot: int  # support videos per class
    episodes: int  # number of episodes N
    accuracy: float  # mean accuracy, percent
    ci95: float  # 1.96·std/√N, percent
    seed: int  # episode seed
    store: str  # feature store evaluated on
    run: str | None  # training run folder, None for an untrained method
    seconds: float  # wall time of the evaluation


def accuracy_ci(per_episode: np.ndarray) -> tuple[float, float]:
    """Mean accuracy and the 95% CI half-width, both in percent, from per-episode accuracies in [0, 1]."""
    acc = np.asarray(per_episode, dtype=np.float64)
    if acc.size == 0:
        raise ValueError("no episodes to summarise")
    std = acc.std(ddof=1) if acc.size > 1 else 0.0
    return float(100.0 * acc.mean()), float(100.0 * 1.96 * std / math.sqrt(acc.size))


def paired_difference(accuracies: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean per-episode accuracy difference ``accuracies − reference`` and its paired 95% CI half-width, both
    in percentage points: two methods scored on the very same episodes differ by less noise than their own
    CIs suggest, because the episodes' difficulty is shared."""
    a, b = np.asarray(accuracies, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs the same episodes: {a.shape} vs {b.shape} accuracies")
    return accuracy_ci(a - b)


PER_EPISODE_FILE = "per_episode.parquet"


def write_per_episode(path: str | Path, accuracies: dict[tuple[str, int], np.ndarray]) -> Path:
    """Per-episode accuracies beside ``results.json``, one row per (method, shot, episode), so that any statistic
    can be recomputed. Rows of a (method, shot) already in the file are replaced; others are kept (an
    evaluation per shot writes into the same folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    kept = {k: v for k, v in read_per_episode(path).items() if k not in accuracies} if path.is_file() else {}
    merged = kept | accuracies
    methods = [m for (m, _), acc in merged.items() for _ in range(len(acc))]
    shots = np.concatenate([np.full(len(acc), s, dtype=np.int64) for (_, s), acc in merged.items()]) if merged else []
    episodes = np.concatenate([np.arange(len(acc), dtype=np.int64) for acc in merged.values()]) if merged else []
    values = np.concatenate([np.asarray(acc, dtype=np.float64) for acc in merged.values()]) if merged else []
    table = pa.table({"method": pa.array(methods, pa.string()), "shot": pa.array(shots, pa.int64()),
                      "episode": pa.array(episodes, pa.int64()), "accuracy": pa.array(values, pa.float64())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_per_episode(path: str | Path) -> dict[tuple[str, int], np.ndarray]:
    """``(method, shot)`` → per-episode accuracies ``(E,)`` in [0, 1], in episode order."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    methods = np.asarray(table["method"].to_pylist(), dtype=object)
    shots, episodes = table["shot"].to_numpy(), table["episode"].to_numpy()
    values = table["accuracy"].to_numpy()
    out = {}
    for key in dict.fromkeys(zip(methods.tolist(), shots.tolist(), strict=True)):
        rows = (methods == key[0]) & (shots == key[1])
        out[key] = values[rows][np.argsort(episodes[rows])]
    return out


def gather_episodes(
    features: Any, episodes: Episodes
) -> tuple[Any, torch.Tensor, Any, torch.Tensor]:
    """Index per-video tensors into a batch of episodes, on the features' device.

    features ``(N, T, ...)`` (or a tuple of such tensors, indexed alike) → support ``(E, way·shot, T, ...)``,
    support labels ``(E, way·shot)``, query ``(E, way·query, T, ...)``, query labels ``(E, way·query)``;
    labels are episode-local 0..way-1.
    """
    device = device_of(features)
    s_idx, q_idx = episode_indices(episodes, device)
    s_lab, q_lab = episode_label_tensors(episodes, device)
    return index_videos(features, s_idx), s_lab, index_videos(features, q_idx), q_lab


def device_of(encoded: Any) -> torch.device:
    """The device of a tensor, or of the first tensor of a tuple (``encode_videos`` may return either)."""
    if isinstance(encoded, tuple):
        return next(part.device for part in encoded if part is not None)
    return encoded.device


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array (indices, labels) as a tensor on ``device``. Bound for CUDA it goes through pinned
    memory: a copy from pageable memory would first wait for everything queued on the device."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def episode_indices(episodes: Episodes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Split rows of each episode's support ``(E, way·shot)`` and query ``(E, way·query)`` videos, on ``device``."""
    e = len(episodes)
    return host_to_device(episodes.support.reshape(e, -1), device), host_to_device(episodes.query.reshape(e, -1), device)


def episode_label_tensors(episodes: Episodes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode-local support ``(E, way·shot)`` and query ``(E, way·query)`` labels, on ``device``."""
    e, way, shot = episodes.support.shape
    query = episodes.query.shape[2]
    return (host_to_device(episode_labels(way, shot), device).expand(e, -1),
            host_to_device(episode_labels(way, query), device).expand(e, -1))


def index_videos(encoded: Any, index: torch.Tensor) -> Any:
    """``encoded[index]`` for a tensor, or for each tensor of a tuple (``encode_videos`` may return either);
    a None part of a tuple (one a caller chose not to gather) stays None."""
    if isinstance(encoded, tuple):
        return tuple(None if part is None else part[index] for part in encoded)
    return encoded[index]


def episode_class_text(class_text: torch.Tensor | None, episodes: Episodes) -> torch.Tensor | None:
    """Text embedding of each episode's classes in label order: table ``(n_labels, E)`` → ``(E, way, E_dim)``,
    on the table's device."""
    if class_text is None:
        return None
    return class_text[host_to_device(episodes.classes, class_text.device)]


def frame_distance_table(encoded: torch.Tensor) -> torch.Tensor:
    """1 − cos between every frame of every video: ``(N, T, D)`` → ``(N, N, T, T)``, entry [i, j, l, m]
    comparing frame l of video i with frame m of video j (one matmul for a whole split), in fp32."""
    n, t, d = encoded.shape
    unit = torch.nn.functional.normalize(encoded.reshape(n * t, d).float(), dim=-1, eps=1e-8)
    return (1.0 - unit @ unit.T).view(n, t, n, t).permute(0, 2, 1, 3).contiguous()


def to_device(features: np.ndarray | torch.Tensor, device: torch.device, *, dtype: torch.dtype | None = None
              ) -> torch.Tensor:
    """Host (or device) features onto ``device``, cast there (fp16 travels as fp16: half the bytes).

    A host tensor bound for CUDA is pinned first, so the copy is asynchronous (``non_blocking``) instead of
    a synchronous copy from pageable memory. A numpy array is copied once: store arrays are read-only
    views of Parquet buffers, which torch must not alias.
    """
    tensor = torch.from_numpy(np.array(features)) if isinstance(features, np.ndarray) else features
    if tensor.device != device:
        if tensor.device.type == "cpu" and device.type == "cuda":
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=True)
    return tensor if dtype is None else tensor.to(dtype)


def encode_features(method: Any, features: np.ndarray | torch.Tensor, *, device: torch.device,
                 chunk: int = 1024) -> Any:
    """``method.encode_videos`` of every video of a split, ``chunk`` videos at a time: features ``(N, T, ...)``
    (fp16 on the host, or already on ``device``) → encodings ``(N, ...)`` on ``device``.

    Only one chunk of the split is ever in fp32 at a time, so memory follows the encodings, not a float32
    copy of the whole split.
    """
    parts = [method.encode_videos(to_device(features[i : i + chunk], device, dtype=torch.float32))
             for i in range(0, len(features), chunk)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
    return torch.cat(parts)


EpisodeScorer = Callable[[Episodes], torch.Tensor]


def default_flow(method: Any) -> bool:
    """Whether ``method`` is ``encode_videos`` + ``metric_forward`` (so each video can be encoded once)."""
    from fsar.methods.base import FewShotMethod

    return (isinstance(method, FewShotMethod) and type(method).episode_logits is FewShotMethod.episode_logits
            and type(method).episode_forward is FewShotMethod.episode_forward)


def episode_scorer(method: torch.nn.Module, features: np.ndarray | torch.Tensor, way: int, *,
                   class_text: torch.Tensor | None = None, device: torch.device | None = None,
                   table_limit: int = 12288, pair_limit: int = 8192) -> EpisodeScorer:
    """A function from a batch of episodes to logits ``(E, way·query, way)`` on ``device``, as fast as the
    method allows.

    ``features`` ``(N, T, ...)`` may stay fp16 on the host: they are cast per chunk on ``device`` (default:
    the features' own device). A method built from ``encode_videos`` + ``metric_forward`` has every video
    encoded once here instead of once per episode; a frame-distance method (OTAM, Bi-MHM) with at most
    ``table_limit`` encoded frames in the split gets all its frame distances from one table, indexed per
    episode; a pair-distance method (A2M2) on at most ``pair_limit`` videos computes each (query, support)
    pair once, when an episode first needs it. Anything else runs its plain forward on gathered features.
    All give the same logits. ``class_text`` ``(n_labels, E)`` holds each split label's class-name
    embedding, for methods that read text. Every tensor made here lives on ``device``.
    """
    from fsar.methods.base import PairDistanceMethod

    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    if not getattr(method, "uses_text", False):
        class_text = None
    if class_text is not None:
        class_text = class_text.to(device)
    if not default_flow(method):
        source = torch.from_numpy(np.array(features)) if isinstance(features, np.ndarray) else features

        def forward(batch: Episodes) -> torch.Tensor:
            s_idx, q_idx = episode_indices(batch, source.device)
            s_lab, _ = episode_label_tensors(batch, device)
            support = to_device(source[s_idx], device, dtype=torch.float32)
            query = to_device(source[q_idx], device, dtype=torch.float32)
            if class_text is None:  # any nn.Module with the four-argument forward can be scored
                return method(support, s_lab, query, way)
            return method(support, s_lab, query, way, class_text=episode_class_text(class_text, batch))

        return forward
    encoded = encode_features(method, features, device=device)
    n_videos = len(features)
    if isinstance(method, PairDistanceMethod) and n_videos <= pair_limit:
        return pair_table_scorer(method, encoded, n_videos, way, class_text)
    if getattr(method, "frame_table", False):
        frames = method.table_frames(encoded)
        if frames.shape[0] * frames.shape[1] <= table_limit:
            table = frame_distance_table(frames)

            def from_table(batch: Episodes) -> torch.Tensor:
                s_idx, q_idx = episode_indices(batch, device)
                s_lab, _ = episode_label_tensors(batch, device)
                return method.logits_from_table(table[q_idx[:, :, None], s_idx[:, None, :]], s_lab, way)

            return from_table

    def from_encoded(batch: Episodes) -> torch.Tensor:
        support, s_lab, query, _ = gather_episodes(encoded, batch)
        return method.metric_forward(support, s_lab, query, way, class_text=episode_class_text(class_text, batch))[0]

    return from_encoded


def pair_table_scorer(method: Any, encoded: Any, n_videos: int, way: int,
                      class_text: torch.Tensor | None, *, chunk: int = 4096) -> EpisodeScorer:
    """Scorer of a ``PairDistanceMethod``: an ``(N, N)`` table of pair distances filled on demand, so a
    (query, support) pair shared by many episodes is solved once (5-shot episodes share most pairs).

    The table lives on the encodings' device; which pairs are known is kept on the host, where the episode
    indices are, so deciding what to solve never waits for the device."""
    device = device_of(encoded)
    table = torch.full((n_videos, n_videos), float("nan"), device=device)
    known = np.zeros(n_videos * n_videos, dtype=bool)
    parts = getattr(method, "logit_parts", None)
    # Per episode only the parts logits_from_pairs reads are gathered (A2M2: the video embeddings, not the
    # candidate sets, which the pair table already summarises).
    needed = encoded if parts is None or not isinstance(encoded, tuple) else tuple(
        part if i in parts else None for i, part in enumerate(encoded))

    def fill(batch: Episodes) -> None:
        e = len(batch)
        flat = (batch.query.reshape(e, -1)[:, :, None] * n_videos + batch.support.reshape(e, -1)[:, None, :]).ravel()
        todo = np.unique(flat[~known[flat]])
        for start in range(0, len(todo), chunk):
            pairs = torch.as_tensor(todo[start : start + chunk], device=device)
            qi, si = pairs // n_videos, pairs % n_videos
            # Each pair as its own one-query, one-support "episode": (P, 1, ...) against (P, 1, ...).
            dist = method.pair_distance(index_videos(encoded, si[:, None]), index_videos(encoded, qi[:, None]))
            table.view(-1)[pairs] = dist.reshape(-1).to(table.dtype)
        known[todo] = True

    def from_pairs(batch: Episodes) -> torch.Tensor:
        fill(batch)
        s_idx, q_idx = episode_indices(batch, device)
        s_lab, _ = episode_label_tensors(batch, device)
        distance = table[q_idx[:, :, None], s_idx[:, None, :]]
        return method.logits_from_pairs(distance, index_videos(needed, s_idx), s_lab, index_videos(needed, q_idx), way,
                                        class_text=episode_class_text(class_text, batch))

    return from_pairs


@torch.no_grad()
def episode_accuracies(
    method: torch.nn.Module,
    features: np.ndarray | torch.Tensor,
    episodes: Episodes,
    *,
    class_text: torch.Tensor | None = None,
    batch_size: int = 1000,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> np.ndarray:
    """Accuracy of each episode ``(E,)`` in [0, 1], episodes run ``batch_size`` at a time in one forward.

    ``features`` ``(N, T, ...)`` for the split's videos (fp16 on the host is fine: they are cast per chunk
    on the device); ``class_text`` ``(n_labels, E)`` or None; ``device`` where the method runs (default:
    the features' device).
    """
    way = episodes.support.shape[1]
    return score_episodes(method, lambda: episode_scorer(method, features, way, class_text=class_text, device=device),
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


def write_results(records: Sequence[ResultRecord], path: str | Path) -> Path:
    """Write ``results.json`` (a list of records with RESULT_KEYS), atomically."""
    atomic_write_text(Path(path), json.dumps([dataclasses.asdict(r) for r in records], indent=2) + "\n")
    return Path(path)


def read_results(path: str | Path) -> list[ResultRecord]:
    data = json.loads(Path(path).read_text())
    return [ResultRecord(**{k: rec[k] for k in RESULT_KEYS}) for rec in data]


def format_table(records: Sequence[ResultRecord], *, per_episode: dict[tuple[str, int], np.ndarray] | None = None,
                 reference: str | None = None) -> str:
    """A Markdown table of the records (accuracy ± CI in percent).

    With ``per_episode`` ((method, shot) → per-episode accuracies), a column gives each method's paired
    difference to ``reference`` (default: the first method) on the same shot's episodes ± its paired 95%
    CI, in points; bold where the CI excludes 0."""
    paired = per_episode is not None and bool(records)
    reference = reference or (records[0].method if records else None)
    head = "| method | dataset | split | way | shot | episodes | accuracy (%) |"
    head += f" Δ vs {reference} (paired) |" if paired else ""
    lines = [head + " seconds |", "|---|---|---|---:|---:|---:|---:|" + ("---:|" if paired else "") + "---:|"]
    for r in records:
        cell = ""
        if paired:
            mine, ref = per_episode.get((r.method, r.shot)), per_episode.get((reference, r.shot))  # type: ignore[union-attr]
            if r.method == reference:
                cell = " — |"
            elif mine is None or ref is None or len(mine) != len(ref):
                cell = " |"
            else:
                diff, ci = paired_difference(mine, ref)
                mark = "**" if abs(diff) > ci else ""
                cell = f" {mark}{diff:+.2f} ± {ci:.2f}{mark} |"
        lines.append(
            f"| {r.method} | {r.dataset} | {r.split} | {r.way} | {r.shot} | {r.episodes} | "
            f"{r.accuracy:.2f} ± {r.ci95:.2f} |{cell} {r.seconds:.1f} |"
        )
    if paired:
        lines.append(f"\nΔ: mean per-episode accuracy difference to {reference} on the same episodes ± paired 95% "
                     "CI (1.96·std/√N of the differences), in points; bold where it excludes 0.")
    return "\n".join(lines)


def plot_results(records: Sequence[ResultRecord], path: str | Path) -> Path:
    """Bar chart of accuracy with 95% CI whiskers, one group per (way, shot) setting; chance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(r.way, r.shot) for r in records})
    methods = list(dict.fromkeys(r.method for r in records))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 * len(methods) * len(settings) + 4), 4))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for j, setting in enumerate(settings):
            match = [r for r in records if r.method == method and (r.way, r.shot) == setting]
            if match:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(match[0].accuracy)
                errs.append(match[0].ci95)
        ax.bar(xs, ys, width=width * 0.95, yerr=errs, capsize=3, label=method)
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y + 1.0, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(settings)), [f"{w}-way {s}-shot" for w, s in settings])
    for j, (way, _) in enumerate(settings):
        ax.hlines(100.0 / way, j - 0.45, j + 0.45, colors="grey", linestyles="dotted")
    ax.set_ylabel("accuracy (%) ± 95% CI")
    ax.set_ylim(0, 105)
    title = {(r.dataset, r.split) for r in records}
    ax.set_title(", ".join(f"{d} / {s}" for d, s in sorted(title)) + f" — {records[0].episodes} episodes")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
