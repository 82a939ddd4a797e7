"""Train several runs with one budget, then score them all on the same fixed episodes: the orchestration
``fsar demo``, ``pipelines.compare`` and the benchmarks share.

Each training run is an ordinary ``pipelines.train.run`` (resumable, a finished run is a no-op) and the
evaluation an ordinary ``pipelines.evaluate.run`` over the trained runs' folders, so every figure comes out of
the same ``results.json`` a user's own ``fsar eval`` writes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from fsar.evaluation.results import ResultRecord
from fsar.training.config import TrainConfig
from pipelines.evaluate import EvalConfig
from pipelines.train import TrainResult


@dataclass(frozen=True)
class TrainedRun:
    """One run of an experiment: its training result and wall time."""

    result: TrainResult
    seconds: float  # wall time of its training job (0 for a rerun that found it finished)


def train_all(runs: dict[str, TrainConfig], *, address: str | None = None,
              announce: Callable[[str], None] = print) -> dict[str, TrainedRun]:
    """Train each config in turn (by name), saying after each how it did on validation. The demo, comparisons
    and benchmarks own their run folders: a changed setting replaces a finished run there."""
    from pipelines.train import run as train

    trained = {}
    for name, config in runs.items():
        announce(f"== train {name}")
        start = time.perf_counter()
        result = train(config, address=address, overwrite=True)
        trained[name] = TrainedRun(result, time.perf_counter() - start)
        announce(f"   {name}: best validation accuracy {result.best_val_accuracy:.1f}% at step {result.best_step}, "
                 f"{trained[name].seconds:.0f} s")
    return trained


def train_and_evaluate(runs: dict[str, TrainConfig], evaluation: EvalConfig, *, address: str | None = None,
                       progress: bool = True, announce: Callable[[str], None] = print
                       ) -> tuple[dict[str, TrainedRun], list[ResultRecord]]:
    """Train ``runs``, then evaluate them (after ``evaluation``'s own runs and methods) on its episodes."""
    from pipelines.evaluate import run as evaluate

    trained = train_all(runs, address=address, announce=announce)
    evaluation = dataclasses.replace(evaluation, runs=[*evaluation.runs, *(t.result.run_dir for t in trained.values())])
    announce("== evaluate")
    return trained, evaluate(evaluation, progress=progress)
