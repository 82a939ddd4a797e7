"""Store-scale benchmark: memory that grows with the store when a job reads one split's features.

``python -m pipelines.bench_scale [--videos 600,12000] [--out DIR]``. For each size it writes a store of
that many videos (synthetic fp16 features: 8 frames, a 4×4 grid of 512-d patches plus the pooled 512-d
embedding, 64/12/24 % of the classes in train/val/test, shards of 256 videos, splits interleaved as a
manifest would give them), then, each in a fresh process, measures the peak resident memory (sampled every millisecond) added by

- ``pruned``: ``FeatureStore.load_split("test", view="pooled")`` (what ``fsar eval`` of a frame method reads),
- ``whole table``: the read this replaced (every column of every shard in one table, the split's rows
  filtered out, their bytes joined),

and prints each as a multiple of the bytes of features actually read. The ratio is measured in one run;
absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FRAMES, GRID, DIM, SHARD = 8, 4, 512, 256

MEASURE = r"""
import json, os, sys, threading
import numpy as np
import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
from fsar.data.feature_store import FeatureStore
root, mode = sys.argv[1:]
store = FeatureStore(root)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base, highest, done = rss(), [0], threading.Event()
def sample():  # the peak of resident memory while the read runs, every millisecond
    while not done.is_set():
        highest[0] = max(highest[0], rss())
        done.wait(0.001)
sampler = threading.Thread(target=sample)
sampler.start()
if mode == "pruned":
    features = store.load_split("test", view="pooled").features
else:  # the old read: every column of every shard, then filter, bytes list and join
    table = pa.concat_tables([pq.read_table(p) for p in sorted(store.root.glob("shard-*.parquet"))])
    rows = table.filter(pc.equal(table["split"], "test"))
    features = np.frombuffer(b"".join(rows["frames"].to_pylist()), dtype="<f2")
done.set()
sampler.join()
print(json.dumps({"grown_bytes": max(highest[0], rss()) - base, "read_bytes": int(features.nbytes)}))
"""


def write_store(root: Path, videos: int, *, seed: int = 0) -> Path:
    """A store of ``videos`` synthetic videos (see the module docstring), written shard by shard."""
    from fsar.data.feature_store import StoreMeta, write_meta, write_shard

    rng = np.random.default_rng(seed)
    classes = max(10, videos // 20)
    split_of = np.where(np.arange(classes) < 0.64 * classes, "train",
                        np.where(np.arange(classes) < 0.76 * classes, "val", "test"))
    write_meta(root, StoreMeta(backbone="synthetic", pretrained=None, frames=FRAMES, embed_dim=DIM, patch_grid=GRID,
                               image_size=224))
    for shard, start in enumerate(range(0, videos, SHARD)):
        rows = []
        for v in range(start, min(videos, start + SHARD)):
            label = v % classes
            patches = rng.standard_normal((FRAMES, GRID, GRID, DIM), dtype=np.float32)
            rows.append({"video_id": f"v{v}", "label": label, "class_name": f"c{label}", "split": str(split_of[label]),
                         "num_frames": 32, "frame_indices": list(range(FRAMES)), "frames": patches.mean(axis=(1, 2)),
                         "patches": patches})
        write_shard(root, shard, rows)
    return root


def measure(root: Path, mode: str) -> dict[str, float]:
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root), mode], cwd=repo, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="600,12000", help="store sizes, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench-scale"))
    args = parser.parse_args(argv)
    lines = ["| videos | store (GB) | test features read (MB) | pruned: grown ÷ read | whole table: grown ÷ read |",
             "|---:|---:|---:|---:|---:|"]
    for videos in [int(v) for v in args.videos.split(",")]:
        root = args.out / f"store-{videos}"
        if not (root / "store.json").is_file():
            start = time.perf_counter()
            write_store(root, videos)
            print(f"wrote {root} in {time.perf_counter() - start:.0f} s", flush=True)
        size = sum(p.stat().st_size for p in root.glob("shard-*.parquet")) / 1e9
        pruned, whole = measure(root, "pruned"), measure(root, "whole")
        lines.append(f"| {videos} | {size:.2f} | {pruned['read_bytes'] / 1e6:.1f} | "
                     f"{pruned['grown_bytes'] / pruned['read_bytes']:.1f}× | "
                     f"{whole['grown_bytes'] / whole['read_bytes']:.1f}× |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
