"""Mechanism benchmark of the seed methods: does each do what its paper claims?

    python -m pipelines.bench.seeds --out DIR [key=value ...]

For each synthetic family (``families``: ``shapes``, the renderer the defaults were first tuned on;
``figures``, articulated figures; ``camera``, camera motion over a textured scene; ``swarm``, several
interacting objects — ``fsar synth --family``), each number of training classes (``train_classes``: 10
and 64, with 12 validation and 24 test classes) and each variant (``variants``: plain; clutter,
distractors moving at random; misalignment, the action filling a random part of the clip with idle
frames around it), every one rendered with its ground-truth instance masks:

1. synth → embed (random-init ``fsar-tiny``, 4×4 patch grid);
2. train every method of ``methods`` with the same budget (``pipelines.compare``) and score all on the
   same 10,000 test episodes at 1- and 5-shot, with the paired difference of each to OTAM;
3. score the trained runs on **reverse-pair episodes**: 2-way 1-shot episodes of a test class and its
   time reverse ("moving left" vs "moving right"), which only an order-aware method can tell apart.

Writes ``DIR/seeds.md`` (one table per family, training classes and variant; the ``held_out`` family, kept
out of all tuning, last and marked), ``DIR/seeds.json`` and each cell's comparison folder under
``DIR/<family>/<n>-train/<variant>``. Every seed runs in its ``paper`` and its ``fsar`` configuration, and
OTAM and ProtoNet read the same view (the flattened 4×4 grid).
The targets (issue "seed mechanisms"): A2M2 above OTAM on misalignment, I2ST with mask files above OTAM
on clutter, DMGAL above OTAM on clutter or misalignment, beyond the paired CI; on the plain variant none
behind OTAM by more than the paired CI; on reverse pairs A2M2 far above trained ProtoNet and close to OTAM.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsar.config import dump_yaml
from pipelines.command import Command, run_alone

DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    # The baselines read the same view as the seeds (the compare runs all on the flattened grid).
    "protonet": {"proj_dim": 256},
    "otam": {"proj_dim": 256, "temporal_centre": True},
    # Each seed as its paper describes it and with fsar's additions (fsar.methods registry configurations).
    "a2m2@paper": {"configuration": "paper"},
    "a2m2@fsar": {"configuration": "fsar"},
    "i2st@paper": {"configuration": "paper", "dim": 64, "mask_source": "files", "mask_files": "{masks}"},
    "i2st@fsar": {"configuration": "fsar", "dim": 64, "mask_source": "files", "mask_files": "{masks}"},
    "dmgal@paper": {"configuration": "paper"},
    "dmgal@fsar": {"configuration": "fsar"},
}

@dataclass
class SeedBenchConfig:
    """``python -m pipelines.bench.seeds``: the variants, the methods and the one budget they all get."""

    out: Path  # output folder: <variant>/data, <variant>/store, <variant>/compare, seeds.md, seeds.json
    families: list[str] = field(default_factory=lambda: ["shapes", "figures", "camera", "swarm"])  # `fsar synth --family`
    held_out: str = "swarm"  # the family kept out of all tuning: reported last, marked held out
    train_classes: list[int] = field(default_factory=lambda: [10, 64])  # training classes; 12 val and 24 test classes beside them
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "plain": {}, "clutter": {"clutter": 2}, "misalign": {"misalign": 1.0},
    })  # variant name -> `fsar synth` options
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_METHODS.items()})  # method[@label] -> knobs ("{masks}": the variant's mask folder)
    val_classes: int = 12  # validation classes of every cell
    test_classes: int = 24  # test classes of every cell
    videos_per_class: int = 20  # videos per class
    size: int = 64  # frame side (fsar-tiny sees 64 px)
    frames: int = 8  # frames sampled per video
    patch_grid: int = 4  # stored patch grid
    steps: int = 300  # optimiser steps per method
    episodes_per_step: int = 16  # global episodes per step
    lr: float = 3e-3  # learning rate
    workers: int = 0  # Ray Train workers (0: in-process, on threads_per_worker threads)
    threads_per_worker: int = 2  # torch threads of each training process
    episodes: int = 10000  # test episodes per shot
    reverse_episodes: int = 2000  # 2-way reverse-pair episodes
    shots: list[int] = field(default_factory=lambda: [1, 5])  # K of the 5-way K-shot evaluations
    seed: int = 0  # data, training and episode seed


def reverse_pair_episodes(classes_json: Path, labels: np.ndarray, *, count: int, seed: int) -> Any:
    """2-way 1-shot 1-query episodes, each of one test class and its time-reversed partner, ``count`` in all,
    spread evenly over the pairs. Rows index the split whose labels are ``labels``."""
    from fsar.data.episodes import Episodes, EpisodeSampler

    classes = json.loads(Path(classes_json).read_text())
    by_id = {c["id"]: c for c in classes}
    pairs = sorted({tuple(sorted((c["label"], by_id[c["partner"]]["label"]))) for c in classes
                    if c["split"] == "test" and c["partner"] in by_id and by_id[c["partner"]]["split"] == "test"})
    if not pairs:
        raise ValueError(f"{classes_json}: no test class has its time reverse in the test split")
    parts = []
    for i, pair in enumerate(pairs):
        rows = np.flatnonzero(np.isin(labels, pair))
        sampler = EpisodeSampler(labels[rows], way=2, shot=1, query=1, seed=seed + i)
        eps = sampler.batch(0, count // len(pairs))
        parts.append(Episodes(eps.classes, rows[eps.support], rows[eps.query]))
    return Episodes(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("classes", "support", "query")))


def score_reverse_pairs(store: Path, data: Path, runs: list[Path], *, count: int, seed: int) -> dict[str, np.ndarray]:
    """Per-episode accuracies of each trained run on the reverse-pair episodes of the store's test split."""
    import torch

    from fsar.data.feature_store import FeatureStore
    from fsar.evaluation.scoring import episode_accuracies
    from fsar.training.checkpoint import load_checkpoint

    opened = FeatureStore(store)
    text = opened.class_text()
    text = None if text is None else torch.from_numpy(text)
    out, episodes = {}, None
    for run in runs:
        method, payload = load_checkpoint(run)
        split = opened.load_split("test", view=payload["resolved_view"], as_grid=method.input_kind == "patches")
        if episodes is None:
            episodes = reverse_pair_episodes(data / "classes.json", split.labels, count=count, seed=seed)
        out[Path(run).name] = episode_accuracies(method, split.features, episodes, class_text=text, batch_size=500)
    return out


def run(config: SeedBenchConfig) -> dict[str, Any]:
    from fsar.backbones import TINY_MODEL
    from fsar.data.synthetic import SynthConfig, generate
    from fsar.embedding import EmbedConfig
    from fsar.evaluation.results import PER_EPISODE_FILE, accuracy_ci, paired_difference, read_per_episode
    from pipelines.compare import CompareConfig
    from pipelines.compare import run as compare
    from pipelines.embed import run as embed

    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "bench_config.yaml")
    summary: dict[str, Any] = {}
    cells = [(family, n, variant) for family in sorted(config.families, key=lambda f: f == config.held_out)
             for n in config.train_classes for variant in config.variants]
    for family, n_train, variant in cells:
        options = config.variants[variant]
        start = time.perf_counter()
        root = out / family / f"{n_train}-train" / variant
        split = (n_train, config.val_classes, config.test_classes)
        manifest = generate(SynthConfig(out=root / "data", family=family, classes=sum(split), class_split=split,
                                        videos_per_class=config.videos_per_class, size=config.size, seed=config.seed,
                                        masks=True, **options), progress=False)
        embed(EmbedConfig(manifest=manifest, out=root / "store", backbone=TINY_MODEL, pretrained="none",
                          frames=config.frames, patch_grid=config.patch_grid, engine="local"), progress=False)
        methods = {k: {n: (str(root / "data" / "masks") if v == "{masks}" else v) for n, v in knobs.items()}
                   for k, knobs in config.methods.items()}
        records = compare(CompareConfig(
            store=root / "store", out=root / "compare", methods=methods, reference="otam", steps=config.steps,
            episodes_per_step=config.episodes_per_step, lr=config.lr, workers=config.workers,
            threads_per_worker=config.threads_per_worker, shots=config.shots, episodes=config.episodes,
            seed=config.seed, view="grid"), progress=False)
        runs = [root / "compare" / "runs" / k for k in methods]
        reverse = score_reverse_pairs(root / "store", root / "data", runs, count=config.reverse_episodes, seed=config.seed)
        per_episode = read_per_episode(root / "compare" / "eval" / PER_EPISODE_FILE)
        rows = {}
        for key in methods:
            row: dict[str, Any] = {}
            for r in (r for r in records if Path(r.run).name == key):
                ref = next(x for x in records if Path(x.run).name == "otam" and x.shot == r.shot)
                diff = paired_difference(per_episode[(r.method, r.shot)], per_episode[(ref.method, r.shot)])
                row[f"{r.shot}-shot"] = (r.accuracy, r.ci95, *diff)
            row["reverse pairs"] = (*accuracy_ci(reverse[key]), *paired_difference(reverse[key], reverse["otam"]))
            rows[key] = row
        cell = f"{family} · {n_train} training classes · {variant}" + (" (held out)" if family == config.held_out else "")
        summary[cell] = {"options": options, "methods": rows, "seconds": time.perf_counter() - start}
        (out / "seeds.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "seeds.md").write_text(format_summary(summary) + "\n")
        print(format_summary({cell: summary[cell]}), flush=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """One Markdown table per variant: accuracy ± CI and paired Δ to OTAM ± paired CI for each column."""
    from fsar.evaluation.results import format_difference

    blocks = []
    for variant, result in summary.items():
        columns = list(next(iter(result["methods"].values())))
        head = "| method | " + " | ".join(f"{c} (%) | Δ vs OTAM" for c in columns) + " |"
        lines = [f"### {variant} {result['options'] or ''} ({result['seconds'] / 60:.0f} min)", "", head,
                 "|---|" + "---:|---:|" * len(columns)]
        for method, row in result["methods"].items():
            cells = []
            for c in columns:
                acc, ci, diff, dci = row[c]
                cells.append(f"{acc:.2f} ± {ci:.2f} | " + ("—" if method == "otam" else format_difference(diff, dci)))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _arguments(p: Any) -> None:
    p.add_argument("--out", type=Path, required=True)


def _run(args: Any) -> int:
    from fsar.config import resolve

    run(resolve(SeedBenchConfig, file=args.config, overrides=args.overrides, flags={"out": args.out}))
    return 0


COMMAND = Command("bench_seeds", "mechanism benchmark of the seed methods", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.seeds")


if __name__ == "__main__":
    raise SystemExit(main())
