"""``fsar reproduce`` on a synthetic tree laid out like a benchmark, at the embedded default, run twice.

``python -m pipelines.bench.reproduce --out DIR [--families otam,a2m2-fsar --steps 150 --episodes 2000]``

It writes the synthetic motion dataset (the demo's: 100 classes split 64/12/24, 64 px), split lists naming its
videos in the ``ucf_arn`` layout (``fsar.data.split_lists.write_split_lists``), then runs ``fsar reproduce`` with
``smoke=true`` (every encoder swapped for the offline, random-init ``fsar-tiny``) and the training budget
given here for every recipe, and prints the wall time of each stage and the table. Then it runs the same command
again and prints which stages ran the second time (none should).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.command import Command, run_alone


def run(out: Path, *, families: list[str], steps: int, episodes: int, threads: int) -> dict[str, Any]:
    from fsar.data.split_lists import write_split_lists
    from fsar.data.synthetic import SynthConfig, generate
    from pipelines.reproduce import ReproduceConfig
    from pipelines.reproduce import run as reproduce

    out = out.resolve()
    manifest = generate(SynthConfig(out=out / "data", classes=100, class_split=(64, 12, 24), videos_per_class=12,
                                    frames=32, size=64), progress=True)
    splits = write_split_lists(manifest, out / "splits", "ucf_arn")
    config = ReproduceConfig(
        recipe_set="ucf_arn", data=out / "data" / "videos", out=out / "reproduce", splits=splits, families=families,
        episodes=episodes, smoke=True, threads=threads, embed={"engine": "local"},
        train={"steps": steps, "episodes_per_step": 8, "query": 2, "warmup_steps": 10, "val_every": max(1, steps // 3),
               "val_episodes": 200, "workers": 0, "threads_per_worker": threads})
    first = reproduce(config)
    print(stage_table(first["stages"], "first run"))
    second = reproduce(config)
    print(stage_table(second["stages"], "second run (the same command)"))
    result = {"first": first["stages"], "second": second["stages"], "table": (config.out / "reproduce.md").read_text()}
    (out / "bench_reproduce.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def stage_table(stages: dict[str, Any], title: str) -> str:
    lines = [f"{title}:", "", "| stage | ran | wall (s) |", "|---|---|---:|"]
    lines += [f"| {name} | {'yes' if s['ran'] else 'no'} | {s['seconds']:.1f} |" for name, s in stages.items()]
    total = sum(s["seconds"] for s in stages.values())
    return "\n".join([*lines, f"| total | {sum(s['ran'] for s in stages.values())} ran | {total:.1f} |", ""])


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--families", default="otam,a2m2-fsar,clip_fsar,dmgal_adapter-fsar")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)


def _run(args: Any) -> int:
    run(args.out, families=[f for f in args.families.split(",") if f], steps=args.steps, episodes=args.episodes,
        threads=args.threads)
    return 0


COMMAND = Command("bench_reproduce", "fsar reproduce on a synthetic benchmark tree, then its resumed rerun",
                  _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.reproduce")


if __name__ == "__main__":
    raise SystemExit(main())
