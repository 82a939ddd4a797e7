"""Benchmarks, measured in one run on this machine and printed as ratios and rates.

``python -m pipelines.bench.throughput [--videos-per-class 5 --classes 40 --episodes 10000]``, or
``python -m pipelines.bench.throughput --store STORE --methods otam,a2m2`` for the evaluation figures alone.

1. Embedding: decode alone (sampled frames → uint8 centre squares), encode alone (resize, normalise and
   the backbone, on the encoder's device), and the Ray Data pipeline on the same videos (videos/s);
   pipeline efficiency = pipeline rate / min(decode rate, encode rate), and against the bound of both halves
   sharing the same cores, 1 / (1/decode + 1/encode). Ray start-up is timed apart.
2. Training from cached features: episodes/s of the in-process loop (OTAM with a learned projection).
3. Evaluation from cached features: episodes/s for 10,000 5-way 1-shot episodes per method (each on the
   features it reads: OTAM the flattened grid, A2M2 the patch grid) and its parameter count; ``--shots 1,5``
   adds other shot counts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.command import Command, run_alone


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_embedding(manifest: Path, work: Path) -> dict[str, float]:
    from fsar.backbones import TINY_MODEL
    from fsar.backbones.encode import encode_clips
    from fsar.data.manifest import read_manifest
    from fsar.embedding import EmbedConfig, decode_record, load_backbone
    from pipelines.embed import run_ray
    from pipelines.ray_runtime import init_ray

    config = EmbedConfig(manifest=manifest, out=work / "store", backbone=TINY_MODEL, pretrained="none", frames=8,
                         patch_grid=4, batch_size=32)
    rows = read_manifest(manifest).to_pylist()
    backbone = load_backbone(config)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        records = list(pool.map(lambda r: decode_record(r, config), rows))
    decode_s = time.perf_counter() - start
    clips = [r["clip"] for r in records if not r["error"]]
    start = time.perf_counter()
    for i in range(0, len(clips), config.batch_size):
        encode_clips(backbone, clips[i : i + config.batch_size], patch_grid=config.patch_grid)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    init_ray()
    ray_start_s = time.perf_counter() - start
    # A first, small job starts Ray's worker processes (torch and open_clip imports, the model): two chunks
    # per core, so that every worker the measured job uses is warm, and the rate below is the pipeline's,
    # not start-up's.
    from fsar.data.manifest import write_manifest

    warm_videos = 2 * (os.cpu_count() or 1) * config.batch_size
    warm = write_manifest(read_manifest(manifest, resolve_paths=True).slice(0, warm_videos), work / "warm.parquet")
    start = time.perf_counter()
    run_ray(dataclasses.replace(config, manifest=warm, out=work / "warm-store"), progress=False)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = run_ray(config, progress=False)
    pipeline_s = time.perf_counter() - start
    decode, encode, pipe = _rate(len(rows), decode_s), _rate(len(clips), encode_s), _rate(summary.videos, pipeline_s)
    return {"videos": len(rows), "decode_videos_per_s": decode, "encode_videos_per_s": encode,
            "pipeline_videos_per_s": pipe, "pipeline_efficiency": pipe / min(decode, encode),
            # Decode and encode each use every core when measured alone; in the pipeline they share them, so
            # the bound is one video's decode time plus its encode time: 1 / (1/decode + 1/encode).
            "pipeline_vs_shared_core_bound": pipe * (1 / decode + 1 / encode), "ray_start_s": ray_start_s,
            "first_job_s": warm_s}


def bench_training(store: Path, work: Path, *, steps: int) -> dict[str, float]:
    from fsar.data.sections import StoreData
    from fsar.training.config import TrainConfig
    from fsar.training.loop import train_worker

    reports: list[dict[str, float]] = []
    config = TrainConfig(data=StoreData(store=store), method="otam", out=work / "run", knobs={"proj_dim": 256}, steps=steps,
                         episodes_per_step=8, val_every=steps, val_episodes=100, threads_per_worker=os.cpu_count() or 1)
    train_worker(config, report=lambda m, p: reports.append(m))
    return {"train_episodes_per_s": reports[-1]["episodes_per_s"]}


def bench_evaluation(store: Path, *, episodes: int, methods: list[str], shots: tuple[int, ...] = (1,)
                     ) -> dict[str, float]:
    """Evaluation episodes/s of untrained methods (default knobs), each on the features it reads."""
    from fsar.data.episodes import EpisodeSampler
    from fsar.data.feature_store import FeatureStore
    from fsar.evaluation.scoring import episode_accuracies
    from fsar.methods import build_method, method_info

    feature_store = FeatureStore(store)
    text = feature_store.class_text()
    out = {}
    for name in methods:
        kind = method_info(name).input_kind
        split = feature_store.load_split("test", view=feature_store.meta.view_for(kind), as_grid=kind == "patches")
        feats = torch.from_numpy(split.features.astype(np.float32))
        method = build_method(name, feature_dim=feats.shape[-1])
        for shot in shots:
            eps = EpisodeSampler(split.labels, way=5, shot=shot, query=1, seed=0).batch(0, episodes)
            start = time.perf_counter()
            episode_accuracies(method, feats, eps, batch_size=1000,
                               class_text=None if text is None else torch.from_numpy(text))
            key = f"eval_{name}_episodes_per_s" if shot == 1 else f"eval_{name}_{shot}shot_episodes_per_s"
            out[key] = _rate(episodes, time.perf_counter() - start)
        out[f"{name}_parameters"] = float(sum(p.numel() for p in method.parameters()))
    return out


def _arguments(p: Any) -> None:
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--videos-per-class", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--episodes", type=int, default=10000)
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--methods", default="protonet,otam,bimhm,a2m2,trx")
    p.add_argument("--shots", default="1", help="comma-separated shot counts of the evaluation figures")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--store", type=Path, help="only the evaluation figures, on this existing feature store")


def _run(args: Any) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    shots = tuple(int(s) for s in args.shots.split(","))
    from fsar.data.synthetic import SynthConfig, generate

    if args.store is not None:
        return report(bench_evaluation(args.store, episodes=args.episodes, methods=args.methods.split(","),
                                       shots=shots))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        synth = SynthConfig(out=work / "data", classes=args.classes, videos_per_class=args.videos_per_class,
                            size=args.size, seed=0)
        start = time.perf_counter()
        manifest = generate(synth, progress=False)
        results: dict[str, float] = {"synth_videos_per_s": _rate(args.classes * args.videos_per_class,
                                                                 time.perf_counter() - start)}
        results |= bench_embedding(manifest, work)
        results |= bench_training(work / "store", work, steps=args.train_steps)
        results |= bench_evaluation(work / "store", episodes=args.episodes, methods=args.methods.split(","),
                                    shots=shots)
    return report(results)


COMMAND = Command("bench", "throughput benchmark: embed, train and evaluation rates on this machine", _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.throughput")


def report(results: dict[str, float]) -> int:
    print(f"fsar benchmark — {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}")
    print("| measure | value |\n|---|---:|")
    for key, value in results.items():
        print(f"| {key} | {value:,.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
