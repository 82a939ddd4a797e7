"""Worker-count benchmark: the same training config on 1 and on 2 Ray Train workers.

    python -m pipelines.bench.workers [--store STORE] [--steps 60] [--episodes-per-step 16]

``episodes_per_step`` is the global batch, so both runs train the same experiment; the benchmark prints

- training episodes/s of each (the rank-0 rate of the windows after the first, which holds start-up),
  and their ratio, measured in this one run;
- the largest difference between the two runs' weights and between their training curves, which must
  be floating-point reduction noise (the tests hold it to 1e-4 after 20 steps).

Without ``--store`` it trains on a synthetic store of the demo's shape (random fp16 features, 4×4 grid
of 64-d patches as ``fsar-tiny`` gives, 8 frames, 64/12/24 classes of 20 videos). Method: OTAM with a 256-d projection on the flattened grid, as in
the demo.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from pipelines.command import Command, run_alone


def train_once(store: Path, out: Path, *, workers: int, steps: int, episodes_per_step: int, val_every: int) -> Any:
    from fsar.data.sections import StoreData
    from pipelines.train import TrainConfig, run

    return run(TrainConfig(data=StoreData(store=store), out=out, method="otam", knobs={"proj_dim": 256, "temporal_centre": True},
                           steps=steps, val_every=val_every, val_episodes=200, episodes_per_step=episodes_per_step,
                           workers=workers, lr=3e-3, warmup_steps=5, seed=0))


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=Path, help="feature store (default: a synthetic one of the demo's shape)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--val-every", type=int, default=20)
    p.add_argument("--episodes-per-step", type=int, default=16)


def _run(args: Any) -> int:

    from fsar.run_folder import RunFolder
    from fsar.training.checkpoint import load_checkpoint
    from pipelines.bench.gpu_check import synthetic_store
    from pipelines.ray_runtime import init_ray

    with tempfile.TemporaryDirectory(prefix="fsar-bench-workers-") as tmp:
        work = Path(tmp)
        store = args.store or synthetic_store(work / "store", quick=False, dim=64)
        init_ray()
        results, curves, rates = {}, {}, {}
        for workers in (1, 2):
            result = train_once(store, work / f"w{workers}", workers=workers, steps=args.steps,
                                episodes_per_step=args.episodes_per_step, val_every=args.val_every)
            lines = RunFolder(result.run_dir).metrics()
            results[workers], curves[workers] = result, lines
            later = lines[1:] or lines
            rates[workers] = sum(m["episodes_per_s"] for m in later) / len(later)
        one, two = (load_checkpoint(results[w].best_checkpoint)[0].state_dict() for w in (1, 2))
        weight_diff = max(float((one[k] - two[k]).abs().max()) for k in one)
        loss_diff = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(curves[1], curves[2], strict=True))
        val_diff = max(abs(a["val_accuracy"] - b["val_accuracy"]) for a, b in zip(curves[1], curves[2], strict=True))
    print(f"OTAM proj 256, {args.steps} steps x {args.episodes_per_step} episodes (global), torch {torch.__version__}")
    print("| workers | episodes/s | best val (%) | best step |")
    print("|---:|---:|---:|---:|")
    for w in (1, 2):
        print(f"| {w} | {rates[w]:.1f} | {results[w].best_val_accuracy:.2f} | {results[w].best_step} |")
    print(f"2 workers ÷ 1 worker: {rates[2] / rates[1]:.2f}")
    print(f"same experiment: max |Δweight| {weight_diff:.2e} (best checkpoints at steps "
          f"{results[1].best_step} / {results[2].best_step}), max |Δtrain loss| {loss_diff:.2e}, "
          f"max |Δval accuracy| {val_diff:.2e} points")
    return 0


COMMAND = Command("bench_workers", "worker-count benchmark: one training config on 1 and on 2 Ray Train workers", _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.workers")


if __name__ == "__main__":
    raise SystemExit(main())
