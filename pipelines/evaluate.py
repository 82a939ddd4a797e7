"""Evaluate methods and trained runs on one fixed, materialised set of episodes drawn from a feature store.

``python -m pipelines.evaluate --config eval.yaml [key=value ...]`` or ``fsar eval``. The episodes are
written once to ``<out>/episodes-….json`` and reused by every later evaluation into the same folder, so
all methods are scored on the very same episodes. Writes ``results.json``, ``results.md`` and
``results.png``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fsar.config import ConfigError, dump_yaml
from fsar.data.episodes import EpisodeSampler, read_episode_file, write_episode_file
from fsar.data.feature_store import FeatureStore, FeatureStoreError
from fsar.eval import ResultRecord, accuracy_ci, episode_accuracies, format_table, plot_results, write_results
from fsar.methods import build_method, method_info
from fsar.training import load_checkpoint


@dataclass
class EvalConfig:
    """``fsar eval``: which methods, on which store, on which episodes."""

    store: Path  # feature store folder (from `fsar embed`)
    out: Path  # output folder: results.json, results.md, the episode file, the resolved config
    methods: list[str] = field(default_factory=list)  # untrained methods, by registered name
    runs: list[Path] = field(default_factory=list)  # trained runs (folders holding best.pt, or .pt files)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method knobs, e.g. {otam: {gamma: 0.05}}
    split: str = "test"  # split the episodes are drawn from
    way: int = 5  # classes per episode
    shot: int = 1  # support videos per class
    query: int = 1  # query videos per class
    episodes: int = 10000  # number of test episodes
    seed: int = 0  # episode seed
    view: Literal["auto", "pooled", "grid"] = "auto"  # per-frame features: pooled embedding or flattened patch grid
    batch_size: int = 500  # episodes per forward
    dataset: str = ""  # name in results.json (default: the store folder's name)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)


def episode_file_name(config: EvalConfig) -> str:
    return f"episodes-{config.split}-{config.way}way{config.shot}shot{config.query}q-n{config.episodes}-seed{config.seed}.json"


def _candidates(config: EvalConfig, store: FeatureStore, view: str) -> list[tuple[str, str | None, Any]]:
    """(label, run, builder) per method to score; checks everything before any episode runs."""
    out: list[tuple[str, str | None, Any]] = []
    for name in config.methods:
        info = method_info(name)  # unknown names fail here
        if info.input_kind != "frames":
            raise ConfigError(f"method {name} needs {info.input_kind} inputs; this evaluator reads frame features")
        knobs = config.knobs.get(name, {})
        label = name + (f"[{', '.join(f'{k}={v}' for k, v in sorted(knobs.items()))}]" if knobs else "")
        out.append((label, None, lambda dim, name=name, knobs=knobs: build_method(name, feature_dim=dim, **knobs)))
    for run_path in config.runs:
        method, payload = load_checkpoint(run_path)
        meta = payload["store_meta"]
        if (meta["backbone"], meta["pretrained"]) != (store.meta.backbone, store.meta.pretrained):
            raise FeatureStoreError(
                f"run {run_path} was trained on {meta['backbone']}/{meta['pretrained']} features but store "
                f"{store.root} holds {store.meta.backbone}/{store.meta.pretrained}: evaluate it on a matching store"
            )
        trained_view = payload.get("view", "auto")
        trained_view = (store.meta.default_view if trained_view == "auto" else trained_view)
        if trained_view != view:
            raise FeatureStoreError(f"run {run_path} was trained on the {trained_view!r} view; evaluate with view={trained_view}")
        folder = Path(run_path).parent.name if Path(run_path).suffix == ".pt" else Path(run_path).name
        label = f"{payload['method']} (trained" + ("" if folder == payload["method"] else f": {folder}") + ")"
        out.append((label, str(run_path), lambda dim, method=method: method))
    if not out:
        raise ConfigError("nothing to evaluate: give --method NAME and/or --run RUN")
    return out


def run(config: EvalConfig, *, progress: bool = True) -> list[ResultRecord]:
    """Evaluate every method and trained run of ``config`` on the same episodes; returns and writes the records."""
    if config.threads:
        torch.set_num_threads(config.threads)
    store = FeatureStore(config.store)
    view = store.meta.default_view if config.view == "auto" else config.view
    candidates = _candidates(config, store, view)
    split = store.load_split(config.split, view=view)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / f"eval_config-{config.shot}shot.yaml")
    episode_path = out / episode_file_name(config)
    if episode_path.is_file():
        episodes, _ = read_episode_file(episode_path, split.video_ids, split.labels)
    else:
        sampler = EpisodeSampler(split.labels, way=config.way, shot=config.shot, query=config.query,
                                 seed=config.seed, class_names=split.class_names, split=config.split)
        episodes = sampler.batch(0, config.episodes)
        write_episode_file(episode_path, episodes, split.video_ids,
                           meta={"seed": config.seed, "split": config.split, "store": str(config.store)})
    features = torch.from_numpy(split.features.astype("float32"))
    records = []
    for label, run_path, make in candidates:
        method = make(features.shape[-1])
        start = time.perf_counter()
        acc = episode_accuracies(method, features, episodes, batch_size=config.batch_size, progress=progress, desc=label)
        seconds = time.perf_counter() - start
        mean, ci = accuracy_ci(acc)
        records.append(ResultRecord(
            method=label, dataset=config.dataset or Path(config.store).name, split=config.split, way=config.way,
            shot=config.shot, episodes=len(episodes), accuracy=mean, ci95=ci, seed=config.seed,
            store=str(config.store), run=run_path, seconds=seconds,
        ))
    write_report(records, out)
    return records


def write_report(records: list[ResultRecord], out: Path) -> None:
    """``results.json``, ``results.md`` and ``results.png`` (accuracy bars with 95% CI whiskers)."""
    write_results(records, out / "results.json")
    (out / "results.md").write_text(format_table(records) + "\n")
    plot_results(records, out / "results.png")


def main(argv: list[str] | None = None) -> int:
    from fsar.cli import main as cli_main

    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
