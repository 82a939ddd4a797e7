"""The ``fsar`` command: synth, manifest, embed, masks, train, eval, tune, demo, compare, methods.

Every command takes ``--config FILE.yaml`` and trailing ``key=value`` overrides (values parsed as YAML:
``shot=5``, ``methods=[otam]``, ``knobs.otam.gamma=0.05``). Priority, lowest first: the config class's
defaults, the file, the flags, the overrides. Unknown keys are refused with the list of valid ones.

The jobs (embed, train, eval, tune, demo, compare) declare their own commands in ``pipelines/<job>.py``, where
``python -m pipelines.<job>`` runs them alone; the commands that only call the library live here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsar.config import ConfigError, resolve
from fsar.storage import as_location
from pipelines import compare, demo, embed, evaluate, predict, reproduce, serve, train, tune
from pipelines.command import Command, dispatch, flags


# ---------------------------------------------------------------- synth
def _synth_arguments(p: Any) -> None:
    p.add_argument("--out", type=Path)
    p.add_argument("--family", help="generator: shapes (default: rigid shapes), figures (stick figures), camera "
                                    "(a moving camera) or swarm (objects moving as a group)")
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


def _run_synth(args: Any) -> int:
    from fsar.data.manifest import read_manifest, summarize
    from fsar.data.synthetic import MASKS_DIR, SynthConfig, generate

    config = resolve(SynthConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "out", "family", "classes", "videos_per_class", "frames", "size", "seed",
                                  "workers", "masks", "clutter", "misalign"))
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
    splits: Path | None = None  # other split lists laid out like the packaged ones; default: the lists fsar ships
    benchmark: str | None = None  # ssv2_otam | ssv2_cmn | kinetics_cmn | ucf_arn | hmdb_arn
    class_split: tuple[float, float, float] = (0.64, 0.12, 0.24)  # class-per-folder trees: train/val/test class fractions
    seed: int = 0  # class-split shuffle seed
    require_all: bool = False  # fail when a listed video is missing instead of reporting it
    check_paths: bool = True  # verify every video file is readable


def _manifest_arguments(p: Any) -> None:
    p.add_argument("--videos", type=Path)
    p.add_argument("--out", type=as_location)
    p.add_argument("--splits", type=Path)
    p.add_argument("--benchmark")
    p.add_argument("--class-split", dest="class_split", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--seed", type=int)


def _run_manifest(args: Any) -> int:
    from fsar.data import manifest as mf
    from fsar.data.folder_tree import scan_folder_tree
    from fsar.data.split_lists import from_split_lists

    config = resolve(ManifestConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "videos", "out", "splits", "benchmark", "class_split", "seed"))
    if config.splits is not None and config.benchmark is None:
        raise ConfigError("--splits needs --benchmark: which benchmark's lists to read from that folder")
    if config.benchmark is not None:
        table, report = from_split_lists(config.splits, config.benchmark, config.videos,
                                            require_all=config.require_all, progress=True)
        print(report.summary())
    else:
        table, folder_report = scan_folder_tree(config.videos, class_split=config.class_split, seed=config.seed,
                                                progress=True)
        print(folder_report.summary())
    # Video lengths are not probed here (num_frames stays null): `fsar embed` learns each length when it decodes.
    mf.validate_manifest(table, check_paths=config.check_paths, progress=True)
    mf.write_manifest(table, config.out)
    print(mf.summarize(table))
    print(f"manifest: {config.out} ({table.num_rows} videos)")
    return 0


# ---------------------------------------------------------------- masks
def _masks_arguments(p: Any) -> None:
    p.add_argument("--png", type=Path, help="folder of <video_id>/<frame>.png masks")
    p.add_argument("--out", type=Path, help="mask folder to write (<video_id>.npz); knobs.mask_files of i2st")


def _run_masks(args: Any) -> int:
    from fsar.data.masks import MaskConvertConfig, convert_png_masks

    config = resolve(MaskConvertConfig, file=args.config, overrides=args.overrides, flags=flags(args, "png", "out"))
    report = convert_png_masks(config)
    print(f"masks {config.out}: {report.summary()}")
    return 0 if report.written + report.skipped else 1


# ---------------------------------------------------------------- methods
def _methods_arguments(p: Any) -> None:
    pass


def _run_methods(args: Any) -> int:
    from fsar.methods import list_methods, method_info

    width = max(len(name) for name in list_methods())
    print(f"{'method':<{width}} {'input':<8} {'text':<5} description")
    for name in list_methods():
        info = method_info(name)
        print(f"{name:<{width}} {info.input_kind:<8} {'yes' if info.needs_text else 'no':<5} {info.description}")
        for label, conf in info.configurations.items():
            default = " (default)" if label == info.default_configuration else ""
            print(f"{'':<{width}}   configuration {label}{default}: "
                  f"{', '.join(f'{k}={v}' for k, v in conf.knobs.items())}")
    return 0


# ---------------------------------------------------------------- store
def _store_arguments(p: Any) -> None:
    p.add_argument("action", choices=["check"], help="check: verify every shard, count and checksum")
    p.add_argument("store", type=as_location, help="feature store folder or URI")


def _run_store(args: Any) -> int:
    from fsar.data.store_check import check_store, format_problems

    problems, shards = check_store(args.store)
    print(format_problems(args.store, problems, shards))
    return 1 if problems else 0


# ---------------------------------------------------------------- recipes
def _recipes_arguments(p: Any) -> None:
    p.add_argument("names", nargs="?", default="", help="only recipes whose name contains this (e.g. trx/ or ucf_arn)")
    p.add_argument("--show", action="store_true", help="print each matching recipe's facts and TrainConfig mapping")


def _run_recipes(args: Any) -> int:
    import yaml

    from fsar.recipes import all_recipes, recipes_table

    chosen = [r for r in all_recipes() if args.names in r.name]
    if not chosen:
        raise ConfigError(f"no recipe name contains {args.names!r}; `fsar recipes` lists them all")
    if not args.show:
        print(recipes_table(chosen))
        return 0
    for recipe in chosen:
        family = recipe.family
        print(f"# {recipe.label}: {family.title}\n# source: {family.source}")
        print(f"# target ({recipe.shot}-shot): {recipe.target.accuracy} ({recipe.target.source})")
        facts = {k: v for k, v in vars(family.facts).items() if k != "sizing"} | {"sizing": vars(family.facts.sizing)}
        print(yaml.safe_dump({"facts": facts, "reconstructed": family.reconstructed, "differs": family.differs,
                              "embed": recipe.embed_mapping(), "train": recipe.train_mapping()}, sort_keys=False))
    return 0


COMMANDS: tuple[Command, ...] = (
    Command("synth", "write the synthetic motion dataset (mp4 + manifest)", _synth_arguments, _run_synth),
    Command("manifest", "build a manifest (Parquet) from a folder tree or standard split lists", _manifest_arguments,
            _run_manifest),
    embed.COMMAND,
    Command("masks", "convert per-frame PNG masks (<video_id>/<frame>.png) into I2ST mask files", _masks_arguments,
            _run_masks),
    train.COMMAND,
    evaluate.COMMAND,
    tune.COMMAND,
    demo.COMMAND,
    compare.COMMAND,
    reproduce.COMMAND,
    predict.COMMAND,
    serve.COMMAND,
    Command("methods", "list registered methods and the inputs each needs", _methods_arguments, _run_methods),
    Command("store", "check a feature store: every shard reads and holds what its merge recorded", _store_arguments,
            _run_store, takes_config=False),
    Command("recipes", "list the shipped training recipes (fsar train --recipe NAME)", _recipes_arguments, _run_recipes,
            takes_config=False),
)


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
