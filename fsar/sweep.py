"""Sweep results, without Ray: one record per trial, the results table (CSV and Markdown), the plot of
validation accuracy against each swept knob, and the pick of the best trial.

``pipelines/tune.py`` builds the records from what each trial reported; everything here reads only
those records and the search space, so a finished sweep's tables can be redrawn without a cluster.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fsar import storage
from fsar.search_space import SearchSpace
from fsar.storage import Location

Status = Literal["finished", "stopped", "error", "incomplete"]


@dataclass(frozen=True)
class TrialRecord:
    """How one trial went."""

    trial_id: str  # Ray Tune trial id (also its folder under <out>/trials)
    status: Status  # finished all steps | stopped early by ASHA | error | incomplete (sweep interrupted)
    values: dict[str, Any]  # the swept names' values drawn for this trial
    steps: int  # optimiser steps the trial ran
    val_accuracy: float  # validation accuracy (%) at its last validation; nan before the first
    best_val_accuracy: float  # best validation accuracy (%) over its validations; nan before the first
    best_step: int  # step of that best validation (0 before the first)
    mlflow_run_id: str | None  # the trial's MLflow child run


def record_from_metrics(trial_id: str, values: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]], *,
                        status: Status, mlflow_run_id: str | None) -> TrialRecord:
    """A record from the metrics a trial reported at each validation (``train_worker``'s dicts)."""
    validated = [m for m in metrics if "val_accuracy" in m]
    if not validated:
        return TrialRecord(trial_id, status, dict(values), int(metrics[-1]["step"]) if metrics else 0,
                           math.nan, math.nan, 0, mlflow_run_id)
    best = max(validated, key=lambda m: m["val_accuracy"])  # first of equals: the earliest step
    return TrialRecord(trial_id, status, dict(values), int(validated[-1]["step"]),
                       float(validated[-1]["val_accuracy"]), float(best["val_accuracy"]), int(best["step"]),
                       mlflow_run_id)


def best_trial(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial with the highest best validation accuracy among those that validated at least once
    (early-stopped trials included: their best checkpoint is as real as a finished trial's); ties go to
    the trial that ran more steps, then the earlier id."""
    scored = [r for r in records if r.status != "error" and not math.isnan(r.best_val_accuracy)]
    if not scored:
        return None
    return min(scored, key=lambda r: (-r.best_val_accuracy, -r.steps, r.trial_id))


def value_label(value: Any) -> str:
    """Short text for a knob value: ``0.003``, ``[1, 2, 4]``, ``True``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_label(v) for v in value) + "]"
    return str(value)


def ranked(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Best validation accuracy first; trials that never validated last."""
    return sorted(records, key=lambda r: (math.isnan(r.best_val_accuracy), -_or(r.best_val_accuracy, 0.0), r.trial_id))


def _or(x: float, default: float) -> float:
    return default if math.isnan(x) else x


def write_trials_csv(records: Sequence[TrialRecord], space: SearchSpace, path: str | Path) -> Location:
    """``trials.csv``: one row per trial, best first; list values as JSON (``[1, 2]``)."""
    names = list(space.space)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial_id", "status", *names, "steps", "val_accuracy", "best_val_accuracy", "best_step",
                     "mlflow_run_id"])
    for r in ranked(records):
        cells = [json.dumps(r.values.get(n)) if isinstance(r.values.get(n), (list, tuple)) else r.values.get(n)
                 for n in names]
        writer.writerow([r.trial_id, r.status, *cells, r.steps, f"{r.val_accuracy:.4f}",
                         f"{r.best_val_accuracy:.4f}", r.best_step, r.mlflow_run_id or ""])
    storage.write_text(path, buffer.getvalue())
    return storage.as_location(path)


def format_trials(records: Sequence[TrialRecord], space: SearchSpace) -> str:
    """A Markdown table of the trials, best first (the best one in bold), with the swept values."""
    names = list(space.space)
    best = best_trial(records)
    header = ["trial", "status", *names, "steps", "best val acc (%)", "at step", "last val acc (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in ranked(records):
        cells = [r.trial_id, r.status, *(value_label(r.values.get(n)) for n in names), str(r.steps),
                 "—" if math.isnan(r.best_val_accuracy) else f"{r.best_val_accuracy:.2f}",
                 str(r.best_step) if r.best_step else "—",
                 "—" if math.isnan(r.val_accuracy) else f"{r.val_accuracy:.2f}"]
        if best is not None and r.trial_id == best.trial_id:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_md(records: Sequence[TrialRecord], space: SearchSpace, path: str | Path) -> Location:
    """``results.md``: what was swept, the table, and the best trial."""
    best = best_trial(records)
    done = sum(r.status in ("finished", "stopped") for r in records)
    stopped = sum(r.status == "stopped" for r in records)
    text = [f"# Sweep: {space.method}, {space.metric} maximised", "",
            "Swept: " + ", ".join(f"`{n}` {d.describe()}" for n, d in space.space.items()), "",
            f"{len(records)} trials: {done} done ({stopped} stopped early by ASHA), "
            f"{sum(r.status == 'error' for r in records)} failed, "
            f"{sum(r.status == 'incomplete' for r in records)} incomplete.", "", format_trials(records, space), ""]
    if best is not None:
        text += [f"Best: trial {best.trial_id}, {best.best_val_accuracy:.2f}% validation accuracy at step "
                 f"{best.best_step} with " + ", ".join(f"{k}={value_label(v)}" for k, v in best.values.items()), ""]
    storage.write_text(path, "\n".join(text))
    return storage.as_location(path)


def plot_sweep(records: Sequence[TrialRecord], space: SearchSpace, path: str | Path, *,
               chance: float | None = None) -> Location:
    """Best validation accuracy of each trial against each swept knob, one panel per knob: ranges on a
    (log) value axis, choices as categories; early-stopped trials hollow, the best trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(space.space)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    scored = [r for r in records if not math.isnan(r.best_val_accuracy)]
    best = best_trial(records)
    for ax, name in zip(axes.flat, names, strict=False):
        dist = space.space[name]
        if dist.kind == "choice":
            labels = [value_label(v) for v in dist.values]

            def x_of(value: Any, trial_id: str = "", labels: list[str] = labels) -> float:
                # Trials sharing a category are spread a little (fixed per trial) so none hides another.
                jitter = (sum(map(ord, trial_id)) % 7 - 3) * 0.03 if trial_id else 0.0
                return labels.index(value_label(value)) + jitter

            ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 6 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            def x_of(value: Any, trial_id: str = "") -> float:
                return float(value)

            if dist.log:
                ax.set_xscale("log")
        for status, marker, face in (("finished", "o", "C0"), ("stopped", "o", "none")):
            group = [r for r in scored if r.status == status]
            if group:
                ax.scatter([x_of(r.values[name], r.trial_id) for r in group], [r.best_val_accuracy for r in group],
                           marker=marker, facecolors=face, edgecolors="C0", s=36,
                           label="finished" if status == "finished" else "stopped early (ASHA)")
        if best is not None:
            ax.scatter([x_of(best.values[name], best.trial_id)], [best.best_val_accuracy], marker="*", s=160, color="C3",
                       zorder=3, label="best")
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="dotted", linewidth=1)
        ax.set_xlabel(name)
        ax.set_ylabel("best validation accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False)
    fig.suptitle(f"{space.method} sweep: {len(scored)} trials, {space.metric} maximised", fontsize=10, x=0.02,
                 ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    with storage.open_output(path) as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return storage.as_location(path)
