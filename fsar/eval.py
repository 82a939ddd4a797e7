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

from fsar.atomic import atomic_write_text
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


def gather_episodes(
    features: Any, episodes: Episodes
) -> tuple[Any, torch.Tensor, Any, torch.Tensor]:
    """Index per-video tensors into a batch of episodes.

    features ``(N, T, ...)`` (or a tuple of such tensors, indexed alike) → support ``(E, way·shot, T, ...)``,
    support labels ``(E, way·shot)``, query ``(E, way·query, T, ...)``, query labels ``(E, way·query)``;
    labels are episode-local 0..way-1.
    """
    e, way, shot = episodes.support.shape
    query = episodes.query.shape[2]
    s_idx = torch.as_tensor(episodes.support.reshape(e, way * shot))
    q_idx = torch.as_tensor(episodes.query.reshape(e, way * query))
    s_lab = torch.as_tensor(episode_labels(way, shot)).expand(e, -1)
    q_lab = torch.as_tensor(episode_labels(way, query)).expand(e, -1)
    return index_videos(features, s_idx), s_lab, index_videos(features, q_idx), q_lab


def index_videos(encoded: Any, index: torch.Tensor) -> Any:
    """``encoded[index]`` for a tensor, or for each tensor of a tuple (``encode_videos`` may return either);
    a None part of a tuple (one a caller chose not to gather) stays None."""
    if isinstance(encoded, tuple):
        return tuple(None if part is None else part[index] for part in encoded)
    return encoded[index]


def episode_class_text(class_text: torch.Tensor | None, episodes: Episodes) -> torch.Tensor | None:
    """Text embedding of each episode's classes in label order: table ``(n_labels, E)`` → ``(E, way, E_dim)``."""
    if class_text is None:
        return None
    return class_text[torch.as_tensor(episodes.classes)]


def frame_distance_table(encoded: torch.Tensor) -> torch.Tensor:
    """1 − cos between every frame of every video: ``(N, T, D)`` → ``(N, N, T, T)``, entry [i, j, l, m]
    comparing frame l of video i with frame m of video j (one matmul for a whole split)."""
    n, t, d = encoded.shape
    unit = torch.nn.functional.normalize(encoded.reshape(n * t, d), dim=-1, eps=1e-8)
    return (1.0 - unit @ unit.T).view(n, t, n, t).permute(0, 2, 1, 3).contiguous()


EpisodeScorer = Callable[[Episodes], torch.Tensor]


def default_flow(method: Any) -> bool:
    """Whether ``method`` is ``encode_videos`` + ``metric_forward`` (so each video can be encoded once)."""
    from fsar.methods.base import FewShotMethod

    return (isinstance(method, FewShotMethod) and type(method).episode_logits is FewShotMethod.episode_logits
            and type(method).episode_forward is FewShotMethod.episode_forward)


def episode_scorer(method: torch.nn.Module, features: torch.Tensor, way: int, *,
                   class_text: torch.Tensor | None = None, table_limit: int = 12288,
                   pair_limit: int = 8192) -> EpisodeScorer:
    """A function from a batch of episodes to logits ``(E, way·query, way)``, as fast as the method allows.

    A method built from ``encode_videos`` + ``metric_forward`` has every video encoded once here instead of
    once per episode; a frame-distance method (OTAM, Bi-MHM) with at most ``table_limit`` encoded frames
    in the split gets all its frame distances from one table, indexed per episode; a pair-distance method
    (A2M2) on at most ``pair_limit`` videos computes each (query, support) pair once, when an episode first
    needs it. Anything else runs its plain forward on gathered features. All give the same logits. ``class_text`` ``(n_labels, E)``
    holds each split label's class-name embedding, for methods that read text.
    """
    from fsar.methods.base import FrameDistanceMethod, PairDistanceMethod

    if not getattr(method, "uses_text", False):
        class_text = None
    if not default_flow(method):
        def forward(batch: Episodes) -> torch.Tensor:
            support, s_lab, query, _ = gather_episodes(features, batch)
            if class_text is None:  # any nn.Module with the four-argument forward can be scored
                return method(support, s_lab, query, way)
            return method(support, s_lab, query, way, class_text=episode_class_text(class_text, batch))

        return forward
    encoded = method.encode_videos(features)
    n_videos = features.shape[0]
    if isinstance(method, PairDistanceMethod) and n_videos <= pair_limit:
        return pair_table_scorer(method, encoded, n_videos, way, class_text)
    if (isinstance(method, FrameDistanceMethod) and isinstance(encoded, torch.Tensor)
            and encoded.shape[0] * encoded.shape[1] <= table_limit):
        table = frame_distance_table(encoded)

        def from_table(batch: Episodes) -> torch.Tensor:
            e = len(batch)
            s_idx = torch.as_tensor(batch.support.reshape(e, -1))
            q_idx = torch.as_tensor(batch.query.reshape(e, -1))
            s_lab = torch.as_tensor(episode_labels(way, batch.support.shape[2])).expand(e, -1)
            return method.logits_from_distances(table[q_idx[:, :, None], s_idx[:, None, :]], s_lab, way)

        return from_table

    def from_encoded(batch: Episodes) -> torch.Tensor:
        support, s_lab, query, _ = gather_episodes(encoded, batch)
        return method.metric_forward(support, s_lab, query, way, class_text=episode_class_text(class_text, batch))[0]

    return from_encoded


def pair_table_scorer(method: Any, encoded: Any, n_videos: int, way: int,
                      class_text: torch.Tensor | None, *, chunk: int = 4096) -> EpisodeScorer:
    """Scorer of a ``PairDistanceMethod``: an ``(N, N)`` table of pair distances filled on demand, so a
    (query, support) pair shared by many episodes is solved once (5-shot episodes share most pairs)."""
    table = torch.full((n_videos, n_videos), float("nan"))
    known = torch.zeros(n_videos, n_videos, dtype=torch.bool)
    parts = getattr(method, "logit_parts", None)
    # Per episode only the parts logits_from_pairs reads are gathered (A2M2: the video embeddings, not the
    # candidate sets, which the pair table already summarises).
    needed = encoded if parts is None or not isinstance(encoded, tuple) else tuple(
        part if i in parts else None for i, part in enumerate(encoded))

    def fill(q_idx: torch.Tensor, s_idx: torch.Tensor) -> None:
        flat = (q_idx[:, :, None] * n_videos + s_idx[:, None, :]).reshape(-1)
        todo = torch.unique(flat[~known.view(-1)[flat]])
        for start in range(0, len(todo), chunk):
            pairs = todo[start : start + chunk]
            qi, si = pairs // n_videos, pairs % n_videos
            # Each pair as its own one-query, one-support "episode": (P, 1, ...) against (P, 1, ...).
            dist = method.pair_distance(index_videos(encoded, si[:, None]), index_videos(encoded, qi[:, None]))
            table.view(-1)[pairs] = dist.reshape(-1).to(table.dtype)
            known.view(-1)[pairs] = True

    def from_pairs(batch: Episodes) -> torch.Tensor:
        e = len(batch)
        s_idx = torch.as_tensor(batch.support.reshape(e, -1))
        q_idx = torch.as_tensor(batch.query.reshape(e, -1))
        fill(q_idx, s_idx)
        s_lab = torch.as_tensor(episode_labels(way, batch.support.shape[2])).expand(e, -1)
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
    progress: bool = False,
    desc: str = "eval",
) -> np.ndarray:
    """Accuracy of each episode ``(E,)`` in [0, 1], episodes run ``batch_size`` at a time in one forward.

    ``features`` ``(N, T, ...)`` for the split's videos; ``class_text`` ``(n_labels, E)`` or None.
    """
    # A copy: store arrays are read-only views of Parquet buffers, which torch must not alias.
    feats = torch.from_numpy(np.array(features)) if not isinstance(features, torch.Tensor) else features
    feats = feats.float()
    way = episodes.support.shape[1]
    return score_episodes(method, lambda: episode_scorer(method, feats, way, class_text=class_text), episodes,
                          batch_size=batch_size, progress=progress, desc=desc)


@torch.no_grad()
def score_episodes(method: torch.nn.Module, make_scorer: Callable[[], EpisodeScorer], episodes: Episodes, *,
                   batch_size: int, progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Per-episode accuracy ``(E,)`` in [0, 1]: ``method`` in eval mode, the scorer ``make_scorer()`` builds
    (after the mode switch, so encodings use running statistics) run ``batch_size`` episodes at a time."""
    from tqdm.auto import tqdm

    way, query = episodes.support.shape[1], episodes.query.shape[2]
    q_lab = torch.as_tensor(episode_labels(way, query))
    out = np.empty(len(episodes), dtype=np.float64)
    was_training = method.training
    method.eval()
    try:
        score = make_scorer()
        for start in tqdm(range(0, len(episodes), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = episodes[start : start + batch_size]
            logits = score(batch)
            out[start : start + len(batch)] = (logits.argmax(-1).cpu() == q_lab).float().mean(-1).numpy()
    finally:
        method.train(was_training)
    return out


def write_results(records: Sequence[ResultRecord], path: str | Path) -> Path:
    """Write ``results.json`` (a list of records with RESULT_KEYS), atomically."""
    atomic_write_text(Path(path), json.dumps([dataclasses.asdict(r) for r in records], indent=2) + "\n")
    return Path(path)


def read_results(path: str | Path) -> list[ResultRecord]:
    data = json.loads(Path(path).read_text())
    return [ResultRecord(**{k: rec[k] for k in RESULT_KEYS}) for rec in data]


def format_table(records: Sequence[ResultRecord]) -> str:
    """A Markdown table of the records (accuracy ± CI in percent)."""
    lines = [
        "| method | dataset | split | way | shot | episodes | accuracy (%) | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r.method} | {r.dataset} | {r.split} | {r.way} | {r.shot} | {r.episodes} | "
            f"{r.accuracy:.2f} ± {r.ci95:.2f} | {r.seconds:.1f} |"
        )
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
