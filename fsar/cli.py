"""The ``fsar`` command: synth, manifest, embed, masks, train, eval, tune, demo, methods.

Every command takes ``--config FILE.yaml`` and trailing ``key=value`` overrides (values parsed as YAML:
``shot=5``, ``methods=[otam]``, ``knobs.otam.gamma=0.05``). Priority, lowest first: the config class's
defaults, the file, the flags, the overrides. Unknown keys are refused with the list of valid ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsar.config import ConfigError, resolve


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML file with this command's settings")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings overriding file and flags")


def _flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# ---------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic motion dataset (mp4 + manifest)")
    p.add_argument("--out", type=Path)
    p.add_argument("--classes", type=int)
    p.add_argument("--videos-per-class", dest="videos_per_class", type=int)
    p.add_argument("--frames", type=int, help="longest clip, in frames")
    p.add_argument("--size", type=int, help="frame side in pixels")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--masks", action="store_true", default=None,
                   help="also write ground-truth instance masks to OUT/masks/<video_id>.npz (knobs.mask_files of i2st)")
    p.add_argument("--clutter", type=int, help="distractors per video, moving at random (default 0)")
    p.add_argument("--misalign", type=float,
                   help="0..1: the action fills a random 100..(100-60*misalign) %% of the clip, idle around it (default 0)")
    _common(p)
    p.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from fsar.data.manifest import read_manifest, summarize
    from fsar.data.synthetic import MASKS_DIR, SynthConfig, generate

    config = resolve(SynthConfig, file=args.config, overrides=args.overrides,
                     flags=_flags(args, "out", "classes", "videos_per_class", "frames", "size", "seed", "workers",
                                  "masks", "clutter", "misalign"))
    start = time.perf_counter()
    manifest = generate(config, progress=True)
    seconds = time.perf_counter() - start
    table = read_manifest(manifest)
    print(summarize(table))
    print(f"wrote {table.num_rows} videos in {seconds:.1f} s ({table.num_rows / seconds:.0f} videos/s); manifest: {manifest}")
    if config.masks:
        print(f"instance masks: {Path(config.out).resolve() / MASKS_DIR} (i2st: knobs.mask_source=files "
              f"knobs.mask_files=<that folder>)")
    return 0


# ---------------------------------------------------------------- manifest
@dataclass
class ManifestConfig:
    """``fsar manifest``: where the videos are and how they split."""

    videos: Path  # video root folder
    out: Path  # manifest file to write (.parquet)
    splits: Path | None = None  # folder of standard split lists (e.g. shared/splits); needs --benchmark
    benchmark: str | None = None  # ssv2_otam | ssv2_cmn | kinetics_cmn | ucf_arn | hmdb_arn
    class_split: tuple[float, float, float] = (0.64, 0.12, 0.24)  # class-per-folder trees: train/val/test class fractions
    seed: int = 0  # class-split shuffle seed
    require_all: bool = False  # fail when a listed video is missing instead of reporting it
    check_paths: bool = True  # verify every video file is readable


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="build a manifest (Parquet) from a folder tree or standard split lists")
    p.add_argument("--videos", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--splits", type=Path)
    p.add_argument("--benchmark")
    p.add_argument("--class-split", dest="class_split", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--seed", type=int)
    _common(p)
    p.set_defaults(run=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> int:
    from fsar.data import manifest as mf
    from fsar.data.folder_tree import scan_folder_tree
    from fsar.data.split_lists import from_split_lists

    config = resolve(ManifestConfig, file=args.config, overrides=args.overrides,
                     flags=_flags(args, "videos", "out", "splits", "benchmark", "class_split", "seed"))
    if (config.splits is None) != (config.benchmark is None):
        raise ConfigError("--splits and --benchmark go together: the split-list folder and which benchmark in it")
    if config.splits is not None:
        table, report = from_split_lists(config.splits, config.benchmark, config.videos,
                                            require_all=config.require_all)
        print(report.summary())
    else:
        table, folder_report = scan_folder_tree(config.videos, class_split=config.class_split, seed=config.seed)
        print(folder_report.summary())
    mf.validate_manifest(table, check_paths=config.check_paths)
    mf.write_manifest(table, config.out)
    print(mf.summarize(table))
    print(f"manifest: {config.out} ({table.num_rows} videos)")
    return 0


# ---------------------------------------------------------------- embed
def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="decode + encode every video of a manifest into a feature store")
    p.add_argument("--manifest", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--backbone")
    p.add_argument("--pretrained", help="open_clip tag, checkpoint path, 'none' or 'default'")
    p.add_argument("--frames", type=int)
    p.add_argument("--patch-grid", dest="patch_grid", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    _common(p)
    p.set_defaults(run=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from pipelines.embed import EmbedConfig, run

    config = resolve(EmbedConfig, file=args.config, overrides=args.overrides,
                     flags=_flags(args, "manifest", "out", "backbone", "pretrained", "frames", "patch_grid", "batch_size"))
    start = time.perf_counter()
    summary = run(config, address=args.address)
    seconds = time.perf_counter() - start
    print(f"store {summary.store}: {summary.videos} videos embedded, {summary.failures} failed "
          f"(see failures.parquet); {summary.shards_written} shard(s) written, {summary.shards_skipped} already done; "
          f"{seconds:.1f} s")
    return 0


# ---------------------------------------------------------------- masks
def _add_masks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="convert per-frame PNG masks (<video_id>/<frame>.png) into I2ST mask files")
    p.add_argument("--png", type=Path, help="folder of <video_id>/<frame>.png masks")
    p.add_argument("--out", type=Path, help="mask folder to write (<video_id>.npz); knobs.mask_files of i2st")
    _common(p)
    p.set_defaults(run=_run_masks)


def _run_masks(args: argparse.Namespace) -> int:
    from fsar.data.masks import MaskConvertConfig, convert_png_masks

    config = resolve(MaskConvertConfig, file=args.config, overrides=args.overrides, flags=_flags(args, "png", "out"))
    report = convert_png_masks(config)
    print(f"masks {config.out}: {report.summary()}")
    return 0 if report.written + report.skipped else 1


# ---------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="episodic training on a feature store (Ray Train; workers=0 in-process)")
    p.add_argument("--store", type=Path)
    p.add_argument("--manifest", type=Path, help="end-to-end (pixels) methods: train on these videos instead of a store")
    p.add_argument("--method")
    p.add_argument("--out", type=Path)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--mlflow-uri", dest="mlflow_uri")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    _common(p)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from pipelines.train import TrainConfig, run

    config = resolve(TrainConfig, file=args.config, overrides=args.overrides,
                     flags=_flags(args, "store", "manifest", "method", "out", "way", "shot", "steps", "workers", "lr",
                                  "mlflow_uri"))
    result = run(config, address=args.address)
    print(f"run {result.run_dir}: best validation accuracy {result.best_val_accuracy:.2f}% at step "
          f"{result.best_step}/{result.steps}; checkpoint {result.best_checkpoint}; MLflow run {result.mlflow_run_id}")
    return 0


# ---------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score methods on fixed seeded test episodes (accuracy ± 95%% CI)")
    p.add_argument("--store", type=Path)
    p.add_argument("--manifest", type=Path, help="end-to-end (pixels) methods and runs: decode these videos instead of a store")
    p.add_argument("--out", type=Path)
    p.add_argument("--method", dest="methods", action="append", help="untrained method name (repeatable)")
    p.add_argument("--run", dest="runs", action="append", type=Path, help="trained run folder or .pt (repeatable)")
    p.add_argument("--episodes", type=int)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=int)
    p.add_argument("--split")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="where methods run: auto (CUDA when present, the default), cpu, cuda, cuda:N")
    _common(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvalConfig, run

    config = resolve(EvalConfig, file=args.config, overrides=args.overrides,
                     flags=_flags(args, "store", "manifest", "out", "methods", "runs", "episodes", "way", "shot", "split",
                                  "seed", "device"))
    from fsar.eval import format_table

    records = run(config)
    print(format_table(records))
    print(f"results: {Path(config.out) / 'results.json'}")
    return 0


# ---------------------------------------------------------------- tune
def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="hyperparameter sweep (Ray Tune): trials of `fsar train`, ASHA on validation accuracy")
    p.add_argument("--store", type=Path)
    p.add_argument("--space", type=Path, help="search space YAML: method, metric, trials, fixed, space")
    p.add_argument("--out", type=Path, help="sweep folder; rerunning on it resumes an interrupted sweep")
    p.add_argument("--trials", type=int, help="trials to sample (default: the space file's)")
    p.add_argument("--cpus-per-trial", dest="cpus_per_trial", type=float)
    p.add_argument("--gpus-per-trial", dest="gpus_per_trial", type=float)
    p.add_argument("--mlflow-uri", dest="mlflow_uri")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    _common(p)
    p.set_defaults(run=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from pipelines.tune import SweepConfig, run

    config = resolve(SweepConfig, file=args.config, overrides=args.overrides,
                     flags=_flags(args, "store", "space", "out", "trials", "cpus_per_trial", "gpus_per_trial",
                                  "mlflow_uri"))
    result = run(config, address=args.address)
    print((result.out / "results.md").read_text())
    if not result.complete:
        print(f"sweep {result.out}: interrupted; rerun the same command to resume (finished trials are kept)")
        return 1
    print(f"sweep {result.out}: best config {result.best_config} (`fsar train --config {result.best_config}`); "
          f"table {result.out / 'trials.csv'}, plot {result.out / 'results.png'}; MLflow parent run {result.mlflow_run_id}")
    return 0


# ---------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the embedded default end to end: synth → embed → evaluate baselines")
    p.add_argument("--out", type=Path)
    p.add_argument("--episodes", type=int)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    _common(p)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import DemoConfig, run

    run(resolve(DemoConfig, file=args.config, overrides=args.overrides, flags=_flags(args, "out", "episodes")),
        address=args.address)
    return 0


# ---------------------------------------------------------------- methods
def _add_methods(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list registered methods and the inputs each needs")
    p.set_defaults(run=_run_methods)


def _run_methods(args: argparse.Namespace) -> int:
    from fsar.methods import list_methods, method_info

    print(f"{'method':<12} {'input':<8} {'text':<5} description")
    for name in list_methods():
        info = method_info(name)
        print(f"{name:<12} {info.input_kind:<8} {'yes' if info.needs_text else 'no':<5} {info.description}")
    return 0


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_synth, _add_manifest, _add_embed, _add_masks, _add_train, _add_eval, _add_tune, _add_demo, _add_methods,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsar", description="Few-shot action recognition on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from fsar.backbones import BackboneUnavailableError
    from fsar.data.episodes import EpisodeError
    from fsar.data.feature_store import FeatureStoreError
    from fsar.data.manifest import ManifestError

    expected = (ConfigError, BackboneUnavailableError, EpisodeError, FeatureStoreError, ManifestError)
    try:
        return int(args.run(args))
    except expected as exc:
        print(f"fsar {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
