"""Compare methods at one training budget on one store: train each, score all on the same test episodes.

``python -m pipelines.compare --store fsar-demo/store --out compare [key=value ...]``, e.g.
``methods='{protonet: {proj_dim: 256}, otam: {proj_dim: 256, temporal_centre: true}, a2m2: {}}'``.

``python -m pipelines.compare --ablation a2m2 --store S --out D`` runs the seed method's ablation table
instead: the full method (its defaults, plus ``base`` knobs every variant shares) and one variant per
component the paper claims (``ABLATIONS``), each trained with the same budget.

Every method gets the same steps, episodes per step, optimiser, learning rate, seed and workers; the
best validation checkpoint of each is evaluated on the same materialised 5-way K-shot test episodes.
Prints and writes (``<out>/comparison.md``, ``results.json``/``.md``/``.png``, ``per_episode.parquet``)
accuracy ± 95% CI, the paired difference to the reference method (default: the first; for an ablation,
the full method) ± its paired 95% CI from the per-episode differences, the number of trainable
parameters, training wall time and episodes/s, and evaluation episodes/s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fsar.config import ConfigError, dump_yaml
from fsar.data.sections import StoreData
from fsar.evaluation.results import PAIRED_NOTE, PER_EPISODE_FILE, ResultRecord, paired_cell, read_per_episode
from fsar.training.config import TrainConfig
from pipelines.command import Command, flags, run_alone

# The components each seed paper claims, as knob changes from the full method (ablation label → knobs).
# ``{mask_files}`` is replaced by the mask folder of the store's dataset (or ``mask_files``).
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "a2m2": {
        "uniform marginals": {"marginals": "uniform"},
        "scales [8] (whole clip only)": {"scales": [8]},
        "scales [4]": {"scales": [4]},
        "scales [2, 4, 8]": {"scales": [2, 4, 8]},
        "no time encoding": {"time_encoding": False},
        "order prior 0.5": {"order_prior": 0.5},
        "moments of features only": {"moment_inputs": ["features"]},
        "moments without position": {"moment_inputs": ["features", "motion"]},
        "moments without motion": {"moment_inputs": ["features", "position"]},
        "no text": {"text": False},
        "no fusion (moments only)": {"fusion": 0.0},
        "fusion 1 (frame metric only)": {"fusion": 1.0},
    },
    "i2st": {
        "masks: none": {"mask_source": "none"},
        "masks: pseudo": {"mask_source": "pseudo"},
        "masks: files": {"mask_source": "files", "mask_files": "{mask_files}"},
        "masks: files, instances (hungarian)": {"mask_source": "files", "mask_files": "{mask_files}",
                                                "mask_match": "hungarian"},
        "0 attention layers": {"layers": 0},
        "2 attention layers": {"layers": 2},
        "λ 0 (local only)": {"lambda_global": 0.0},
        "λ 1 (global only)": {"lambda_global": 1.0},
    },
    "dmgal": {
        "without S-MGA": {"smga": False},
        "without C-MGA": {"cmga": False},
        "without the mixer": {"mixer": False},
    },
}


@dataclass
class CompareConfig:
    """``python -m pipelines.compare``: which methods, one shared training budget, one set of test episodes."""

    store: Path  # feature store (e.g. fsar-demo/store from `fsar demo`)
    out: Path  # output folder: runs/<method>, eval/, comparison.md
    methods: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "protonet": {"proj_dim": 256}, "otam": {"proj_dim": 256, "temporal_centre": True}, "a2m2": {},
    })  # method (or method@label, to compare settings of one method) -> knobs, each trained with the budget below
    ablation: str = ""  # a seed method (a2m2, i2st, dmgal): compare it with one variant per component instead of `methods`
    base: dict[str, Any] = field(default_factory=dict)  # ablation: knobs of the full method that every variant shares
    mask_files: str = ""  # ablation of i2st: mask folder of `masks: files` (default: <dataset>/masks next to the store's manifest)
    reference: str = ""  # row the paired differences are taken against (default: the first method; ablation: the full one)
    steps: int = 300  # optimiser steps per method
    episodes_per_step: int = 16  # episodes per optimiser step over all workers (split evenly across them)
    lr: float = 3e-3  # learning rate (AdamW, warm-up then cosine)
    workers: int = 2  # Ray Train workers (0 = in-process)
    threads_per_worker: int = 1  # torch threads of each training process
    val_every: int = 50  # validation interval (steps)
    shots: list[int] = field(default_factory=lambda: [1, 5])  # K of the 5-way K-shot test evaluations
    view: Literal["auto", "pooled", "grid"] = "auto"  # what frame methods read (auto: the pooled embedding)
    episodes: int = 10000  # test episodes per shot
    seed: int = 0  # training and episode seed


def ablation_methods(config: CompareConfig) -> dict[str, dict[str, Any]]:
    """``method`` (the full method: defaults + ``base``) and ``method@<component>`` for each row of ABLATIONS."""
    name = config.ablation
    if name not in ABLATIONS:
        raise ConfigError(f"no ablation for {name!r}; ablations exist for {sorted(ABLATIONS)}")
    from fsar.config import from_dict, to_dict
    from fsar.methods import method_info
    from fsar.methods.registry import resolve_configuration

    mask_files = config.mask_files or default_mask_folder(config.store)
    base = {k: v for k, v in config.base.items() if k != "configuration"}
    _, configured = resolve_configuration(name, config.base.get("configuration"))
    full = to_dict(from_dict(method_info(name).config, configured | base, where=f"ablation {name} base"))
    out = {name: dict(config.base)}
    for label, change in ABLATIONS[name].items():
        change = {k: (mask_files if v == "{mask_files}" else v) for k, v in change.items()}
        if "" in change.values():
            continue  # no masks for this dataset: the row cannot be trained
        if all(full.get(k) == v for k, v in change.items()):
            continue  # the full method already is this variant
        out[f"{name}@{label}"] = dict(config.base) | change
    return out


def default_mask_folder(store: Path) -> str:
    """``<dataset>/masks`` beside the manifest the store was embedded from, when it exists (``fsar synth --masks``)."""
    meta = Path(store) / "store.json"
    if not meta.is_file():
        return ""
    manifest = json.loads(meta.read_text()).get("manifest", "")
    folder = Path(manifest).parent / "masks" if manifest else None
    return str(folder) if folder is not None and folder.is_dir() else ""


def run(config: CompareConfig, *, progress: bool = True) -> list[ResultRecord]:
    from fsar.training.checkpoint import read_checkpoint
    from pipelines.evaluate import EvalConfig
    from pipelines.experiment import train_and_evaluate

    methods = ablation_methods(config) if config.ablation else config.methods
    reference = config.reference or next(iter(methods))
    if reference not in methods:
        raise ConfigError(f"reference {reference!r} is not one of the compared methods {list(methods)}")
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / "compare_config.yaml")
    tracking = f"sqlite:///{out / 'mlflow.db'}"
    runs = {key: TrainConfig(
        data=StoreData(store=Path(config.store), view=config.view), method=key.split("@")[0], out=out / "runs" / key,
        knobs=dict(knobs), steps=config.steps, episodes_per_step=config.episodes_per_step, lr=config.lr,
        workers=config.workers, threads_per_worker=config.threads_per_worker, val_every=config.val_every,
        seed=config.seed, mlflow_uri=tracking, experiment="fsar-compare") for key, knobs in methods.items()}
    evaluation = EvalConfig(data=StoreData(store=Path(config.store), view=config.view), out=out / "eval",
                            shot=list(config.shots), episodes=config.episodes, seed=config.seed,
                            dataset=Path(config.store).name, mlflow_uri=tracking, experiment="fsar-compare")
    trained, records = train_and_evaluate(runs, evaluation, progress=progress,
                                          announce=lambda line: print(line, flush=True))
    train_seconds = {key: run.seconds for key, run in trained.items()}
    params = {key: sum(v.numel() for k, v in read_checkpoint(run.result.best_checkpoint)["state_dict"].items()
                       if "running_" not in k and not k.endswith("num_batches_tracked"))
              for key, run in trained.items()}
    rates = {k: config.steps * config.episodes_per_step / s for k, s in train_seconds.items()}
    table = comparison_table(records, params, train_seconds, reference=reference,
                             per_episode=read_per_episode(out / "eval" / PER_EPISODE_FILE), train_rates=rates)
    (out / "comparison.md").write_text(table + "\n")
    print(table)
    return records


def run_key(record: ResultRecord) -> str:
    """The row name of a record: its run folder (method or method@label), or the method for an untrained one."""
    return Path(record.run).name if record.run else record.method


def comparison_table(records: list[ResultRecord], params: dict[str, int], train_seconds: dict[str, float], *,
                     reference: str | None = None, per_episode: dict[tuple[str, int], Any] | None = None,
                     train_rates: dict[str, float] | None = None) -> str:
    """Markdown: one row per trained run (named by its folder: method or method@label), accuracy ± CI per
    shot, the paired difference to ``reference`` per shot (from ``per_episode``: (record label, shot) →
    per-episode accuracies), parameters, training time and rate, evaluation rate."""
    shots = sorted({r.shot for r in records})
    methods = list(dict.fromkeys(run_key(r) for r in records))
    paired = reference is not None and per_episode is not None
    head = ("| method | " + " | ".join(f"{s}-shot accuracy (%)" for s in shots)
            + ("".join(f" | Δ {s}-shot vs {reference} (paired)" for s in shots) if paired else "")
            + " | parameters | training (s) | training (episodes/s) | evaluation (episodes/s, 1st shot) |")
    lines = [head, "|---|" + "---:|" * (len(shots) * (2 if paired else 1) + 4)]
    by_key = {(run_key(r), r.shot): r for r in records}
    for m in methods:
        mine = {s: by_key[(m, s)] for s in shots if (m, s) in by_key}
        cells = [f"{mine[s].accuracy:.2f} ± {mine[s].ci95:.2f}" if s in mine else "" for s in shots]
        if paired:
            for s in shots:
                ref = by_key.get((reference, s))
                cells.append(paired_cell(per_episode.get((mine[s].method, s)) if s in mine else None,  # type: ignore[union-attr]
                                         per_episode.get((ref.method, s)) if ref is not None else None,  # type: ignore[union-attr]
                                         is_reference=m == reference))
        first = mine[shots[0]]
        rate = (train_rates or {}).get(m)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {params.get(m, 0):,} | {train_seconds.get(m, 0):.0f} | "
                     f"{'' if rate is None else f'{rate:,.0f}'} | {first.episodes / first.seconds:,.0f} |")
    if paired:
        lines.append("\n" + PAIRED_NOTE.format(reference=reference))
    return "\n".join(lines)


def _arguments(p: Any) -> None:
    p.add_argument("--store", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--ablation", help=f"ablation table of one seed method: {', '.join(sorted(ABLATIONS))}")
    p.add_argument("--reference", help="method the paired differences are taken against (default: the first)")


def _run(args: Any) -> int:
    from fsar.config import resolve

    given = flags(args, "store", "out", "ablation", "reference")
    if args.ablation and "out" not in given:
        given["out"] = Path(f"ablation-{args.ablation}")
    run(resolve(CompareConfig, file=args.config, overrides=args.overrides, flags=given))
    return 0


COMMAND = Command("compare", "train methods with one budget and score them on the same test episodes", _arguments,
                  _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.compare")


if __name__ == "__main__":
    raise SystemExit(main())
