"""The embedded default, end to end, with no downloads.

synthetic motion videos with ground-truth actor masks → manifest → feature store (Ray Data; random-init
``fsar-tiny``, each frame's patch grid pooled to 4×4) → Ray Train, one budget for all: the baselines
ProtoNet and OTAM with a learned projection, and the three seed methods A2M2, I2ST (supervised by the
mask files) and the DMGAL head → evaluation of the untrained baselines and the trained runs on the same
seeded test episodes, 1-shot and 5-shot, with paired differences to trained OTAM →
``<out>/eval/results.json``, ``results.md``, ``results.png``, ``per_episode.parquet`` and MLflow runs in
``<out>/mlflow.db``.

With random weights the settings differ from the library's defaults (which suit pretrained CLIP features):
methods compare the flattened 4×4 grid or centre each video in time, because that is where motion shows.

Every stage resumes: a rerun skips the videos, shards and episode files already written (training
reruns, as its runs are cheap on cached features).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fsar.backbones import TINY_MODEL
from fsar.config import dump_yaml, resolve
from fsar.data.sections import StoreData
from fsar.evaluation.results import ResultRecord
from fsar.training.config import TrainConfig
from pipelines.command import Command, flags, run_alone

DEMO_REFERENCE = "otam (trained)"  # the row the demo's paired differences are taken against


@dataclass
class DemoConfig:
    """``fsar demo``: the synthetic default dataset and what to run on it."""

    out: Path = Path("fsar-demo")  # output folder (data, store, runs, eval, mlflow.db)
    classes: int = 100  # synthetic motion classes (64/12/24 train/val/test)
    videos_per_class: int = 20  # videos per class
    clip_frames: int = 32  # longest synthetic clip, in frames
    size: int = 64  # synthetic frame side in pixels (fsar-tiny sees 64 px)
    frames: int = 8  # frames sampled per video
    patch_grid: int = 4  # patch grid kept per frame (g×g): what carries motion for a random encoder
    view: Literal["pooled", "grid"] = "grid"  # what frame methods read: the flattened grid (random weights: motion shows there), not the literature's pooled default
    engine: Literal["ray", "local"] = "ray"  # embedding engine
    baselines: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "protonet": {}, "otam": {"temporal_centre": True}, "bimhm": {"temporal_centre": True},
    })  # scored untrained: method → knobs
    train: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "protonet": {"proj_dim": 256}, "otam": {"proj_dim": 256, "temporal_centre": True},
        "a2m2@paper": {"configuration": "paper"},
        "a2m2@fsar": {"configuration": "fsar", "fusion": 0.0},
        "i2st@paper": {"configuration": "paper", "dim": 64, "mask_source": "files", "mask_files": "{masks}"},
        "i2st@fsar": {"configuration": "fsar", "dim": 64, "mask_source": "files", "mask_files": "{masks}"},
        "dmgal@paper": {"configuration": "paper"},
        "dmgal@fsar": {"configuration": "fsar"},
    })  # trained with the same budget: method[@label] → knobs, each seed in its paper and its best configuration ("{masks}": the synthetic data's mask folder)
    steps: int = 300  # training steps per method
    lr: float = 3e-3  # learning rate (AdamW, warm-up then cosine decay)
    episodes_per_step: int = 16  # episodes per optimiser step, over all workers together
    workers: int = 0  # Ray Train workers per training run (0 = in-process, on all cores): speed, not the experiment; on 2 cores each worker group's ~20 s start-up is most of a short run
    threads_per_worker: int = 0  # torch threads of each training process (0: this machine's CPUs shared among them)
    shots: list[int] = field(default_factory=lambda: [1, 5])  # K of the 5-way K-shot evaluations
    episodes: int = 10000  # test episodes per setting
    seed: int = 0  # data, training and episode seed


def run(config: DemoConfig, *, progress: bool = True, address: str | None = None) -> list[ResultRecord]:
    """Synth → embed → train → evaluate under ``config.out``; ``address`` names a Ray cluster (default:
    ``RAY_ADDRESS``, else a local instance)."""
    from fsar.data.synthetic import SynthConfig, generate
    from fsar.embedding import EmbedConfig
    from pipelines.embed import run as embed
    from pipelines.evaluate import EvalConfig
    from pipelines.experiment import train_and_evaluate

    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "demo_config.yaml")
    timings: dict[str, float] = {}

    def stage(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        result = fn()
        timings[name] = time.perf_counter() - start
        return result

    manifest = stage("synth", lambda: generate(
        SynthConfig(out=out / "data", classes=config.classes, videos_per_class=config.videos_per_class,
                    frames=config.clip_frames, size=config.size, seed=config.seed, masks=True), progress=progress))
    store = out / "store"
    stage("embed", lambda: embed(EmbedConfig(
        manifest=manifest, out=store, backbone=TINY_MODEL, pretrained="none", frames=config.frames,
        patch_grid=config.patch_grid, engine=config.engine, mlflow_uri=f"sqlite:///{out / 'mlflow.db'}",
        experiment="fsar-demo"), progress=progress, address=address))
    runs = {key: TrainConfig(
        data=StoreData(store=store, backbone=TINY_MODEL, view=config.view), method=key.split("@")[0],
        out=out / "runs" / key, knobs={k: str(out / "data" / "masks") if v == "{masks}" else v for k, v in knobs.items()},
        steps=config.steps, episodes_per_step=config.episodes_per_step, lr=config.lr, workers=config.workers,
        threads_per_worker=config.threads_per_worker or max(1, (os.cpu_count() or 1) // max(1, config.workers)),
        seed=config.seed, mlflow_uri=f"sqlite:///{out / 'mlflow.db'}", experiment="fsar-demo")
        for key, knobs in config.train.items()}
    evaluation = EvalConfig(data=StoreData(store=store, view=config.view), out=out / "eval",
                            methods=list(config.baselines),
                            knobs={k: dict(v) for k, v in config.baselines.items() if v}, shot=list(config.shots),
                            episodes=config.episodes, seed=config.seed, dataset="fsar-synth",
                            reference=DEMO_REFERENCE, mlflow_uri=f"sqlite:///{out / 'mlflow.db'}",
                            experiment="fsar-demo")
    start = time.perf_counter()
    trained, records = train_and_evaluate(runs, evaluation, address=address, progress=progress,
                                          announce=lambda line: print(line, flush=True))
    timings |= {f"train {name}": run.seconds for name, run in trained.items()}
    timings["evaluate"] = time.perf_counter() - start - sum(run.seconds for run in trained.values())
    print((out / "eval" / "results.md").read_text())
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f" (total {sum(timings.values()):.0f} s)")
    print(f"results: {out / 'eval' / 'results.json'}, plot: {out / 'eval' / 'results.png'}, "
          f"MLflow: sqlite:///{out / 'mlflow.db'}")
    return records


def _arguments(p: Any) -> None:
    p.add_argument("--out", type=Path)
    p.add_argument("--episodes", type=int)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    run(resolve(DemoConfig, file=args.config, overrides=args.overrides, flags=flags(args, "out", "episodes")),
        address=args.address)
    return 0


COMMAND = Command("demo", "the embedded default end to end: synth → embed → train baselines and seeds → evaluate",
                  _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
