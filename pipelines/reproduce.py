"""One command per paper table: every recipe of a benchmark, from the videos to a table beside the published numbers.

``fsar reproduce --recipe-set BENCHMARK --data VIDEOS --out DIR [key=value ...]``:

1. the manifest, from the benchmark's shipped split lists (``--splits`` for other lists laid out the same way);
2. for each family with a fast recipe, the store its encoder makes (``fsar embed``; one per distinct encoder);
3. each recipe trained at each shot: the fast one on its store, then the end-to-end one warm-started from it
   (``init_from``), every checkpoint chosen on validation episodes;
4. every run scored on the same ``episodes`` test episodes per shot (end-to-end runs from the manifest, fast runs
   replaying those episodes on their store);
5. ``reproduce.md`` / ``reproduce.json``: method x shot, accuracy ± 95% CI, the published number and its source,
   the difference to it, and the paired difference to the ``reference`` row.

Every step is a job fsar already resumes, so a rerun of the same command skips what is done (evaluations are
skipped when their inputs are unchanged) and recomputes nothing; ``reproduce.json`` records each stage's wall
time and whether it ran. ``smoke=true`` runs every recipe at a tiny size (``fsar.recipes.shrink``: the offline
``fsar-tiny`` encoder, a few steps) to check a data tree and a cluster before the real thing. Like every job, it
runs on a laptop or is submitted to a cluster (``ray job submit -- fsar reproduce ...``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsar.config import ConfigError, dump_yaml, from_dict, merge, resolve
from pipelines.command import Command, flags, run_alone

__all__ = ["ReproduceConfig", "run", "main"]


@dataclass
class ReproduceConfig:
    """``fsar reproduce``: a benchmark's recipes, end to end, into one table."""

    recipe_set: str  # a benchmark: ssv2_otam, ssv2_cmn, kinetics_cmn, ucf_arn, hmdb_arn
    data: Path  # the benchmark's video root (the tree its split lists name)
    out: Path  # work folder: manifest, stores/, runs/, eval/, reproduce.md, reproduce.json
    splits: Path | None = None  # other split lists laid out like the shipped ones (default: the shipped lists)
    families: list[str] = field(default_factory=list)  # recipe families to run (default: every family; `fsar recipes`)
    shots: list[int] = field(default_factory=lambda: [1, 5])  # K of the 5-way K-shot recipes and evaluations
    episodes: int = 10000  # test episodes per shot
    way: int = 5  # classes per test episode (the protocol's 5; fewer only for trees with fewer test classes)
    seed: int = 0  # episode seed of the evaluation
    reference: str = ""  # the row the paired differences are taken against (default: the first)
    smoke: bool = False  # every recipe at a tiny size (fsar-tiny, a few steps): a check of the tree and the cluster
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings for every run, e.g. {workers: 0, use_gpu: false}
    embed: dict[str, Any] = field(default_factory=dict)  # EmbedConfig settings for every store, e.g. {engine: local}
    weights: dict[str, str] = field(default_factory=dict)  # encoder → weights where a recipe names none, e.g. {resnet50: /w/r50.pt}
    threads: int = 0  # torch CPU threads of the evaluations (0: torch's default)
    overwrite: bool = False  # replace finished runs whose recipe settings changed (default: refuse, naming the run)

    def __post_init__(self) -> None:
        from fsar.data.split_lists import BENCHMARKS

        if self.recipe_set not in BENCHMARKS:
            raise ConfigError(f"recipe_set {self.recipe_set!r} is a benchmark: one of {', '.join(BENCHMARKS)}")
        if not self.shots or any(s not in (1, 5) for s in self.shots):
            raise ConfigError(f"shots must be 1 and/or 5 (the recipes' shots), got {self.shots}")
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")


@dataclass
class Stages:
    """Each stage's wall time and whether it ran (False: found done), and the inputs of finished evaluations."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # stages met in this run (a store serves several recipes)

    @classmethod
    def load(cls, path: Path) -> Stages:
        return cls(path, json.loads(path.read_text()) if path.is_file() else {})

    def timed(self, name: str, ran: bool, seconds: float, **extra: Any) -> None:
        self.record.setdefault("stages", {})[name] = {"ran": ran, "seconds": round(seconds, 2), **extra}
        self.path.write_text(json.dumps(self.record, indent=1) + "\n")


def _recipes(config: ReproduceConfig) -> list[Any]:
    from fsar.recipes import all_recipes, recipe_files

    known = {f.family for f in recipe_files()}
    unknown = sorted(set(config.families) - known)
    if unknown:
        raise ConfigError(f"unknown recipe families {unknown}; families: {', '.join(sorted(known))}")
    return [r for r in all_recipes() if r.benchmark == config.recipe_set and r.shot in config.shots
            and (not config.families or r.family.family in config.families)]


def _manifest(config: ReproduceConfig, stages: Stages) -> Path:
    from fsar.data import manifest as mf
    from fsar.data.split_lists import from_split_lists

    path = config.out / "manifest.parquet"
    start = time.perf_counter()
    if path.is_file():
        stages.timed("manifest", False, time.perf_counter() - start)
        return path
    table, report = from_split_lists(config.splits, config.recipe_set, config.data, progress=True)
    print(report.summary())
    mf.validate_manifest(table, check_paths=True, progress=True)
    mf.write_manifest(table, path)
    stages.timed("manifest", True, time.perf_counter() - start, videos=table.num_rows)
    return path


def _store(config: ReproduceConfig, recipe: Any, manifest: Path, stages: Stages) -> Path:
    """The store a fast recipe reads: one folder per distinct encoder setting, made (or resumed) by fsar embed."""
    from fsar.embedding import EmbedConfig
    from fsar.recipes import shrink
    from pipelines.embed import run as embed

    settings = recipe.embed_mapping()
    settings = shrink(settings) if config.smoke else _with_weights(settings, config.weights)
    name = "-".join(str(settings[k]).replace("/", "_") for k in ("backbone", "pretrained", "frames", "patch_grid"))
    out = config.out / "stores" / name
    key = f"embed {name}"
    if key in stages.seen:  # made (or found) already in this run, for another recipe or shot
        return out
    stages.seen.add(key)
    if key in stages.record.get("stages", {}):  # made, and finished, by an earlier run of this folder
        stages.timed(key, False, 0.0)
        return out
    start = time.perf_counter()
    embed(from_dict(EmbedConfig, merge(settings | {"manifest": str(manifest), "out": str(out), "mlflow": False},
                                       config.embed)), progress=True)
    stages.timed(key, True, time.perf_counter() - start)
    return out


def _train(config: ReproduceConfig, recipe: Any, source: tuple[str, Path], init_from: Path | None,
           stages: Stages) -> Path:
    from fsar.recipes import shrink
    from fsar.run_folder import RunFolder
    from fsar.training.config import TrainConfig
    from pipelines.train import run as train

    mapping = recipe.train_mapping()
    if config.smoke:
        mapping = shrink(mapping)  # the offline encoder's random init, on purpose
    else:
        mapping = _with_weights(mapping, config.weights)
        recipe.check_weights(mapping)
    out = config.out / "runs" / recipe.name.split("/")[0] / f"{recipe.shot}shot"
    data = dict(mapping.get("data") or {}) | {source[0]: str(source[1])}
    mapping = merge(mapping | {"data": data, "out": str(out), "init_from": str(init_from) if init_from else None,
                               "mlflow_uri": f"sqlite:///{(config.out / 'mlflow.db').resolve()}",
                               "experiment": f"fsar-reproduce-{config.recipe_set}"}, config.train)
    train_config = from_dict(TrainConfig, mapping, where=f"recipe {recipe.name}")
    folder = RunFolder(out)
    done = folder.holds_config(train_config) and folder.is_finished()
    start = time.perf_counter()
    if not done:
        train(train_config, overwrite=config.overwrite)
    stages.timed(f"train {recipe.name}", not done, time.perf_counter() - start)
    return out


def _with_weights(mapping: dict[str, Any], weights: dict[str, str]) -> dict[str, Any]:
    """``mapping`` (an EmbedConfig or TrainConfig mapping) with ``weights[backbone]`` as the encoder's weights
    wherever it names that backbone and no weights."""
    def fill(section: dict[str, Any]) -> dict[str, Any]:
        if section.get("backbone") in weights and section.get("pretrained") in (None, "default"):
            return section | {"pretrained": weights[section["backbone"]]}
        return section

    out = fill(dict(mapping))
    data = dict(out.get("data") or {})
    if isinstance(data.get("stage"), dict):
        out["data"] = data | {"stage": fill(dict(data["stage"]))}
    if isinstance(out.get("knobs"), dict):
        out["knobs"] = fill(dict(out["knobs"]))
    return out


def _evaluate(config: ReproduceConfig, shot: int, runs: list[Path], data: Any, folder: Path, stages: Stages,
              episodes_from: Path | None) -> Path:
    """Score ``runs`` at ``shot`` into ``folder``, unless the same inputs were scored there already."""
    from pipelines.evaluate import EvalConfig
    from pipelines.evaluate import run as evaluate

    key = f"eval {folder.name}"
    inputs = {"runs": sorted(str(r) for r in runs), "shot": shot, "episodes": config.episodes, "seed": config.seed,
              "way": config.way}
    previous = stages.record.get("stages", {}).get(key, {})
    if previous.get("inputs") == inputs and (folder / "results.json").is_file():
        stages.timed(key, False, 0.0, inputs=inputs)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if episodes_from is not None:  # the same episodes as the manifest's evaluation: paired differences hold
        for episode_file in episodes_from.glob("episodes-*"):
            shutil.copy(episode_file, folder / episode_file.name)
    start = time.perf_counter()
    evaluate(EvalConfig(data=data, out=folder, runs=[str(r) for r in runs], way=config.way, shot=shot,
                        episodes=config.episodes,
                        seed=config.seed, threads=config.threads, mlflow=False), progress=True)
    stages.timed(key, True, time.perf_counter() - start, inputs=inputs)
    return folder


def run(config: ReproduceConfig) -> dict[str, Any]:
    """Manifest, stores, trainings, evaluations and the table (module docstring); returns the summary."""
    from fsar.data.sections import ManifestData, StoreData

    recipes = _recipes(config)
    if not recipes:
        raise ConfigError(f"no recipe of {config.recipe_set} for shots {config.shots} and families {config.families}")
    config.out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, config.out / "reproduce_config.yaml")
    stages = Stages.load(config.out / "reproduce.json")
    manifest = _manifest(config, stages)
    rows: dict[str, dict[int, dict[str, Any]]] = {}  # row (family or family-fast) → shot → run and where scored
    for recipe in recipes:
        if recipe.kind != "fast":
            continue
        store = _store(config, recipe, manifest, stages)
        run_dir = _train(config, recipe, ("store", store), None, stages)
        rows.setdefault(recipe.name.split("/")[0], {})[recipe.shot] = {"run": run_dir, "store": store, "recipe": recipe}
    for recipe in recipes:
        if recipe.kind != "end_to_end":
            continue
        fast = rows.get(f"{recipe.family.family}-fast", {}).get(recipe.shot)
        run_dir = _train(config, recipe, ("manifest", manifest), fast["run"] if fast else None, stages)
        rows.setdefault(recipe.family.family, {})[recipe.shot] = {"run": run_dir, "store": None, "recipe": recipe}
    per_episode: dict[tuple[str, int], Any] = {}
    for shot in config.shots:
        manifest_runs = [c["run"] for r in rows.values() for s, c in r.items() if s == shot and c["store"] is None]
        manifest_eval = config.out / "eval" / f"manifest-{shot}shot"
        if manifest_runs:
            _evaluate(config, shot, manifest_runs, ManifestData(manifest=manifest, frames=_frames(rows, shot)),
                      manifest_eval, stages, None)
            per_episode |= _scores(manifest_eval)
        stores = sorted({c["store"] for r in rows.values() for s, c in r.items() if s == shot and c["store"]})
        for store in stores:
            runs = [c["run"] for r in rows.values() for s, c in r.items() if s == shot and c["store"] == store]
            folder = config.out / "eval" / f"{store.name}-{shot}shot"
            _evaluate(config, shot, runs, StoreData(store=store), folder, stages,
                      manifest_eval if manifest_runs else None)
            per_episode |= _scores(folder)
    summary = _summary(config, rows, per_episode, stages)
    table = format_table(summary)
    (config.out / "reproduce.md").write_text(table + "\n")
    print(table)
    return summary


def _frames(rows: dict[str, dict[int, dict[str, Any]]], shot: int) -> int:
    """Frames the manifest evaluation decodes: what the end-to-end runs at this shot were trained on."""
    frames = {c["recipe"].train_mapping().get("data", {}).get("frames", 8) for r in rows.values()
              for s, c in r.items() if s == shot and c["store"] is None}
    return 4 if not frames else min(frames)


def _scores(folder: Path) -> dict[tuple[str, int], Any]:
    """Per-episode accuracies of one evaluation folder, by (run folder, shot)."""
    from fsar.evaluation.results import PER_EPISODE_FILE, read_per_episode, read_results

    run_of = {r.method: str(Path(str(r.run)).resolve()) for r in read_results(folder / "results.json") if r.run}
    return {(run_of[label], shot): acc for (label, shot), acc in read_per_episode(folder / PER_EPISODE_FILE).items()
            if label in run_of}


def _summary(config: ReproduceConfig, rows: dict[str, dict[int, dict[str, Any]]],
             per_episode: dict[tuple[str, int], Any], stages: Stages) -> dict[str, Any]:
    import numpy as np

    from fsar.evaluation.results import accuracy_ci, paired_difference

    names = sorted(rows, key=lambda n: (n.replace("-fast", ""), n.endswith("-fast")))
    reference = config.reference or names[0]
    if reference not in rows:
        raise ConfigError(f"reference {reference!r} is not a row; rows: {', '.join(names)}")
    table: dict[str, Any] = {}
    for name in names:
        for shot, cell in sorted(rows[name].items()):
            scores = np.asarray(per_episode[(str(Path(cell["run"]).resolve()), shot)])
            mean, ci = accuracy_ci(scores)
            target = cell["recipe"].target
            entry = {"accuracy": mean, "ci95": ci, "recipe": cell["recipe"].label, "run": str(cell["run"]),
                     "published": target.accuracy, "published_source": target.source,
                     "minus_published": None if target.accuracy is None else mean - target.accuracy}
            ref = rows[reference].get(shot)
            if ref is not None and name != reference:
                ref_scores = np.asarray(per_episode[(str(Path(ref["run"]).resolve()), shot)])
                if len(ref_scores) == len(scores):
                    entry["paired"] = paired_difference(scores, ref_scores)
            table.setdefault(name, {})[shot] = entry
    summary = {"recipe_set": config.recipe_set, "episodes": config.episodes, "way": config.way, "smoke": config.smoke,
               "reference": reference, "rows": table, "stages": stages.record.get("stages", {})}
    stages.record.update({k: v for k, v in summary.items() if k != "stages"})
    stages.path.write_text(json.dumps(stages.record, indent=1, default=str) + "\n")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Method x shot: accuracy ± CI, the published number, the difference to it, the paired Δ to the reference."""
    from fsar.evaluation.results import format_difference

    shots = sorted({shot for row in summary["rows"].values() for shot in row})
    head = "| recipe | " + " | ".join(f"{s}-shot (%) | published | − published | Δ {summary['reference']}" for s in shots)
    lines = [head + " |", "|---|" + "---:|---:|---:|---:|" * len(shots)]
    for name, row in summary["rows"].items():
        cells = []
        for shot in shots:
            e = row.get(shot)
            if e is None:
                cells.append("— | — | — | —")
                continue
            published = "—" if e["published"] is None else f"{e['published']:.1f}"
            minus = "—" if e["minus_published"] is None else f"{e['minus_published']:+.2f}"
            paired = format_difference(*e["paired"]) if "paired" in e else "—"
            cells.append(f"{e['accuracy']:.2f} ± {e['ci95']:.2f} | {published} | {minus} | {paired}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    scale = " (smoke: fsar-tiny, a few steps; not the recipes' numbers)" if summary["smoke"] else ""
    return (f"{summary['recipe_set']}: {summary['episodes']} test episodes per shot, {summary['way']}-way{scale}; published numbers "
            "and their sources in reproduce.json; Δ = paired difference on the same episodes, bold where its 95% CI "
            "excludes 0.\n\n" + "\n".join(lines))


def _arguments(p: Any) -> None:
    p.add_argument("--recipe-set", dest="recipe_set", help="a benchmark: ssv2_otam, ssv2_cmn, kinetics_cmn, ucf_arn, hmdb_arn")
    p.add_argument("--data", type=Path, help="the benchmark's video root")
    p.add_argument("--out", type=Path, help="work folder; rerunning on it resumes")
    p.add_argument("--splits", type=Path, help="other split lists laid out like the shipped ones")


def _run(args: Any) -> int:
    config = resolve(ReproduceConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "recipe_set", "data", "out", "splits"))
    summary = run(config)
    ran = [name for name, stage in summary["stages"].items() if stage["ran"]]
    print(f"reproduce {config.out}: {len(ran)} of {len(summary['stages'])} stages ran "
          f"({sum(s['seconds'] for s in summary['stages'].values()):.0f} s); table {config.out / 'reproduce.md'}")
    return 0


COMMAND = Command("reproduce", "one paper table: a benchmark's recipes from videos to a table beside the published "
                  "numbers", _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
