"""Evaluate methods and trained runs on one fixed, materialised set of episodes, from a feature store or a
manifest's decoded videos.

``python -m pipelines.evaluate --config eval.yaml [key=value ...]`` or ``fsar eval``. The episodes are
written once to ``<out>/episodes-….json`` and reused by every later evaluation into the same folder, so
all methods are scored on the very same episodes. Every video of the split is encoded once per method
(``fsar.evaluation.scoring``). ``shot: [1, 3, 5]`` (``--shot 1,3,5``) scores every method at each shot, on
that shot's own fixed episodes. Writes ``results.json``, ``per_episode.parquet``, ``results.md`` (with
paired differences to ``reference``) and ``results.png``, and logs the evaluation as one MLflow run (metrics
per method and shot, those files as artifacts, tagged with the MLflow runs of the trained runs it scored).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from fsar import storage
from fsar.config import ConfigError, dump_yaml, resolve
from fsar.data.episodes import EpisodeSampler, read_episode_file, write_episode_file
from fsar.data.sections import ManifestData, StoreData
from fsar.devices import resolve_device
from fsar.evaluation.results import (
    PER_EPISODE_FILE,
    ResultRecord,
    accuracy_ci,
    format_table,
    plot_results,
    read_per_episode,
    shot_table,
    write_per_episode,
    write_results,
)
from fsar.evaluation.scoring import episode_accuracies
from fsar.methods import FewShotMethod
from fsar.methods.registry import knobs_beside_configuration
from fsar.run_folder import RunFolder
from fsar.sources import open_evaluation
from fsar.sources.base import EvaluationSource, SplitKey
from fsar.storage import Location, as_location
from fsar.training.checkpoint import load_checkpoint
from pipelines.command import Command, data_flags, flags, run_alone


@dataclass
class EvalConfig:
    """``fsar eval``: which methods, on which data, on which episodes."""

    # How a user gives each required key on the command line (named when one is missing).
    MISSING_HINTS: ClassVar[dict[str, str]] = {
        "data": "give --store STORE (cached features) or --manifest MANIFEST (videos, end to end)",
        "method": "give --method NAME (fsar methods lists them)", "out": "give --out DIR",
    }
    MOVED_KEYS: ClassVar[dict[str, str]] = {"store": "data.store", "manifest": "data.manifest", "view": "data.view",
                                            "frames": "data.frames"}

    out: Location  # output folder or URI: results.json, results.md, the episode file, the resolved config
    data: StoreData | ManifestData  # {store: ...} (cached-feature methods) or {manifest: ...} (end-to-end methods)
    methods: list[str] = field(default_factory=list)  # untrained methods, by registered name
    runs: list[Location] = field(default_factory=list)  # trained runs (folders holding best.pt, or .pt files; or URIs)
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method knobs, e.g. {otam: {gamma: 0.05}}
    split: str = "test"  # split the episodes are drawn from
    way: int = 5  # classes per episode
    shot: int | list[int] = 1  # support videos per class; a list ([1, 3, 5], `--shot 1,3,5`) scores each in turn
    query: int = 1  # query videos per class
    drop_small_classes: bool = False  # leave out classes with fewer than shot + query videos (default: refuse them, named)
    episodes: int = 10000  # number of test episodes
    seed: int = 0  # episode seed
    batch_size: int = 500  # episodes per forward
    dataset: str = ""  # name in results.json (default: the store's folder, or the manifest's)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    device: str = "auto"  # where methods run: auto (CUDA when present), cpu, cuda, cuda:N
    reference: str = ""  # method (results.json name) the paired differences in results.md are taken against; default the first
    mlflow: bool = True  # log the evaluation as an MLflow run
    mlflow_uri: str | None = None  # MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite file in `out`)
    experiment: str = "fsar-eval"  # MLflow experiment name

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        shots = self.shots()
        if not shots or any(s < 1 for s in shots) or len(set(shots)) != len(shots):
            raise ConfigError(f"shot must be a positive number or a list of distinct ones (e.g. 1,3,5), got {self.shot}")

    def shots(self) -> list[int]:
        return [self.shot] if isinstance(self.shot, int) else list(self.shot)


def episode_file_name(config: EvalConfig) -> str:
    return f"episodes-{config.split}-{config.way}way{config.shot}shot{config.query}q-n{config.episodes}-seed{config.seed}.json"


@dataclass
class Candidate:
    """One method or trained run to score, and the data key of what it reads."""

    label: str  # row name in the results table
    run: str | None  # run folder or checkpoint, None for an untrained method
    method: FewShotMethod  # built (and, for a run, loaded)
    key: SplitKey  # what it reads: a store view, or a frame count and pixel pipeline
    trained_on: str | None = None  # a run: the store or manifest it was trained on
    mlflow_run_id: str | None = None  # a run: its MLflow run, when it kept the id


def _candidates(config: EvalConfig, data: EvaluationSource) -> list[Candidate]:
    """What to score; checks everything (names, knobs, runs against the data) before any episode runs."""
    out: list[Candidate] = []
    for name in config.methods:
        knobs = dict(config.knobs.get(name, {}))
        method, key = data.build(name, knobs)  # unknown names and bad knobs fail here
        knobs.pop("configuration", None)
        out.append(Candidate(method_label(name, method.configuration, knobs), None, method, key))
    for run_path in config.runs:
        method, payload = load_checkpoint(run_path)
        key = data.accept(method, payload, str(run_path))
        run = RunFolder.of_checkpoint(run_path)
        # A configured run names the knobs it changed; others keep the run folder's name as their label.
        changed = {} if not method.configuration else {
            k: v for k, v in knobs_beside_configuration(payload["method"], method.configuration, payload["knobs"]).items()
            if k not in LOCATION_KNOBS}
        # The run folder is named in the row unless it only repeats the method (and its configuration).
        plain = run.name in (payload["method"], f"{payload['method']}@{method.configuration}")
        stage = payload.get("stage")  # an end-to-end run names its encoder and how it was tuned
        label = (method_label(payload["method"], method.configuration, changed)
                 + (f" on {stage['backbone']} {stage['tune']}" if stage else "") + " (trained"
                 + ("" if plain else f": {run.name}") + ")")
        data_section = payload.get("train_config", {}).get("data", {})
        out.append(Candidate(label, str(run_path), method, key,
                             trained_on=data_section.get("store") or data_section.get("manifest"),
                             mlflow_run_id=run.mlflow_run_id()))
    if not out:
        raise ConfigError("nothing to evaluate: give --method NAME and/or --run RUN")
    return out


LOCATION_KNOBS = ("mask_files",)  # knobs that name where data is, not what the method does: left out of labels


def method_label(name: str, configuration: str, knobs: dict[str, Any]) -> str:
    """A row's name: the method, then its configuration and the knobs set beside it, e.g.
    ``a2m2[fsar, fusion=0.0]``, ``otam[temporal_centre=True]``, ``protonet``."""
    parts = ([configuration] if configuration else []) + [f"{k}={v}" for k, v in sorted(knobs.items())]
    return name + (f"[{', '.join(parts)}]" if parts else "")


def run(config: EvalConfig, *, progress: bool = True) -> list[ResultRecord]:
    """Evaluate every method and trained run of ``config`` on the same episodes, at each of its shots;
    returns and writes the records (one table, one plot) and logs them to MLflow."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if config.mlflow:
        from fsar.tracking import tracking_uri

        tracking_uri(config.out, config.mlflow_uri)  # an output folder on object storage needs one: say so now
    data = open_evaluation(config.data, config.split)
    candidates = _candidates(config, data)
    # On object storage the folder is written locally and copied there at the end (a few small files).
    with storage.staged_folder(config.out) as out:
        records, per_episode = [], {}
        for shot in config.shots():
            shot_records, shot_accuracies = _evaluate_shot(replace(config, shot=shot), data, candidates, device,
                                                           folder=out, progress=progress)
            records += shot_records
            per_episode |= shot_accuracies
        write_per_episode(out / PER_EPISODE_FILE, per_episode)
        write_report(records, out, reference=config.reference or None)
        if config.mlflow:
            log_evaluation(config, records, candidates, folder=out)
    return records


def _evaluate_shot(config: EvalConfig, data: EvaluationSource, candidates: list[Candidate], device: torch.device, *,
                   folder: Path, progress: bool) -> tuple[list[ResultRecord], dict[tuple[str, int], Any]]:
    """One shot: its fixed episodes (made once, then read back), every candidate scored on them. ``folder``:
    where the output folder's files are written now (its local stand-in when it is on object storage)."""
    video_ids = data.video_ids(candidates[0].key)  # (decodes a manifest's split: its usable videos)
    episode_path = folder / episode_file_name(config)
    if episode_path.is_file():
        episodes, _ = read_episode_file(episode_path, video_ids, data.labels)
    else:
        sampler = EpisodeSampler(data.labels, way=config.way, shot=config.shot, query=config.query,
                                 seed=config.seed, class_names=data.class_names, split=config.split,
                                 drop_small_classes=config.drop_small_classes)  # an impossible episode: refused here
        episodes = sampler.batch(0, config.episodes)
        write_episode_file(episode_path, episodes, video_ids,
                           meta={"seed": config.seed, "split": config.split, **data.describe()})
    dump_yaml(config, folder / f"eval_config-{config.shot}shot.yaml")  # written once the episodes are possible
    limit = data.episode_batch_limit
    batch_size = config.batch_size if limit is None else min(config.batch_size, limit)
    dataset = config.dataset or data.dataset_name()
    records, per_episode = [], {}
    for cand in candidates:
        start = time.perf_counter()
        acc = episode_accuracies(cand.method.to(device), data.split_for(cand.key), episodes, device=device,
                                 class_text=data.text_for(cand.method), batch_size=batch_size, progress=progress, desc=cand.label)
        mean, ci = accuracy_ci(acc)
        per_episode[(cand.label, config.shot)] = acc
        records.append(ResultRecord(
            method=cand.label, dataset=dataset, split=config.split, way=config.way, shot=config.shot,
            episodes=len(episodes), accuracy=mean, ci95=ci, seed=config.seed, store=data.location, run=cand.run,
            seconds=time.perf_counter() - start, view=cand.key.view, train_store=cand.trained_on,
            train_dataset=None if cand.trained_on is None else data.trained_dataset_name(cand.trained_on),
            configuration=cand.method.configuration,
        ))
    return records, per_episode


def metric_name(label: str, shot: int) -> str:
    """``accuracy/otam_trained_run/1shot``: MLflow metric names allow only letters, digits and ``_-./ ``."""
    return f"accuracy/{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}/{shot}shot"


def log_evaluation(config: EvalConfig, records: list[ResultRecord], candidates: list[Candidate], *,
                   folder: Path | None = None) -> str:
    """One MLflow run for the evaluation: accuracy and CI per method and shot, the results files as
    artifacts, and a tag with the MLflow run ids of the trained runs it scored. Returns its run id.
    ``folder``: where the results files are now (the local stand-in of an output folder on object storage)."""
    from fsar.config import to_dict
    from fsar.tracking import RunLogger, tracking_uri

    out = folder or Path(config.out)
    logger = RunLogger(uri=tracking_uri(config.out, config.mlflow_uri), experiment=config.experiment,
                       run_name=f"eval-{storage.name(storage.absolute(config.out))}", params=to_dict(config),
                       tags={"fsar.kind": "eval", "fsar.training_runs": ",".join(
                           c.mlflow_run_id for c in candidates if c.mlflow_run_id)})
    metrics = {}
    for r in records:
        metrics[metric_name(r.method, r.shot)] = r.accuracy
        metrics[metric_name(r.method, r.shot).replace("accuracy/", "ci95/", 1)] = r.ci95
    logger.log_metrics(metrics, step=0)
    for name in ("results.json", "results.md", "results.png", PER_EPISODE_FILE):
        logger.log_artifact(out / name)
    logger.end()
    (out / "mlflow_run_id").write_text(logger.run_id)
    return logger.run_id


def write_report(records: list[ResultRecord], out: Path, *, reference: str | None = None) -> None:
    """``results.json``, ``results.md`` (with paired differences to ``reference``, default the first method,
    when ``per_episode.parquet`` is there) and ``results.png`` (accuracy bars with 95% CI whiskers)."""
    write_results(records, out / "results.json")
    per_episode = read_per_episode(out / PER_EPISODE_FILE) if (out / PER_EPISODE_FILE).is_file() else None
    table = format_table(records, per_episode=per_episode, reference=reference)
    if len({r.shot for r in records}) > 1:  # several shots: the methods × shots table first
        table = shot_table(records, per_episode=per_episode, reference=reference) + "\n\n" + table
    (out / "results.md").write_text(table + "\n")
    plot_results(records, out / "results.png")


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=as_location, help="feature store: cached-feature methods and runs (data.store)")
    p.add_argument("--manifest", type=as_location,
                   help="end-to-end (pixels) methods and runs: decode these videos instead of a store (data.manifest)")
    p.add_argument("--out", type=as_location)
    p.add_argument("--method", dest="methods", action="append", help="untrained method name (repeatable)")
    p.add_argument("--run", dest="runs", action="append", type=as_location, help="trained run folder or .pt (repeatable)")
    p.add_argument("--episodes", type=int)
    p.add_argument("--way", type=int)
    p.add_argument("--shot", type=shot_list, help="support videos per class, or several: 1,3,5")
    p.add_argument("--split")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="where methods run: auto (CUDA when present, the default), cpu, cuda, cuda:N")


def shot_list(text: str) -> int | list[int]:
    """``--shot 5`` → 5, ``--shot 1,3,5`` → [1, 3, 5]."""
    values = [int(v) for v in text.split(",") if v.strip()]
    return values[0] if len(values) == 1 and "," not in text else values


def _run(args: Any) -> int:
    config = resolve(EvalConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "out", "methods", "runs", "episodes", "way", "shot", "split", "seed", "device")
                     | data_flags(args, "store", "manifest"))
    records = run(config)
    print(format_table(records))
    print(f"results: {storage.join(config.out, 'results.json')}")
    return 0


COMMAND = Command("eval", "score methods on fixed seeded test episodes (accuracy ± 95%% CI)", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
