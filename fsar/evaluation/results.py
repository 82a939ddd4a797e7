"""Few-shot results: per-episode accuracy summaries (mean ± 95% CI, paired differences) and the files.

``results.json`` is a JSON list with one record per evaluated method (DESIGN "Results"); accuracy and
ci95 are percentages, ci95 = 1.96 · std / √N over N episodes. ``per_episode.parquet`` beside it keeps
every episode's accuracy, so that any statistic can be recomputed; ``results.md`` and ``results.png``
are the table and the plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsar.atomic import atomic_path, atomic_write_text

RESULT_KEYS = ("method", "dataset", "split", "way", "shot", "episodes", "accuracy", "ci95", "seed", "store", "run", "seconds",
               "view", "train_store", "train_dataset", "configuration")


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
    view: str = ""  # features the method read: pooled, grid, patches (a store), or pixels (a manifest)
    train_store: str | None = None  # a trained run: the store (or manifest) it was trained on
    train_dataset: str | None = None  # a trained run: that data's dataset name (differs from dataset: cross-dataset)
    configuration: str = ""  # the method's named configuration (paper, fsar, ...), "" for a method without any


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


def format_difference(diff: float, ci: float) -> str:
    """A paired difference as a table cell, in points: ``+1.23 ± 0.45``, bold where its CI excludes 0."""
    mark = "**" if abs(diff) > ci else ""
    return f"{mark}{diff:+.2f} ± {ci:.2f}{mark}"


def paired_cell(accuracies: np.ndarray | None, reference: np.ndarray | None, *, is_reference: bool = False) -> str:
    """The table cell of a paired difference of per-episode accuracies to the reference's on the same episodes:
    ``—`` for the reference itself, empty when either side is missing or they were scored on other episodes."""
    if is_reference:
        return "—"
    if accuracies is None or reference is None or len(accuracies) != len(reference):
        return ""
    return format_difference(*paired_difference(accuracies, reference))


PAIRED_NOTE = ("Δ: mean per-episode accuracy difference to {reference} on the same episodes ± paired 95% CI "
               "(1.96·std/√N of the differences), in points; bold where it excludes 0.")

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


def write_results(records: Sequence[ResultRecord], path: str | Path) -> Path:
    """Write ``results.json`` (a list of records with RESULT_KEYS), atomically."""
    atomic_write_text(Path(path), json.dumps([dataclasses.asdict(r) for r in records], indent=2) + "\n")
    return Path(path)


def read_results(path: str | Path) -> list[ResultRecord]:
    data = json.loads(Path(path).read_text())
    return [ResultRecord(**{k: rec[k] for k in RESULT_KEYS if k in rec}) for rec in data]  # older files lack the last keys


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
            cell = " " + paired_cell(per_episode.get((r.method, r.shot)), per_episode.get((reference, r.shot)),  # type: ignore[union-attr]
                                     is_reference=r.method == reference)
            cell = cell.rstrip() + " |"
        lines.append(
            f"| {r.method} | {r.dataset} | {r.split} | {r.way} | {r.shot} | {r.episodes} | "
            f"{r.accuracy:.2f} ± {r.ci95:.2f} |{cell} {r.seconds:.1f} |"
        )
    if paired:
        lines.append("\n" + PAIRED_NOTE.format(reference=reference))
    return "\n".join(lines)


def shot_table(records: Sequence[ResultRecord], *, per_episode: dict[tuple[str, int], np.ndarray] | None = None,
               reference: str | None = None) -> str:
    """The table papers print: one row per method, one column per shot (accuracy ± CI, %), and with
    ``per_episode`` the paired difference to ``reference`` (default: the first method) at each shot."""
    shots = sorted({r.shot for r in records})
    methods = list(dict.fromkeys(r.method for r in records))
    reference = reference or (methods[0] if methods else None)
    by_key = {(r.method, r.shot): r for r in records}
    way = records[0].way if records else 5
    head = "| method | " + " | ".join(f"{way}-way {s}-shot (%)" for s in shots) + " |"
    head += "".join(f" Δ {s}-shot vs {reference} |" for s in shots) if per_episode is not None else ""
    lines = [head, "|---|" + "---:|" * (len(shots) * (2 if per_episode is not None else 1))]
    for m in methods:
        cells = [f"{by_key[(m, s)].accuracy:.2f} ± {by_key[(m, s)].ci95:.2f}" if (m, s) in by_key else "" for s in shots]
        if per_episode is not None:
            cells += [paired_cell(per_episode.get((m, s)), per_episode.get((reference, s)),  # type: ignore[arg-type]
                                  is_reference=m == reference) for s in shots]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
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
