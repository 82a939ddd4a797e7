"""Manifest-scale benchmark: ``fsar manifest`` on a tree of up to a million videos, and on split lists for it.

``python -m pipelines.bench.manifest [--videos 100000,1000000] [--out DIR]`` (default
``$TMPDIR/fsar-bench-manifest``). For each size it makes (once, then reuses) ``OUT/tree-N``:
``<class>/v<j>.mp4`` (every tenth ``.webm``), 1,000 class folders of N/1,000 empty files (lengths are not probed, so empty files are enough), and ``OUT/lists-N/ssv2_CMN/{train,val,
test}list03.txt`` listing the same videos (classes 0–639 train, 640–759 val, 760–999 test), the layout
``--splits DIR --benchmark ssv2_cmn`` reads. Then, each in a fresh process, it runs

- ``folder tree``: ``fsar manifest --videos OUT/tree-N --out X.parquet``,
- ``split lists``: ``fsar manifest --videos OUT/tree-N --splits OUT/lists-N --benchmark ssv2_cmn --out X.parquet``,

both checking every path (the default), and prints wall seconds and peak resident memory (the process's
``ru_maxrss``) in one table, after the same two figures of a process that only imports the ``fsar`` command
(its job modules load torch: a fixed cost of every command, included in each peak). Measured in one run,
with the tree in the page cache (the second walk of it); a cold network file system is slower on the walk
and the path check. Video lengths are not probed (``num_frames`` stays null; ``fsar embed`` learns each
length when it decodes the video), so the size of the files plays no part.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.command import Command, run_alone

CLASSES = 1000
TRAIN, VAL = 640, 120  # classes of the train and val lists; the rest are test


def _class_name(c: int) -> str:
    return f"class_{c:04d}"


def _file_name(j: int) -> str:
    return f"v{j:07d}{'.webm' if j % 10 == 9 else '.mp4'}"


def make_tree(root: Path, videos: int) -> Path:
    """``root/<class>/<file>``: CLASSES class folders of ``videos // CLASSES`` empty video files."""
    per_class = max(1, videos // CLASSES)
    done = root / ".complete"
    if done.is_file():
        return root
    flags = os.O_CREAT | os.O_WRONLY
    for c in range(CLASSES):
        folder = root / _class_name(c)
        folder.mkdir(parents=True, exist_ok=True)
        base = str(folder)
        for j in range(per_class):
            os.close(os.open(os.path.join(base, _file_name(c * per_class + j)), flags, 0o644))
    done.touch()  # hidden, so the manifest skips it silently
    return root


def make_lists(root: Path, videos: int) -> Path:
    """``root/ssv2_CMN/{train,val,test}list03.txt`` naming every video of :func:`make_tree`'s tree."""
    per_class = max(1, videos // CLASSES)
    folder = root / "ssv2_CMN"
    folder.mkdir(parents=True, exist_ok=True)
    ranges = {"train": range(0, TRAIN), "val": range(TRAIN, TRAIN + VAL), "test": range(TRAIN + VAL, CLASSES)}
    for split, classes in ranges.items():
        path = folder / f"{split}list03.txt"
        if path.is_file():
            continue
        lines = (f"{_class_name(c)}/{os.path.splitext(_file_name(c * per_class + j))[0]}\n"
                 for c in classes for j in range(per_class))
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(path)
    return root


def run_manifest(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one ``fsar manifest`` in a fresh process."""
    return run_python(["-m", "pipelines.cli", "manifest", *args])


def run_python(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of ``python ARGS`` in a fresh process, run in the repository."""
    repo = Path(__file__).resolve().parents[2]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}:\n{out.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def _arguments(p: Any) -> None:
    p.add_argument("--videos", default="100000,1000000", help="tree sizes, comma-separated")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "fsar-bench-manifest",
                   help="where the trees go (a million files: keep it out of the repository)")


def _run(args: Any) -> int:
    seconds, peak = run_python(["-c", "import pipelines.cli"])
    print(f"importing the fsar command alone: {seconds:.1f} s, peak {peak:.0f} MB (included below)", flush=True)
    lines = ["| videos | folder tree (s) | folder tree peak (MB) | split lists (s) | split lists peak (MB) |",
             "|---:|---:|---:|---:|---:|"]
    for videos in [int(v) for v in args.videos.split(",")]:
        tree, lists = args.out / f"tree-{videos}", args.out / f"lists-{videos}"
        start = time.perf_counter()
        make_tree(tree, videos)
        make_lists(lists, videos)
        print(f"tree {tree} and lists {lists} ready in {time.perf_counter() - start:.0f} s", flush=True)
        out = args.out / f"manifest-{videos}.parquet"
        run_manifest(["--videos", str(tree), "--out", str(out)])  # warms the page cache for both runs
        folder = run_manifest(["--videos", str(tree), "--out", str(out)])
        listed = run_manifest(["--videos", str(tree), "--splits", str(lists), "--benchmark", "ssv2_cmn",
                               "--out", str(out)])
        lines.append(f"| {videos:,} | {folder[0]:.1f} | {folder[1]:.0f} | {listed[0]:.1f} | {listed[1]:.0f} |")
        print(lines[-1], flush=True)
    print(f"importing the fsar command alone: {seconds:.1f} s, peak {peak:.0f} MB (included above)")
    print("\n".join(lines))
    return 0


COMMAND = Command("bench_manifest", "manifest-scale benchmark: fsar manifest on up to 10^6 files", _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.manifest")


if __name__ == "__main__":
    raise SystemExit(main())
