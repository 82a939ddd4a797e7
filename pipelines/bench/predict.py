"""Prediction on new videos, measured in one run: open-set quality, ``fsar predict`` against the embed bound, and
``fsar serve`` under load.

``python -m pipelines.bench.predict --out DIR [--classes 30 --videos-per-class 12 --requests 300]``

1. A case (``build_case``): synthetic videos, embedded by fsar-tiny with a 4×4 grid, an OTAM run trained on the
   train classes. Of the test classes, 5 give 5 example clips each (the supports); the queries are their other
   clips and every clip of the remaining test classes (classes not among the supports).
2. ``fsar predict`` of those queries (threshold calibrated on the run's validation classes for a 5 % false-accept
   rate): accuracy on the supports' classes (top-1, and accepted-and-right at the threshold) and the false-accept
   rate on the others.
3. Throughput: ``fsar predict`` of every video of the case against the embed bound — ``fsar embed`` of the same
   videos on the same engine, which does the decoding and encoding predict repeats (predict adds scoring and
   writing).
4. ``fsar serve`` on 127.0.0.1: ``--requests`` POST /classify of the query clips from ``--concurrency`` client
   threads; latency p50 and p99, and requests/s.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.command import Command, run_alone


@dataclass(frozen=True)
class OpenSetCase:
    """A trained run and an open-set prediction task on synthetic videos."""

    run: Path
    store: Path
    manifest: Path
    support: Path  # <support>/<class>/<clip>
    query: Path  # the other clips of the support classes, and every clip of the test classes left out
    truth: dict[str, str]  # query file name → its class
    known: tuple[str, ...]
    mlflow_uri: str


def build_case(root: Path, *, classes: int = 20, class_split: tuple[int, int, int] = (10, 4, 6),
               videos_per_class: int = 10, steps: int = 300, known: int = 5, shots: int = 5,
               workers: int = 1) -> OpenSetCase:
    """Videos, store, trained run, and the support and query folders (see the module docstring)."""
    from fsar.data.manifest import read_manifest
    from fsar.data.synthetic import SynthConfig, generate
    from pipelines.cli import main

    manifest = generate(SynthConfig(out=root / "data", classes=classes, videos_per_class=videos_per_class, frames=32,
                                    size=64, class_split=class_split, workers=workers), progress=False)
    store, run, uri = root / "store", root / "run", f"sqlite:///{root / 'mlflow.db'}"
    if main(["embed", "--manifest", str(manifest), "--out", str(store), "--backbone", "fsar-tiny", "--pretrained",
             "none", "--frames", "8", "--patch-grid", "4", "engine=local", "mlflow=false"]) != 0:
        raise RuntimeError("embedding the case's videos failed")
    if main(["train", "--store", str(store), "--method", "otam", "--out", str(run), "--steps", str(steps),
             "knobs.proj_dim=64", "data.view=grid", "knobs.temporal_centre=true", "val_every=50",
             "val_episodes=100", f"way={min(5, class_split[1] - 1)}", f"mlflow_uri={uri}"]) != 0:
        raise RuntimeError("training the case's run failed")
    test = [r for r in read_manifest(manifest).to_pylist() if r["split"] == "test"]
    names = tuple(sorted({r["class_name"] for r in test})[:known])
    support, query = root / "support", root / "query"
    truth: dict[str, str] = {}
    taken = dict.fromkeys(names, 0)
    for r in test:
        name = Path(r["path"]).name
        if r["class_name"] in names and taken[r["class_name"]] < shots:
            (support / r["class_name"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(r["path"], support / r["class_name"] / name)
            taken[r["class_name"]] += 1
        else:
            query.mkdir(parents=True, exist_ok=True)
            shutil.copy(r["path"], query / name)
            truth[name] = r["class_name"]
    return OpenSetCase(run, store, manifest, support, query, truth, names, uri)


def quality(case: OpenSetCase, out: Path) -> dict[str, float]:
    """Accuracy on the supports' classes and false accepts on the others, from a prediction folder."""
    from fsar.prediction.output import read_predictions

    rows = read_predictions(out).to_pylist()
    on_known = [r for r in rows if case.truth[r["video_id"]] in case.known]
    on_unknown = [r for r in rows if case.truth[r["video_id"]] not in case.known]
    return {"known_queries": len(on_known), "unknown_queries": len(on_unknown),
            "known_top1": float(np.mean([r["top_classes"][0] == case.truth[r["video_id"]] for r in on_known])),
            "known_accepted_right": float(np.mean([r["label"] == case.truth[r["video_id"]] for r in on_known])),
            "unknown_false_accept": float(np.mean([not r["unknown"] for r in on_unknown]))}


def bench_quality(case: OpenSetCase, work: Path) -> dict[str, Any]:
    """``fsar predict`` of the open-set queries (threshold calibrated on the run's validation classes)."""
    from pipelines.cli import main

    out = work / "open-set"
    if main(["predict", "--run", str(case.run), "--support", str(case.support), "--query", str(case.query),
             "--out", str(out), "engine=local", "mlflow=false"]) != 0:
        raise RuntimeError("fsar predict failed")
    summary = json.loads((out / "summary.json").read_text())
    return quality(case, out) | {"open_set": summary["open_set"]}


def bench_throughput(case: OpenSetCase, work: Path, *, engine: str) -> dict[str, Any]:
    """``fsar predict`` and ``fsar embed`` of every video of the case's manifest on one engine (the same decoding
    and encoding; predict adds scoring and writing): videos/s of each."""
    from fsar.data.manifest import manifest_rows, read_manifest
    from pipelines.cli import main

    threshold = json.loads((work / "open-set" / "summary.json").read_text())["open_set"]["threshold"]
    for folder in (work / f"predict-{engine}", work / f"embed-{engine}"):  # timed from nothing, not resumed
        shutil.rmtree(folder, ignore_errors=True)
    for path in read_manifest(case.manifest)["path"].to_pylist():  # both start from the page cache
        Path(path).read_bytes()
    if engine == "ray":  # Ray's start-up is the same for both and timed apart by pipelines.bench.throughput
        from pipelines.ray_runtime import init_ray

        init_ray()
    start = time.perf_counter()
    if main(["predict", "--run", str(case.run), "--support", str(case.support), "--query", str(case.manifest),
             "--out", str(work / f"predict-{engine}"), f"engine={engine}", "mlflow=false",
             f"threshold={threshold}"]) != 0:
        raise RuntimeError("fsar predict failed")
    predict_s = time.perf_counter() - start
    start = time.perf_counter()
    if main(["embed", "--manifest", str(case.manifest), "--out", str(work / f"embed-{engine}"), "--backbone",
             "fsar-tiny", "--pretrained", "none", "--frames", "8", "--patch-grid", "4", f"engine={engine}",
             "mlflow=false"]) != 0:
        raise RuntimeError("fsar embed failed")
    embed_s = time.perf_counter() - start
    n = manifest_rows(case.manifest)
    return {"engine": engine, "videos": n, "predict_s": predict_s, "embed_s": embed_s, "predict_per_s": n / predict_s,
            "embed_per_s": n / embed_s, "ratio": embed_s / predict_s}


def bench_serve(case: OpenSetCase, work: Path, *, requests: int, concurrency: int) -> dict[str, Any]:
    """Latency and throughput of POST /classify under a bounded load from a client in this process."""
    from ray import serve

    from pipelines.bench.local_s3 import free_port
    from pipelines.serve import ServeConfig, start

    url = start(ServeConfig(run=case.run, supports=work / "serve-supports", support_folder=case.support,
                            port=free_port()))
    bodies = [p.read_bytes() for p in sorted(case.query.iterdir())]

    def one(i: int) -> float:
        began = time.perf_counter()
        request = urllib.request.Request(f"{url}/classify", data=bodies[i % len(bodies)], method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            json.loads(response.read())
        return time.perf_counter() - began

    try:
        for i in range(concurrency):  # warm: the first requests build the replica's batches
            one(i)
        start_s = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            latencies = np.array(list(pool.map(one, range(requests))))
        wall = time.perf_counter() - start_s
    finally:
        serve.shutdown()
    return {"requests": requests, "concurrency": concurrency, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)), "requests_per_s": requests / wall}


def table(quality_row: dict[str, Any], rows: list[dict[str, Any]], serve_row: dict[str, Any] | None) -> str:
    q, cal = quality_row, quality_row["open_set"]
    lines = [f"Open set: {q['known_queries']} queries of the 5 support classes, {q['unknown_queries']} of test classes "
             f"not among them; threshold on the {cal['score']} for a {100 * cal['target_far']:.0f} % false-accept rate "
             f"on {cal['episodes']} validation episodes ({cal['way']}-way, its known accuracy there "
             f"{100 * cal['known_accuracy']:.1f} %):",
             f"  top-1 on known classes {100 * q['known_top1']:.1f} % (chance 20 %); accepted and right "
             f"{100 * q['known_accepted_right']:.1f} %; false accepts on unknown classes "
             f"{100 * q['unknown_false_accept']:.1f} %",
             "", "| engine | videos | fsar predict (videos/s) | fsar embed, same videos (videos/s) | predict / embed |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['videos']} | {r['predict_per_s']:.1f} | {r['embed_per_s']:.1f} | "
                     f"{r['ratio']:.2f} |")
    if serve_row:
        lines += ["", "| fsar serve | requests | concurrency | p50 (ms) | p99 (ms) | requests/s |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| POST /classify | {serve_row['requests']} | {serve_row['concurrency']} | {serve_row['p50_ms']:.0f} | "
                  f"{serve_row['p99_ms']:.0f} | {serve_row['requests_per_s']:.1f} |"]
    return "\n".join(lines)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", type=int, default=30)
    p.add_argument("--videos-per-class", dest="videos_per_class", type=int, default=12)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--engines", default="local,ray", help="comma-separated: local, ray")
    p.add_argument("--no-serve", dest="serve", action="store_false")


def _run(args: Any) -> int:
    out = args.out.resolve()
    test = max(6, round(args.classes / 3))
    val = max(4, round(args.classes / 5))
    case = build_case(out / "case", classes=args.classes, class_split=(args.classes - val - test, val, test),
                      videos_per_class=args.videos_per_class, steps=args.steps, workers=2)
    quality_row = bench_quality(case, out)
    rows = [bench_throughput(case, out, engine=e) for e in args.engines.split(",")]
    serve_row = bench_serve(case, out, requests=args.requests, concurrency=args.concurrency) if args.serve else None
    print(table(quality_row, rows, serve_row))
    (out / "predict.json").write_text(json.dumps({"quality": quality_row, "throughput": rows, "serve": serve_row},
                                                 indent=1) + "\n")
    return 0


COMMAND = Command("bench_predict", "open-set quality, fsar predict against the embed bound, fsar serve under load",
                  _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.predict")


if __name__ == "__main__":
    raise SystemExit(main())
