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
from fsar.eval import (
    PER_EPISODE_FILE,
    ResultRecord,
    accuracy_ci,
    episode_accuracies,
    format_table,
    plot_results,
    read_per_episode,
    write_per_episode,
    write_results,
)
from fsar.methods import build_method, method_info
from fsar.training import load_checkpoint, resolve_device


@dataclass
class EvalConfig:
    """``fsar eval``: which methods, on which store, on which episodes."""

    out: Path  # output folder: results.json, results.md, the episode file, the resolved config
    store: Path | None = None  # feature store folder (from `fsar embed`), for cached-feature methods
    manifest: Path | None = None  # manifest.parquet, for end-to-end (pixels) methods and runs instead of a store
    methods: list[str] = field(default_factory=list)  # untrained methods, by registered name
    runs: list[Path] = field(default_factory=list)  # trained runs (folders holding best.pt, or .pt files)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method knobs, e.g. {otam: {gamma: 0.05}}
    split: str = "test"  # split the episodes are drawn from
    way: int = 5  # classes per episode
    shot: int = 1  # support videos per class
    query: int = 1  # query videos per class
    episodes: int = 10000  # number of test episodes
    seed: int = 0  # episode seed
    view: Literal["auto", "pooled", "grid"] = "auto"  # frame methods' features: pooled embedding or flattened patch grid (patch methods read the grid)
    batch_size: int = 500  # episodes per forward
    dataset: str = ""  # name in results.json (default: the store folder's name)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    device: str = "auto"  # where methods run: auto (CUDA when present), cpu, cuda, cuda:N
    reference: str = ""  # method (results.json name) the paired differences in results.md are taken against; default the first
    frames: int = 8  # pixels methods given by name: frames decoded per video (a run uses its training value)


def episode_file_name(config: EvalConfig) -> str:
    return f"episodes-{config.split}-{config.way}way{config.shot}shot{config.query}q-n{config.episodes}-seed{config.seed}.json"


@dataclass
class Candidate:
    """One method or trained run to score, and the features it reads."""

    label: str  # row name in the results table
    run: str | None  # run folder or checkpoint, None for an untrained method
    view: str  # store view the method reads
    as_grid: bool  # patch methods get pooled features as a 1x1 grid
    make: Any  # feature_dim -> method


def _candidates(config: EvalConfig, store: FeatureStore) -> list[Candidate]:
    """What to score; checks everything (names, knobs, runs against the store) before any episode runs."""
    out: list[Candidate] = []
    for name in config.methods:
        info = method_info(name)  # unknown names fail here
        if info.input_kind == "pixels":
            raise ConfigError(f"method {name} is end-to-end (input: pixels): evaluate it with --manifest, not --store")
        view = store.meta.view_for(info.input_kind, config.view if info.input_kind == "frames" else "auto")
        knobs = config.knobs.get(name, {})
        text_dim = store.text_dim()
        if info.needs_text and text_dim is None:
            raise FeatureStoreError(f"method {name} needs class-name text embeddings but store {store.root} has none: "
                                    "re-embed with a CLIP backbone that has a text tower")
        build_method(name, feature_dim=store.meta.view_dim(view), text_dim=text_dim, **knobs)  # bad knobs fail here
        label = name + (f"[{', '.join(f'{k}={v}' for k, v in sorted(knobs.items()))}]" if knobs else "")
        out.append(Candidate(label, None, view, info.input_kind == "patches",
                             lambda dim, name=name, knobs=knobs, text_dim=text_dim: build_method(
                                 name, feature_dim=dim, text_dim=text_dim, **knobs)))
    for run_path in config.runs:
        method, payload = load_checkpoint(run_path)
        meta = payload["store_meta"]
        if meta is None:  # an end-to-end (pixels) run: no store behind it
            raise ConfigError(f"run {run_path} trained {payload['method']} end to end: evaluate it with --manifest")
        if (meta["backbone"], meta["pretrained"]) != (store.meta.backbone, store.meta.pretrained):
            raise FeatureStoreError(
                f"run {run_path} was trained on {meta['backbone']}/{meta['pretrained']} features but store "
                f"{store.root} holds {store.meta.backbone}/{store.meta.pretrained}: evaluate it on a matching store"
            )
        view = store.meta.view_for(method.input_kind, payload.get("view", "auto"))
        if payload.get("resolved_view", view) != view:
            raise FeatureStoreError(
                f"run {run_path} was trained on the {payload['resolved_view']!r} view but store {store.root} "
                f"gives it {view!r}: evaluate it on a store with the same features"
            )
        folder = Path(run_path).parent.name if Path(run_path).suffix == ".pt" else Path(run_path).name
        label = f"{payload['method']} (trained" + ("" if folder == payload["method"] else f": {folder}") + ")"
        out.append(Candidate(label, str(run_path), view, method.input_kind == "patches",
                             lambda dim, method=method: method))
    if not out:
        raise ConfigError("nothing to evaluate: give --method NAME and/or --run RUN")
    return out


def run(config: EvalConfig, *, progress: bool = True) -> list[ResultRecord]:
    """Evaluate every method and trained run of ``config`` on the same episodes; returns and writes the records."""
    if config.manifest is not None or config.store is None:  # end-to-end (pixels) methods: decoded videos
        from pipelines.evaluate_frames import run_frames

        return run_frames(config, progress=progress)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    store = FeatureStore(config.store)
    candidates = _candidates(config, store)
    labels, class_names = store.split_labels(config.split)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / f"eval_config-{config.shot}shot.yaml")
    features: dict[tuple[str, bool], Any] = {}

    def split_features(view: str, as_grid: bool) -> Any:
        if (view, as_grid) not in features:
            features[(view, as_grid)] = store.load_split(config.split, view=view, as_grid=as_grid)  # type: ignore[arg-type]
        return features[(view, as_grid)]

    first = split_features(candidates[0].view, candidates[0].as_grid)
    episode_path = out / episode_file_name(config)
    if episode_path.is_file():
        episodes, _ = read_episode_file(episode_path, first.video_ids, labels)
    else:
        sampler = EpisodeSampler(labels, way=config.way, shot=config.shot, query=config.query,
                                 seed=config.seed, class_names=class_names, split=config.split)
        episodes = sampler.batch(0, config.episodes)
        write_episode_file(episode_path, episodes, first.video_ids,
                           meta={"seed": config.seed, "split": config.split, "store": str(config.store)})
    text = store.class_text()
    text = None if text is None else torch.from_numpy(text)
    records, per_episode = [], {}
    for cand in candidates:
        split = split_features(cand.view, cand.as_grid)
        method = cand.make(split.features.shape[-1]).to(device)
        start = time.perf_counter()
        # Features stay fp16 on the host; each chunk is cast on the device as it is encoded.
        acc = episode_accuracies(method, split.features, episodes, batch_size=config.batch_size, progress=progress,
                                 desc=cand.label, class_text=text, device=device)
        seconds = time.perf_counter() - start
        mean, ci = accuracy_ci(acc)
        per_episode[(cand.label, config.shot)] = acc
        records.append(ResultRecord(
            method=cand.label, dataset=config.dataset or Path(config.store).name, split=config.split, way=config.way,
            shot=config.shot, episodes=len(episodes), accuracy=mean, ci95=ci, seed=config.seed,
            store=str(config.store), run=cand.run, seconds=seconds,
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


def main(argv: list[str] | None = None) -> int:
    from fsar.cli import main as cli_main

    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
