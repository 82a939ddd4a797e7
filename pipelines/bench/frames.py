"""End-to-end (pixels) training benchmark: DMGAL-FT vs DMGAL-Adapter on the tiny ViT, CPU.

``python -m pipelines.bench.frames [--steps 60 --episodes 1000 --threads 2 --out DIR]``

On a generated synthetic dataset (motion classes, 64 px mp4s):

1. each method trains in-process (``workers=0``: the thread-pool decoder, the same decode function Ray
   Data runs) for ``--steps`` optimiser steps of 5-way 1-shot episodes, in its own child process so the
   memory figures are its own. Reported: training episodes/s (decode + forward + backward + step,
   validation excluded, first window dropped as warm-up), peak RSS of the child (``getrusage`` ``ru_maxrss``:
   Python, torch's CPU allocations, decoders — everything resident) and its RSS once torch, open_clip and
   the model are loaded (so peak − start ≈ what training itself holds), and trainable parameters;
2. both trained runs and the cached-feature baselines (ProtoNet and OTAM on the same tiny ViT's features,
   flattened 4×4 patch grid, untrained, plus OTAM with a learned projection trained for the same steps)
   are scored on the very same fixed 5-way 1-shot test episodes: accuracy ± 95% CI.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.command import Command, run_alone

STEPS_DEFAULT = 60


def _rss_mib() -> float:
    """Current resident set size of this process, MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def train_one(method: str, manifest: Path, out: Path, steps: int, threads: int) -> dict[str, Any]:
    """Train one method in this process; returns the measurements (run inside a child process)."""
    import torch

    from fsar.data.sections import ManifestData
    from fsar.run_folder import RunFolder
    from fsar.training.checkpoint import best_payload, save_checkpoint
    from fsar.training.config import TrainConfig
    from fsar.training.loop import train_worker

    torch.set_num_threads(threads)
    knobs = {"num_frames": 8} if method == "dmgal_ft" else {}
    config = TrainConfig(method=method, data=ManifestData(manifest=manifest, frames=8, decode_threads=threads), out=out,
                         knobs=knobs, way=5, shot=1, query=2, steps=steps, episodes_per_step=4,
                         lr=1e-3 if method == "dmgal_ft" else 5e-3, warmup_steps=5, val_every=max(1, steps // 4),
                         val_episodes=200, threads_per_worker=threads)
    out.mkdir(parents=True, exist_ok=True)
    reports: list[dict[str, float]] = []
    marks: dict[str, float] = {}

    def report(metrics: dict[str, float], payload: dict[str, Any] | None) -> None:
        marks.setdefault("rss_first_report_mib", _rss_mib())
        reports.append(metrics)
        if payload is not None and metrics.get("is_best"):
            save_checkpoint(best_payload(payload), RunFolder(out).best_checkpoint)

    from fsar.methods import build_method

    probe = build_method(method, feature_dim=0, **knobs)
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    total = sum(p.numel() for p in probe.parameters())
    del probe
    rss_start = _rss_mib()
    start = time.perf_counter()
    train_worker(config, report=report)
    seconds = time.perf_counter() - start
    rates = [m["episodes_per_s"] for m in reports[1:]] or [reports[0]["episodes_per_s"]]
    return {
        "method": method, "steps": steps, "episodes": steps * config.episodes_per_step,
        "episodes_per_s": sum(rates) / len(rates), "wall_s": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mib": rss_start, "trainable_params": trainable, "total_params": total,
        "final_train_loss": reports[-1]["train_loss"], "best_val_accuracy": max(m["val_accuracy"] for m in reports),
    }


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=STEPS_DEFAULT, help="optimiser steps per method (4 episodes each)")
    p.add_argument("--episodes", type=int, default=1000, help="5-way 1-shot test episodes")
    p.add_argument("--threads", type=int, default=2, help="torch threads and decode threads")
    p.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    p.add_argument("--one", nargs=3, metavar=("METHOD", "MANIFEST", "OUT"), help=argparse.SUPPRESS)


def _run(args: argparse.Namespace) -> int:
    if args.one:  # the child process of one method
        method, manifest, out = args.one
        print("BENCH " + json.dumps(train_one(method, Path(manifest), Path(out), args.steps, args.threads)))
        return 0
    work = args.out or Path(tempfile.mkdtemp(prefix="fsar-bench-frames-"))
    work.mkdir(parents=True, exist_ok=True)
    from fsar.data.synthetic import SynthConfig, generate

    manifest = generate(SynthConfig(out=work / "synth", classes=30, videos_per_class=8, frames=24, size=64,
                                    class_split=(16, 6, 8), workers=args.threads), progress=False)
    rows = []
    for method in ("dmgal_ft", "dmgal_adapter"):
        child = subprocess.run(
            [sys.executable, "-m", "pipelines.bench.frames", "--steps", str(args.steps), "--threads", str(args.threads),
             "--one", method, str(manifest), str(work / "runs" / method)],
            capture_output=True, text=True, check=False)
        lines = [line for line in child.stdout.splitlines() if line.startswith("BENCH ")]
        if child.returncode or not lines:
            print(child.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{method}: benchmark child failed (exit {child.returncode})")
        rows.append(json.loads(lines[-1][6:]))
    print(f"\nEnd-to-end training, CPU ({args.threads} threads), fsar-tiny ViT (64 px, patch 8), 5-way 1-shot, "
          f"2 queries/class, 8 frames, 4 episodes/step, {args.steps} steps:")
    print("| method | trainable / total params | episodes/s | peak RSS (MiB) | RSS at start: imports + model (MiB) | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable_params']:,} / {r['total_params']:,} | {r['episodes_per_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {r['rss_before_training_mib']:.0f} | {r['wall_s']:.0f} |")
    print(accuracy_table(manifest, work, args.episodes, args.steps, args.threads))
    return 0


COMMAND = Command("bench_frames", "end-to-end training benchmark: DMGAL-FT against DMGAL-Adapter", _arguments, _run,
                  takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.frames")


def accuracy_table(manifest: Path, work: Path, episodes: int, steps: int, threads: int) -> str:
    """Both trained DMGAL runs and the cached-feature baselines on the same fixed test episodes."""
    from fsar.backbones import TINY_MODEL
    from fsar.data.sections import ManifestData, StoreData
    from fsar.embedding import EmbedConfig, embed_manifest
    from fsar.evaluation.results import format_table, write_results
    from fsar.training.config import TrainConfig
    from pipelines import evaluate
    from pipelines.experiment import train_and_evaluate

    store = work / "store"
    embed_manifest(EmbedConfig(manifest=manifest, out=store, backbone=TINY_MODEL, pretrained="none", frames=8,
                               patch_grid=4, engine="local"), progress=False)
    out = work / "eval"
    common = {"out": out, "way": 5, "shot": 1, "episodes": episodes, "seed": 0, "threads": threads}
    # Pixels first: it writes the episode file (ids of decodable test videos); the store evaluation replays it.
    records = evaluate.run(evaluate.EvalConfig(data=ManifestData(manifest=manifest), runs=[
        work / "runs" / "dmgal_ft", work / "runs" / "dmgal_adapter"], **common), progress=False)
    baseline = TrainConfig(method="otam", data=StoreData(store=store, view="grid"), out=work / "runs" / "otam",
                           knobs={"proj_dim": 64}, way=5, shot=1, query=2, steps=steps, episodes_per_step=4, lr=1e-3,
                           warmup_steps=5, val_every=max(1, steps // 4), val_episodes=200, threads_per_worker=threads,
                           mlflow_uri=f"sqlite:///{work / 'mlflow.db'}")
    _, baselines = train_and_evaluate({"otam": baseline}, evaluate.EvalConfig(
        data=StoreData(store=store, view="grid"), methods=["protonet", "otam"], **common), progress=False)
    records += baselines
    write_results(records, out / "results.json")
    return (f"\nTest accuracy, 5-way 1-shot, {episodes} fixed episodes (same episodes for every row); training budget "
            f"{steps} steps × 4 episodes; baselines on cached fsar-tiny features (4×4 grid, untrained backbone):\n"
            + format_table(records))


if __name__ == "__main__":
    raise SystemExit(main())
