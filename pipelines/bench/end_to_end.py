"""End-to-end benchmark: does training the backbone with the method beat training the method on frozen features?

``python -m pipelines.bench.end_to_end --out DIR [key=value ...]`` (also ``python -m pipelines.bench_end_to_end``)

On the demo's synthetic data (64 px, 64/12/24 train/val/test classes) and the random-init ``fsar-tiny`` (the
offline default), every row trains with the same number of episodes (``steps × episodes_per_step``), each in its
own child process (so its peak RSS is its own), in-process on 2 threads:

- OTAM and A2M2 cached (``frozen``: the method on the store's features) against end to end on the backbone
  stage under ``full``, ``last:1`` and ``lora:4``;
- A2M2 end to end (``last:1``) warm-started from its cached run (``init_from``) against the cold start above;
- DMGAL-FT and DMGAL-Adapter end to end, against their untrained start (one step at lr 0: the seeded
  initialisation) and against the cached DMGAL head.

All rows are scored on the same test episodes at 1- and 5-shot (the manifest's episode file is replayed on the
store), with paired differences: each end-to-end row to its method's cached row, each trained DMGAL row to its
untrained start, and the warm start to the cold start. Training episodes/s (validation excluded) and peak RSS
of each row come from its child process. Writes ``DIR/end_to_end.md`` and ``DIR/end_to_end.json``.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsar.config import dump_yaml
from pipelines.command import Command, run_alone

OTAM = {"proj_dim": 256, "temporal_centre": True}
A2M2 = {"configuration": "fsar", "fusion": 0.0}
# row → (method, knobs, tune: "cached" on the store, else the stage's tune; None for a pixels method, extra:
# init_from (a row), untrained, against (the row its Δ is to; default REFERENCES)).
DEFAULT_ROWS: dict[str, dict[str, Any]] = {
    "otam cached": {"method": "otam", "knobs": OTAM, "tune": "cached"},
    "otam full": {"method": "otam", "knobs": OTAM, "tune": "full"},
    "otam last:1": {"method": "otam", "knobs": OTAM, "tune": "last:1"},
    "otam lora:4": {"method": "otam", "knobs": OTAM, "tune": "lora:4"},
    "a2m2 cached": {"method": "a2m2", "knobs": A2M2, "tune": "cached"},
    "a2m2 full": {"method": "a2m2", "knobs": A2M2, "tune": "full"},
    "a2m2 last:1": {"method": "a2m2", "knobs": A2M2, "tune": "last:1"},
    "a2m2 lora:4": {"method": "a2m2", "knobs": A2M2, "tune": "lora:4"},
    "a2m2 last:1 warm": {"method": "a2m2", "knobs": A2M2, "tune": "last:1", "init_from": "a2m2 cached"},
    "dmgal cached": {"method": "dmgal", "knobs": {"configuration": "fsar"}, "tune": "cached"},
    "dmgal_ft untrained": {"method": "dmgal_ft", "knobs": {}, "tune": None, "untrained": True},
    "dmgal_ft": {"method": "dmgal_ft", "knobs": {}, "tune": None},
    "dmgal_adapter untrained": {"method": "dmgal_adapter", "knobs": {}, "tune": None, "untrained": True},
    "dmgal_adapter": {"method": "dmgal_adapter", "knobs": {}, "tune": None},
    # A random-init ViT's class token hardly depends on the input: the same head on the mean of the patch tokens.
    "dmgal_adapter pool=mean untrained": {"method": "dmgal_adapter", "knobs": {"pool": "mean"}, "tune": None,
                                          "untrained": True},
    "dmgal_adapter pool=mean": {"method": "dmgal_adapter", "knobs": {"pool": "mean"}, "tune": None},
}
# The paired comparisons the table prints: row → the row it is compared with.
REFERENCES = {
    "otam full": "otam cached", "otam last:1": "otam cached", "otam lora:4": "otam cached",
    "a2m2 full": "a2m2 cached", "a2m2 last:1": "a2m2 cached", "a2m2 lora:4": "a2m2 cached",
    "a2m2 last:1 warm": "a2m2 last:1", "dmgal_ft": "dmgal_ft untrained", "dmgal_adapter": "dmgal_adapter untrained",
    "dmgal_adapter pool=mean": "dmgal_adapter pool=mean untrained",
}


@dataclass
class EndToEndBenchConfig:
    """``python -m pipelines.bench.end_to_end``: the data, the rows and the one budget they all get."""

    out: Path  # work folder: data, store, runs/<row>, eval, end_to_end.md, end_to_end.json
    rows: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_ROWS.items()})  # row → method, knobs, tune (cached / a stage tune / None), init_from, untrained
    classes: int = 100  # synthetic classes (64/12/24 train/val/test), as the demo
    videos_per_class: int = 20  # videos per class
    size: int = 64  # frame side (fsar-tiny sees 64 px)
    frames: int = 8  # frames per video
    patch_grid: int = 4  # the store's and the stage's G×G grid
    view: str = "grid"  # what the frames methods read, cached and end to end
    steps: int = 300  # optimiser steps of every row
    episodes_per_step: int = 4  # episodes per step (so every row trains on steps × episodes_per_step episodes)
    query: int = 2  # queries per class in training episodes
    lr: float = 3e-3  # learning rate of the methods' parts (and of DMGAL's own encoders)
    lr_scale: float = 0.1  # the stage encoder's learning rate = lr × lr_scale
    val_every: int = 100  # validation interval (best checkpoint on validation)
    val_episodes: int = 200  # validation episodes
    threads: int = 2  # torch and decode threads of each row's process
    episodes: int = 2000  # test episodes per shot
    shots: list[int] = field(default_factory=lambda: [1, 5])  # K of the 5-way K-shot evaluations
    seed: int = 0  # data, training and episode seed


def row_folder(name: str) -> str:
    """A row's folder name: no spaces, colons or equals signs."""
    return name.replace(" ", "-").replace(":", "").replace("=", "-")


def train_config(config: EndToEndBenchConfig, name: str, manifest: Path, store: Path) -> Any:
    """The ``TrainConfig`` of one row."""
    from fsar.data.sections import ManifestData, StageSettings, StoreData
    from fsar.training.config import TrainConfig

    row = config.rows[name]
    out = Path(config.out) / "runs" / row_folder(name)
    knobs = dict(row["knobs"])
    if row["method"] == "dmgal_ft":
        knobs.setdefault("num_frames", config.frames)
    if row["tune"] == "cached":
        data: Any = StoreData(store=store, view=config.view)  # type: ignore[arg-type]
    else:
        stage = None if row["tune"] is None else StageSettings(tune=row["tune"], view=config.view,  # type: ignore[arg-type]
                                                                patch_grid=config.patch_grid, lr_scale=config.lr_scale)
        data = ManifestData(manifest=manifest, frames=config.frames, decode="threads", decode_threads=config.threads,
                            stage=stage)
    init = row.get("init_from")
    untrained = bool(row.get("untrained"))
    return TrainConfig(
        method=row["method"], data=data, out=out, knobs=knobs, way=5, shot=1, query=config.query,
        steps=1 if untrained else config.steps, episodes_per_step=config.episodes_per_step,
        lr=0.0 if untrained else config.lr, warmup_steps=1 if untrained else 20, val_every=1 if untrained else config.val_every,
        val_episodes=config.val_episodes, seed=config.seed, threads_per_worker=config.threads,
        init_from=None if init is None else train_config(config, init, manifest, store).out,
        mlflow_uri=f"sqlite:///{Path(config.out) / 'mlflow.db'}", experiment="fsar-bench-end-to-end")


def train_row(config_file: Path) -> dict[str, Any]:
    """Train one row in this process (a child of the benchmark); its speed and peak memory."""
    import yaml

    from fsar.config import from_dict
    from fsar.training.config import TrainConfig
    from pipelines.train import run as train

    config = from_dict(TrainConfig, yaml.safe_load(config_file.read_text()))
    result = train(config)
    metrics = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines() if line]
    rates = [m["episodes_per_s"] for m in metrics if "episodes_per_s" in m]
    return {"episodes_per_s": sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else rates[0],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "best_val_accuracy": result.best_val_accuracy, "run": str(result.run_dir)}


def run(config: EndToEndBenchConfig, *, progress: bool = True) -> dict[str, Any]:
    from fsar.backbones import TINY_MODEL
    from fsar.data.sections import ManifestData, StoreData
    from fsar.data.synthetic import SynthConfig, generate
    from fsar.embedding import EmbedConfig
    from fsar.evaluation.results import PER_EPISODE_FILE, read_per_episode
    from pipelines.embed import run as embed
    from pipelines.evaluate import EvalConfig
    from pipelines.evaluate import run as evaluate

    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "bench_config.yaml")
    split = (64 * config.classes // 100, 12 * config.classes // 100)
    manifest = generate(SynthConfig(out=out / "data", classes=config.classes, class_split=(*split, config.classes - sum(split)),
                                    videos_per_class=config.videos_per_class, frames=32, size=config.size,
                                    seed=config.seed), progress=progress)
    store = out / "store"
    embed(EmbedConfig(manifest=manifest, out=store, backbone=TINY_MODEL, pretrained="none", frames=config.frames,
                      patch_grid=config.patch_grid, engine="local", mlflow=False), progress=progress)
    rows: dict[str, dict[str, Any]] = {}
    for name in config.rows:  # in order: a warm start follows the cached run it starts from
        train = train_config(config, name, manifest, store)
        config_file = out / "configs" / f"{row_folder(name)}.yaml"
        config_file.parent.mkdir(exist_ok=True)
        dump_yaml(train, config_file)
        print(f"== train {name}", flush=True)
        child = subprocess.run([sys.executable, "-m", "pipelines.bench.end_to_end", "--one", str(config_file),
                                "--out", str(out)], capture_output=True, text=True, check=False)
        lines = [line for line in child.stdout.splitlines() if line.startswith("BENCH ")]
        if child.returncode or not lines:
            print(child.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name}: benchmark child failed (exit {child.returncode})")
        rows[name] = json.loads(lines[-1][6:]) | {"cached": config.rows[name]["tune"] == "cached"}
        print(f"   {name}: best validation {rows[name]['best_val_accuracy']:.1f}%, "
              f"{rows[name]['episodes_per_s']:.1f} episodes/s, peak RSS {rows[name]['peak_rss_mib']:.0f} MiB", flush=True)
    # Manifest rows first: their episode file (ids of the decodable test videos) is then replayed on the store.
    common = {"shot": list(config.shots), "episodes": config.episodes, "seed": config.seed, "threads": config.threads,
              "mlflow": False}
    records = evaluate(EvalConfig(data=ManifestData(manifest=manifest, frames=config.frames), out=out / "eval" / "manifest",
                                  runs=[r["run"] for r in rows.values() if not r["cached"]], **common), progress=progress)
    (out / "eval" / "store").mkdir(parents=True, exist_ok=True)
    for episode_file in (out / "eval" / "manifest").glob("episodes-*"):
        shutil.copy(episode_file, out / "eval" / "store" / episode_file.name)
    cached = [r["run"] for r in rows.values() if r["cached"]]
    if cached:
        records += evaluate(EvalConfig(data=StoreData(store=store, view=config.view), out=out / "eval" / "store",
                                       runs=cached, **common), progress=progress)
    run_of = {r.method: Path(str(r.run)).name for r in records}  # results label → run folder name
    per_episode = {}
    for folder in ("manifest", "store") if cached else ("manifest",):
        for (label, shot), accuracies in read_per_episode(out / "eval" / folder / PER_EPISODE_FILE).items():
            per_episode[(run_of[label], shot)] = accuracies
    summary = {"rows": rows, "accuracies": {}}
    for name, row in rows.items():
        run_name = Path(row["run"]).name
        summary["accuracies"][name] = {shot: per_episode[(run_name, shot)].tolist() for shot in config.shots}
    (out / "end_to_end.json").write_text(json.dumps(summary) + "\n")
    table = format_table(summary, config)
    (out / "end_to_end.md").write_text(table + "\n")
    print(table)
    return summary


def format_table(summary: dict[str, Any], config: EndToEndBenchConfig) -> str:
    """Accuracy ± CI per shot, the paired difference to the row's reference, speed and memory."""
    import numpy as np

    from fsar.evaluation.results import accuracy_ci, format_difference, paired_difference

    shots = list(config.shots)
    head = ("| row | " + " | ".join(f"{s}-shot (%) | Δ {s}-shot" for s in shots)
            + " | compared with | train episodes/s | peak RSS (MiB) |")
    lines = [head, "|---|" + "---:|---:|" * len(shots) + "---|---:|---:|"]
    for name, row in summary["rows"].items():
        cells = []
        wanted = config.rows.get(name, {}).get("against", REFERENCES.get(name))
        reference = wanted if wanted in summary["rows"] else None
        for shot in shots:
            acc = np.asarray(summary["accuracies"][name][shot])
            mean, ci = accuracy_ci(acc)
            diff = "—"
            if reference is not None:
                diff = format_difference(*paired_difference(acc, np.asarray(summary["accuracies"][reference][shot])))
            cells.append(f"{mean:.2f} ± {ci:.2f} | {diff}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {reference or '—'} | {row['episodes_per_s']:.1f} | "
                     f"{row['peak_rss_mib']:.0f} |")
    budget = config.steps * config.episodes_per_step
    return (f"Every row trained on {budget} episodes (5-way 1-shot, {config.query} queries per class; untrained rows: "
            f"one step at lr 0), scored on the same {config.episodes} test episodes per shot; Δ = paired difference "
            "to the row named, bold where its 95% CI excludes 0.\n\n" + "\n".join(lines))


def _arguments(p: Any) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--one", type=Path, help=__import__("argparse").SUPPRESS)


def _run(args: Any) -> int:
    if args.one is not None:  # the child process of one row
        print("BENCH " + json.dumps(train_row(args.one)), flush=True)
        return 0
    from fsar.config import resolve

    run(resolve(EndToEndBenchConfig, file=args.config, overrides=args.overrides, flags={"out": args.out}))
    return 0


COMMAND = Command("bench_end_to_end", "cached against end-to-end training of OTAM, A2M2 and DMGAL", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.end_to_end")


if __name__ == "__main__":
    raise SystemExit(main())
