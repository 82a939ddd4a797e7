"""Compare methods at one training budget on one store: train each, score all on the same test episodes.

``python -m pipelines.compare --store fsar-demo/store --out compare [key=value ...]``, e.g.
``methods='{protonet: {proj_dim: 256}, otam: {proj_dim: 256, temporal_centre: true}, a2m2: {}}'``.

Every method gets the same steps, episodes per step, optimiser, learning rate, seed and workers; the
best validation checkpoint of each is evaluated on the same materialised 5-way K-shot test episodes.
Prints and writes (``<out>/comparison.md``, ``results.json``/``.md``/``.png``) accuracy ± 95% CI, the
number of trainable parameters, training wall time, and evaluation episodes/s.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fsar.config import dump_yaml
from fsar.eval import ResultRecord


@dataclass
class CompareConfig:
    """``python -m pipelines.compare``: which methods, one shared training budget, one set of test episodes."""

    store: Path  # feature store (e.g. fsar-demo/store from `fsar demo`)
    out: Path  # output folder: runs/<method>, eval/, comparison.md
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "protonet": {"proj_dim": 256}, "otam": {"proj_dim": 256, "temporal_centre": True}, "a2m2": {},
    })  # method (or method@label, to compare settings of one method) -> knobs, each trained with the budget below
    steps: int = 300  # optimiser steps per method
    episodes_per_step: int = 16  # episodes per optimiser step over all workers (split evenly across them)
    lr: float = 3e-3  # learning rate (AdamW, warm-up then cosine)
    workers: int = 2  # Ray Train workers (0 = in-process)
    val_every: int = 50  # validation interval (steps)
    shots: list[int] = field(default_factory=lambda: [1, 5])  # K of the 5-way K-shot test evaluations
    episodes: int = 10000  # test episodes per shot
    seed: int = 0  # training and episode seed


def run(config: CompareConfig, *, progress: bool = True) -> list[ResultRecord]:
    import torch

    from pipelines.evaluate import EvalConfig, write_report
    from pipelines.evaluate import run as evaluate
    from pipelines.train import TrainConfig
    from pipelines.train import run as train

    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "compare_config.yaml")
    runs, train_seconds, params = [], {}, {}
    for key, knobs in config.methods.items():
        method = key.split("@")[0]
        start = time.perf_counter()
        result = train(TrainConfig(
            store=Path(config.store), method=method, out=out / "runs" / key, knobs=dict(knobs), steps=config.steps,
            episodes_per_step=config.episodes_per_step, lr=config.lr, workers=config.workers,
            val_every=config.val_every, seed=config.seed, mlflow_uri=f"sqlite:///{out / 'mlflow.db'}",
            experiment="fsar-compare"))
        train_seconds[key] = time.perf_counter() - start
        payload = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
        params[key] = sum(v.numel() for k, v in payload["state_dict"].items() if "running_" not in k
                             and not k.endswith("num_batches_tracked"))
        print(f"{key}: best validation {result.best_val_accuracy:.1f}% at step {result.best_step}, "
              f"{train_seconds[key]:.0f} s", flush=True)
        runs.append(result.run_dir)
    base = EvalConfig(store=Path(config.store), out=out / "eval", runs=runs, episodes=config.episodes,
                      seed=config.seed, dataset=Path(config.store).name)
    records = [r for shot in config.shots for r in evaluate(replace(base, shot=shot), progress=progress)]
    write_report(records, out / "eval")
    table = comparison_table(records, params, train_seconds)
    (out / "comparison.md").write_text(table + "\n")
    print(table)
    return records


def comparison_table(records: list[ResultRecord], params: dict[str, int], train_seconds: dict[str, float]) -> str:
    """Markdown: one row per trained run (named by its folder: method or method@label), accuracy ± CI per
    shot, parameters, training time, evaluation rate."""
    def key(r: ResultRecord) -> str:
        return Path(r.run).name if r.run else r.method

    shots = sorted({r.shot for r in records})
    methods = list(dict.fromkeys(key(r) for r in records))
    head = ("| method | " + " | ".join(f"{s}-shot accuracy (%)" for s in shots)
            + " | parameters | training (s) | evaluation (episodes/s, 1st shot) |")
    lines = [head, "|---|" + "---:|" * (len(shots) + 3)]
    for m in methods:
        mine = {r.shot: r for r in records if key(r) == m}
        cells = [f"{mine[s].accuracy:.2f} ± {mine[s].ci95:.2f}" if s in mine else "" for s in shots]
        first = mine[shots[0]]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {params.get(m, 0):,} | {train_seconds.get(m, 0):.0f} | "
                     f"{first.episodes / first.seconds:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from fsar.config import ConfigError, resolve

    parser = argparse.ArgumentParser(prog="python -m pipelines.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--config", type=Path)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = resolve(CompareConfig, file=args.config, overrides=args.overrides,
                         flags={k: v for k, v in (("store", args.store), ("out", args.out)) if v is not None})
        run(config)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
