"""Named, versioned training recipes that ship with the package (``fsar recipes``, ``fsar train --recipe NAME``).

A recipe file (``fsar/recipes/files/<family>.yaml``) describes one method in one configuration as its paper or
its released code trains it, for every benchmark of the shipped split lists, and expands into one recipe per
benchmark and shot::

    <family>/<benchmark>/<K>shot          end to end: the backbone stage trained with the method (manifest)
    <family>-fast/<benchmark>/<K>shot     its frozen-feature counterpart (a store ``fsar embed`` builds with the
                                          recipe's encoder), which also warm-starts the end-to-end recipe

A recipe is a ``TrainConfig`` mapping without the data's location and the run folder (the user gives those:
``--manifest``/``--store``, ``--out``); ``key=value`` overrides still apply on top. Every file states where
each setting comes from (``source``), what is our reconstruction (``reconstructed``), where fsar cannot do
what the release does (``differs``), what it was sized for, and the published accuracy it aims at with the
source of that number (``target``; ``null`` where no number was found in a source read for this project).

Ray-free and light: ``fsar recipes`` lists them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fsar.config import ConfigError, from_dict, load_yaml, merge

FILES = Path(__file__).parent / "files"
SHOTS = (1, 5)
Kind = Literal["end_to_end", "fast"]


@dataclass
class Sizing:
    """What a recipe was sized for and what it costs, as stated by its source (or measured, where said)."""

    gpus: str  # GPUs of the released run, e.g. "4 x 11 GB"
    memory: str  # memory per GPU it needs or was run on
    fsar: str  # how fsar runs it: workers, GPUs, episodes_per_forward


@dataclass
class Facts:
    """The settings a user of the recipe asks about, in words, each with its source."""

    backbone: str  # the encoder and its pretraining
    weights: str  # the weights file or tag it expects (data.stage.pretrained)
    frames: int  # frames per video
    resolution: str  # resize and crop
    augmentation: str  # what training applies
    optimiser: str  # optimiser, learning rate, weight decay
    schedule: str  # learning-rate schedule
    episodes: str  # training episodes (tasks) and episodes per optimiser step
    tune: str  # which parts train
    sizing: Sizing


@dataclass
class Target:
    """The published 5-way accuracy a recipe aims at (None: not found in a source read for this project)."""

    accuracy: float | None
    source: str  # where the number comes from (URL and table), or what to read to fill it in


@dataclass
class BenchmarkSection:
    """One benchmark's overrides of the recipe, and its targets by shot."""

    targets: dict[int, Target]  # shot → published accuracy
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides for this benchmark (end to end)
    fast_train: dict[str, Any] = field(default_factory=dict)  # ... and for the fast recipe


@dataclass
class FastSection:
    """The frozen-feature recipe: the store it reads (``fsar embed`` settings) and its training."""

    embed: dict[str, Any]  # EmbedConfig settings: backbone, pretrained, frames, patch_grid
    train: dict[str, Any]  # TrainConfig mapping on a store


@dataclass
class RecipeFile:
    """One ``fsar/recipes/files/*.yaml``: a method in one configuration, for every benchmark."""

    family: str  # the recipe names' first part
    version: int  # bumped whenever a setting changes; recorded with every run
    method: str  # registered method
    title: str  # one line
    source: str  # the released code or paper the settings come from
    facts: Facts
    train: dict[str, Any]  # the end-to-end TrainConfig mapping every benchmark starts from
    benchmarks: dict[str, BenchmarkSection]
    fast: FastSection | None = None  # None: no frozen-feature counterpart (said why in `differs`)
    shots: dict[int, dict[str, Any]] = field(default_factory=dict)  # TrainConfig overrides by shot (both kinds)
    weights_key: str = ""  # the TrainConfig key that must name the weights (no default download), e.g. data.stage.pretrained
    reconstructed: list[str] = field(default_factory=list)  # settings that are ours, not the source's
    differs: list[str] = field(default_factory=list)  # where fsar does not do what the source does, and why


@dataclass(frozen=True)
class Recipe:
    """One resolved recipe: a family at one benchmark and shot, end to end or fast."""

    name: str  # e.g. "trx/ssv2_OTAM/5shot"
    family: RecipeFile
    benchmark: str
    shot: int
    kind: Kind

    @property
    def version(self) -> int:
        return self.family.version

    @property
    def label(self) -> str:
        """What a run records: ``name@version``."""
        return f"{self.name}@{self.version}"

    @property
    def target(self) -> Target:
        return self.family.benchmarks[self.benchmark].targets.get(self.shot, Target(None, "no target for this shot"))

    def train_mapping(self) -> dict[str, Any]:
        """The TrainConfig mapping of this recipe (no data location, no out), with the recipe recorded."""
        section = self.family.benchmarks[self.benchmark]
        if self.kind == "fast":
            assert self.family.fast is not None
            base = merge(self.family.fast.train, section.fast_train)
        else:
            base = merge(self.family.train, section.train)
        base = merge(base, self.family.shots.get(self.shot, {}))
        return merge(base, {"method": self.family.method, "shot": self.shot, "recipe": self.label})

    def check_weights(self, mapping: dict[str, Any]) -> None:
        """Refuse an end-to-end run of this recipe whose encoder weights are left unset: a recipe that expects
        pretrained weights (``facts.weights``) would otherwise train from a random init without a word."""
        if self.kind != "end_to_end" or not self.family.weights_key:
            return
        node: Any = mapping
        for part in self.family.weights_key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            raise ConfigError(f"recipe {self.name} expects {self.family.facts.weights}: set "
                              f"{self.family.weights_key}=FILE (or {self.family.weights_key}=none to train from a "
                              "random init on purpose)")

    def embed_mapping(self) -> dict[str, Any] | None:
        """The ``fsar embed`` settings of the store a fast recipe reads (None for an end-to-end recipe)."""
        return None if self.kind != "fast" or self.family.fast is None else dict(self.family.fast.embed)


def _check_file(recipe: RecipeFile, path: Path) -> None:
    from fsar.data.split_lists import BENCHMARKS

    unknown = sorted(set(recipe.benchmarks) - set(BENCHMARKS))
    if unknown:
        raise ConfigError(f"recipe file {path}: unknown benchmarks {unknown}; shipped: {sorted(BENCHMARKS)}")
    if recipe.family != path.stem:
        raise ConfigError(f"recipe file {path}: family {recipe.family!r} must match the file name")
    for bench, section in recipe.benchmarks.items():
        if set(section.targets) - set(SHOTS):
            raise ConfigError(f"recipe file {path}: {bench} targets shots {sorted(section.targets)}; recipes cover {SHOTS}")


@cache
def recipe_files() -> tuple[RecipeFile, ...]:
    """Every shipped recipe file, checked (unknown keys and benchmarks refused, naming the file)."""
    files = []
    for path in sorted(FILES.glob("*.yaml")):
        try:
            recipe = from_dict(RecipeFile, load_yaml(path), where=f"recipe file {path.name}")
        except ConfigError as exc:
            raise ConfigError(f"recipe file {path}: {exc}") from None
        _check_file(recipe, path)
        files.append(recipe)
    return tuple(files)


def all_recipes() -> list[Recipe]:
    """Every recipe, end to end and fast, for every benchmark and shot, in a stable order."""
    out = []
    for family in recipe_files():
        for benchmark in family.benchmarks:
            for shot in SHOTS:
                out.append(Recipe(f"{family.family}/{benchmark}/{shot}shot", family, benchmark, shot, "end_to_end"))
                if family.fast is not None:
                    out.append(Recipe(f"{family.family}-fast/{benchmark}/{shot}shot", family, benchmark, shot, "fast"))
    return out


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (``family[-fast]/benchmark/Kshot``); an unknown one lists what exists."""
    recipes = {r.name: r for r in all_recipes()}
    if name in recipes:
        return recipes[name]
    families = sorted({f.family for f in recipe_files()})
    close = sorted(n for n in recipes if n.split("/")[0] == name.split("/")[0])[:6]
    hint = f"; e.g. {', '.join(close)}" if close else f"; families: {', '.join(families)}"
    raise ConfigError(f"unknown recipe {name!r}: names are FAMILY[-fast]/BENCHMARK/Kshot (see `fsar recipes`){hint}")


def recipes_table(recipes: list[Recipe] | None = None) -> str:
    """``fsar recipes``: one Markdown row per recipe (``fsar recipes NAME --show`` gives the rest)."""
    rows = ["| recipe | version | method | kind | backbone | tune | steps x episodes | target (%) |",
            "|---|---:|---|---|---|---|---|---:|"]
    for r in recipes if recipes is not None else all_recipes():
        facts = r.family.facts
        train = r.train_mapping()
        stage = train.get("data", {}).get("stage") or {}
        tune = "frozen (store)" if r.kind == "fast" else str(stage.get("tune") or facts.tune.split(":")[0])
        backbone = facts.backbone.split(";")[0].split(",")[0].split(" (")[0]
        target = "—" if r.target.accuracy is None else f"{r.target.accuracy:.1f}"
        rows.append(f"| {r.name} | {r.version} | {r.family.method} | {r.kind.replace('_', ' ')} | {backbone} | "
                    f"{tune} | {train.get('steps', '?')} x {train.get('episodes_per_step', '?')} | {target} |")
    return "\n".join(rows)


# What `shrink` sets: the offline encoder and a budget that runs in seconds on a CPU, the recipe's structure kept.
TINY_BUDGET: dict[str, Any] = {"steps": 2, "episodes_per_step": 2, "episodes_per_forward": 0, "warmup_steps": 1,
                               "val_every": 2, "val_episodes": 10, "query": 1, "workers": 0, "use_gpu": False}


def shrink(mapping: dict[str, Any], *, frames: int = 4, budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """A recipe's TrainConfig (or EmbedConfig) mapping at a tiny size: every encoder swapped for the offline
    ``fsar-tiny`` with random weights, ``frames`` frames, ``budget`` (default ``TINY_BUDGET``) for the training
    budget; method, knobs, tuning regime, view and optimiser stay as the recipe has them."""
    from fsar.backbones import TINY_MODEL

    out = merge(mapping, {})
    if "backbone" in out:  # an EmbedConfig mapping
        return merge(out, {"backbone": TINY_MODEL, "pretrained": "none", "frames": frames})
    out = merge(out, budget if budget is not None else TINY_BUDGET)
    data = dict(out.get("data") or {})
    if "stage" in data:
        stage = dict(data["stage"])
        stage.update(backbone=TINY_MODEL, pretrained=None)
        if str(stage.get("tune", "")).startswith("last:"):
            stage["tune"] = "last:1"  # fsar-tiny has 2 blocks
        if stage.get("patch_grid", 4) > 4:
            stage["patch_grid"] = 4
        data["stage"] = stage
    if "frames" in data:
        data["frames"] = frames
    out["data"] = data
    knobs = dict(out.get("knobs") or {})
    if "backbone" in knobs:  # pixels methods carry their encoder in their knobs
        knobs.update(backbone=TINY_MODEL, pretrained=None)
    if "num_frames" in knobs:
        knobs["num_frames"] = frames
    out["knobs"] = knobs
    return out
