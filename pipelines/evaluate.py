"""Evaluate methods and trained runs on one fixed, materialised set of episodes, from a feature store or a
manifest's decoded videos.

``python -m pipelines.evaluate --config eval.yaml [key=value ...]`` or ``fsar eval``. The episodes are
written once to ``<out>/episodes-….json`` and reused by every later evaluation into the same folder, so
all methods are scored on the very same episodes. Every video of the split is encoded once per method
(``fsar.evaluation.scoring``). Writes ``results.json``, ``per_episode.parquet``, ``results.md`` (with
paired differences to ``reference``) and ``results.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fsar.config import ConfigError, dump_yaml, resolve
from fsar.data.episodes import EpisodeSampler, read_episode_file, write_episode_file
from fsar.evaluation.results import (
    PER_EPISODE_FILE,
    ResultRecord,
    accuracy_ci,
    format_table,
    plot_results,
    read_per_episode,
    write_per_episode,
    write_results,
)
from fsar.evaluation.scoring import episode_accuracies
from fsar.methods import FewShotMethod
from fsar.training.checkpoint import load_checkpoint
from fsar.training.config import ManifestData, StoreData, resolve_device
from pipelines.command import Command, data_flags, flags, run_alone

PIXEL_EPISODE_BATCH = 64  # end-to-end methods: episodes per head call (DMGAL's last stage runs per episode)


@dataclass
class EvalConfig:
    """``fsar eval``: which methods, on which data, on which episodes."""

    MOVED_KEYS: ClassVar[dict[str, str]] = {"store": "data.store", "manifest": "data.manifest", "view": "data.view",
                                            "frames": "data.frames"}

    out: Path  # output folder: results.json, results.md, the episode file, the resolved config
    data: StoreData | ManifestData  # {store: ...} (cached-feature methods) or {manifest: ...} (end-to-end methods)
    methods: list[str] = field(default_factory=list)  # untrained methods, by registered name
    runs: list[Path] = field(default_factory=list)  # trained runs (folders holding best.pt, or .pt files)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method knobs, e.g. {otam: {gamma: 0.05}}
    split: str = "test"  # split the episodes are drawn from
    way: int = 5  # classes per episode
    shot: int = 1  # support videos per class
    query: int = 1  # query videos per class
    episodes: int = 10000  # number of test episodes
    seed: int = 0  # episode seed
    batch_size: int = 500  # episodes per forward
    dataset: str = ""  # name in results.json (default: the store's folder, or the manifest's)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    device: str = "auto"  # where methods run: auto (CUDA when present), cpu, cuda, cuda:N
    reference: str = ""  # method (results.json name) the paired differences in results.md are taken against; default the first


def episode_file_name(config: EvalConfig) -> str:
    return f"episodes-{config.split}-{config.way}way{config.shot}shot{config.query}q-n{config.episodes}-seed{config.seed}.json"


@dataclass
class Candidate:
    """One method or trained run to score, and the data key of what it reads."""

    label: str  # row name in the results table
    run: str | None  # run folder or checkpoint, None for an untrained method
    method: FewShotMethod  # built (and, for a run, loaded)
    key: Any  # what it reads: a store view, or a frame count and pixel pipeline


def open_evaluation(config: EvalConfig) -> Any:
    """The evaluation side of the config's episode source: a store's split or a manifest's decoded split."""
    if isinstance(config.data, StoreData):
        from fsar.sources.features import StoreEvaluation

        return StoreEvaluation(config.data, config.split)
    from fsar.sources.pixels import PixelEvaluation

    return PixelEvaluation(config.data, config.split)


def _candidates(config: EvalConfig, data: Any) -> list[Candidate]:
    """What to score; checks everything (names, knobs, runs against the data) before any episode runs."""
    out: list[Candidate] = []
    for name in config.methods:
        knobs = config.knobs.get(name, {})
        method, key = data.build(name, knobs)  # unknown names and bad knobs fail here
        label = name + (f"[{', '.join(f'{k}={v}' for k, v in sorted(knobs.items()))}]" if knobs else "")
        out.append(Candidate(label, None, method, key))
    for run_path in config.runs:
        method, payload = load_checkpoint(run_path)
        key = data.accept(method, payload, str(run_path))
        folder = Path(run_path).parent.name if Path(run_path).suffix == ".pt" else Path(run_path).name
        label = f"{payload['method']} (trained" + ("" if folder == payload["method"] else f": {folder}") + ")"
        out.append(Candidate(label, str(run_path), method, key))
    if not out:
        raise ConfigError("nothing to evaluate: give --method NAME and/or --run RUN")
    return out


def run(config: EvalConfig, *, progress: bool = True) -> list[ResultRecord]:
    """Evaluate every method and trained run of ``config`` on the same episodes; returns and writes the records."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = open_evaluation(config)
    candidates = _candidates(config, data)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / f"eval_config-{config.shot}shot.yaml")
    video_ids = data.video_ids(candidates[0].key)  # (decodes a manifest's split: its usable videos)
    episode_path = out / episode_file_name(config)
    if episode_path.is_file():
        episodes, _ = read_episode_file(episode_path, video_ids, data.labels)
    else:
        sampler = EpisodeSampler(data.labels, way=config.way, shot=config.shot, query=config.query,
                                 seed=config.seed, class_names=data.class_names, split=config.split)
        episodes = sampler.batch(0, config.episodes)
        write_episode_file(episode_path, episodes, video_ids,
                           meta={"seed": config.seed, "split": config.split, **data.describe()})
    pixels = isinstance(config.data, ManifestData)
    batch_size = min(config.batch_size, PIXEL_EPISODE_BATCH) if pixels else config.batch_size
    source_path = config.data.manifest if pixels else config.data.store  # type: ignore[union-attr]
    dataset = config.dataset or (Path(source_path).resolve().parent.name if pixels else Path(source_path).name)
    records, per_episode = [], {}
    for cand in candidates:
        start = time.perf_counter()
        acc = episode_accuracies(cand.method.to(device), data.split_for(cand.key), episodes, device=device,
                                 class_text=data.class_text, batch_size=batch_size, progress=progress, desc=cand.label)
        mean, ci = accuracy_ci(acc)
        per_episode[(cand.label, config.shot)] = acc
        records.append(ResultRecord(
            method=cand.label, dataset=dataset, split=config.split, way=config.way, shot=config.shot,
            episodes=len(episodes), accuracy=mean, ci95=ci, seed=config.seed, store=str(source_path), run=cand.run,
            seconds=time.perf_counter() - start,
        ))
    write_per_episode(out / PER_EPISODE_FILE, per_episode)
    write_report(records, out, reference=config.reference or None)
    return records


def write_report(records: list[ResultRecord], out: Path, *, reference: str | None = None) -> None:
    """``results.json``, ``results.md`` (with paired differences to ``reference``, default the first method,
    when ``per_episode.parquet`` is there) and ``results.png`` (accuracy bars with 95% CI whiskers)."""
    write_results(records, out / "results.json")
    per_episode = read_per_episode(out / PER_EPISODE_FILE) if (out / PER_EPISODE_FILE).is_file() else None
    (out / "results.md").write_text(format_table(records, per_episode=per_episode, reference=reference) + "\n")
    plot_results(records, out / "results.png")


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=Path, help="feature store: cached-feature methods and runs (data.store)")
    p.add_argument("--manifest", type=Path,
                   help="end-to-end (pixels) methods and runs: decode these videos instead of a store (data.manifest)")
    p.add_argument("--out", type=Path)
    p.add_argument("--method", dest="methods", action="append", help="untrained method name (repeatable)")
    p.add_argument("--run", dest="runs", action="append", type=Path, help="trained run folder or .pt (repeatable)")
    p.add_argument("--episodes", type=int)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=int)
    p.add_argument("--split")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="where methods run: auto (CUDA when present, the default), cpu, cuda, cuda:N")


def _run(args: Any) -> int:
    config = resolve(EvalConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "out", "methods", "runs", "episodes", "way", "shot", "split", "seed", "device")
                     | data_flags(args, "store", "manifest"))
    records = run(config)
    print(format_table(records))
    print(f"results: {Path(config.out) / 'results.json'}")
    return 0


COMMAND = Command("eval", "score methods on fixed seeded test episodes (accuracy ± 95%% CI)", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
