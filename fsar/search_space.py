"""Search spaces for hyperparameter sweeps (``fsar tune --space FILE.yaml``).

A space file names the method, the metric, a trial count, the settings every trial shares and a
distribution per swept knob::

    method: otam
    metric: val_accuracy      # maximised
    trials: 8
    fixed: {steps: 200, proj_dim: 256, temporal_centre: true}
    space:
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      gamma: {choice: [0.01, 0.1, 0.5]}
      temperature: {uniform: [0.1, 1.0]}

A name is either a field of the method's config class (its knobs, as in ``fsar train knobs.X=``), a
field of ``TrainConfig`` (``lr``, ``weight_decay``, ``episodes_per_step``, ...) or a field of the data
section: the store's (``view``, ``feature_placement``, ``backbone``), or, for a sweep over end-to-end runs
(``data: manifest``, set by ``fsar tune --manifest``), the manifest's (``frames``, ``stage``) and the backbone
stage's as ``stage.NAME`` (``stage.tune``, ``stage.lr_scale``). Every name, type and
range is checked here, against the registry and the config classes, so a typo or an impossible range
is refused before a cluster job starts rather than in its tenth trial. Ray-free: ``pipelines/tune.py``
turns the distributions into Ray Tune domains.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fsar.config import ConfigError, from_dict, load_yaml
from fsar.data.sections import ManifestData, StageSettings, StoreData
from fsar.training.config import TrainConfig

Kind = Literal["uniform", "loguniform", "choice"]
KINDS: tuple[str, ...] = typing.get_args(Kind)

# TrainConfig fields a sweep sets itself: where a trial reads (a feature store, or a manifest for end-to-end
# runs) and writes, how it runs, where it logs.
RESERVED = frozenset({"store", "manifest", "data", "method", "out", "knobs", "workers", "use_gpu", "mlflow_uri",
                      "experiment", "mlflow_parent_run_id"})
# TrainConfig numbers that only make sense above a bound (the dataclass itself does not check them).
_POSITIVE = frozenset({"lr", "steps", "episodes_per_step", "val_every", "val_episodes", "way", "shot", "query",
                       "threads_per_worker"})
_NON_NEGATIVE = frozenset({"weight_decay", "warmup_steps", "grad_clip", "seed"})


@dataclass(frozen=True)
class Distribution:
    """One knob's distribution: ``uniform``/``loguniform`` over ``[low, high]``, or ``choice`` of values."""

    kind: Kind  # how values are drawn
    values: tuple[Any, ...]  # (low, high) for uniform/loguniform; the options for choice (any YAML values, lists too)

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    def probes(self) -> list[Any]:
        """Values that stand for the whole distribution in up-front checks: both ends and an interior,
        non-integer point of a range (a range draws real numbers), or every option of a choice."""
        if self.kind == "choice":
            return list(self.values)
        low, high = self.values
        middle = math.sqrt(low * high) if self.log else (low + high) / 2
        return [low, high, float(middle)]

    def describe(self) -> str:
        """``loguniform[0.0001, 0.01]`` / ``choice[[1], [1, 2]]``: for tables and MLflow params."""
        return f"{self.kind}[{', '.join(map(repr, self.values))}]"

    def to_dict(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}


def parse_distribution(name: str, spec: Any, *, where: str = "space") -> Distribution:
    """``{uniform: [lo, hi]}`` / ``{loguniform: [lo, hi]}`` / ``{choice: [v, ...]}`` → Distribution.

    Ranges must be numbers with ``low < high`` (and ``low > 0`` for loguniform); a choice needs at
    least one option."""
    at = f"{where}.{name}"
    if isinstance(spec, Distribution):
        return spec
    if not (isinstance(spec, Mapping) and len(spec) == 1):
        raise ConfigError(f"{at}: expected one of {{uniform: [low, high]}}, {{loguniform: [low, high]}}, "
                          f"{{choice: [value, ...]}}, got {spec!r} (a value every trial shares goes under 'fixed')")
    (kind, values), = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{at}: unknown distribution {kind!r}; use one of {list(KINDS)}")
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{at}: {kind} takes a list, got {values!r}")
    if kind == "choice":
        if not values:
            raise ConfigError(f"{at}: choice needs at least one value")
        return Distribution("choice", tuple(values))
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{at}: {kind} takes [low, high] (two numbers), got {values!r}")
    low, high = (float(v) for v in values)
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{at}: {kind} range [{low}, {high}] is empty: low must be below high "
                          "(a value every trial shares goes under 'fixed')")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{at}: loguniform needs 0 < low < high, got [{low}, {high}]")
    return Distribution(kind, (low, high))  # type: ignore[arg-type]


@dataclass
class SearchSpace:
    """A sweep: what is trained, what is maximised, and what varies between trials."""

    method: str  # registered method name (`fsar methods`)
    space: dict[str, Any]  # swept name → {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {choice: [v, ...]}
    metric: Literal["val_accuracy"] = "val_accuracy"  # maximised: ASHA's signal and the best trial's ranking
    trials: int = 8  # trials sampled from the space
    fixed: dict[str, Any] = field(default_factory=dict)  # settings every trial shares: TrainConfig fields or knobs
    search_seed: int = 0  # seed of the random search: which values each trial draws
    data: Literal["store", "manifest"] = "store"  # what trials read: cached features, or videos end to end (set by fsar tune)

    def __post_init__(self) -> None:
        from fsar.methods import method_info

        method_info(self.method)  # an unknown method lists the registered ones
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1, got {self.trials}")
        if not self.space:
            raise ConfigError("space is empty: name at least one knob to sweep (e.g. lr: {loguniform: [1.0e-4, 1.0e-2]})")
        self.space = {name: parse_distribution(name, spec) for name, spec in self.space.items()}
        for name in [*self.fixed, *self.space]:
            self.target(name)
        both = sorted(set(self.fixed) & set(self.space))
        if both:
            raise ConfigError(f"{both} both fixed and swept: keep each name in one of 'fixed' and 'space'")
        self._check_values()

    # ------------------------------------------------------------------ names
    @property
    def _knob_types(self) -> dict[str, Any]:
        from fsar.methods import method_info

        info = method_info(self.method)
        # A method with named configurations takes `configuration` beside its knobs (fsar.methods.registry).
        return _init_fields(info.config) | ({"configuration": str} if info.configurations else {})

    @property
    def _section(self) -> type:
        return ManifestData if self.data == "manifest" else StoreData

    @property
    def _train_types(self) -> dict[str, Any]:
        fields = _init_fields(TrainConfig) | _init_fields(self._section)
        if self.data == "manifest":
            fields |= {f"stage.{k}": v for k, v in _init_fields(StageSettings).items()}
        return {k: v for k, v in fields.items() if k not in RESERVED}

    def target(self, name: str) -> Literal["knob", "train"]:
        """Whether ``name`` is one of the method's knobs or a TrainConfig field; anything else is refused
        with the valid names."""
        knobs, train = self._knob_types, self._train_types
        is_knob, is_train = name in knobs, name in train
        if is_knob and is_train:
            raise ConfigError(f"{name!r} is both a {self.method} knob and a training setting; "
                              "rename the knob so a sweep can tell them apart")
        if is_knob:
            return "knob"
        if is_train:
            return "train"
        if name in RESERVED:
            raise ConfigError(f"{name!r} is set by the sweep itself (the tune command's store/manifest/out/MLflow "
                              "settings and per-trial resources), not by the search space")
        raise ConfigError(f"unknown parameter {name!r} for method {self.method}; its knobs: "
                          f"{sorted(knobs)}; training settings: {sorted(train)}")

    # ------------------------------------------------------------------ values
    def _check_values(self) -> None:
        """Every fixed value, and each swept value (probes) on top of the fixed ones, must build a valid
        method config and TrainConfig: the same checks a trial would hit, run once here."""
        try:
            self._check({})
        except ConfigError as exc:
            raise ConfigError(f"fixed: {exc}") from None
        for name, dist in self.space.items():
            for value in dist.probes():
                try:
                    self._check({name: value})
                except ConfigError as exc:
                    hint = ""
                    if dist.kind != "choice" and "expected" in str(exc):  # a type error, not a bound
                        hint = f" ({dist.kind} draws real numbers; for an integer or other setting use choice: [...])"
                    raise ConfigError(f"space.{name}: {dist.describe()} would give {value!r}: {exc}{hint}") from None

    def _check(self, values: Mapping[str, Any]) -> None:
        from fsar.methods import method_info
        from fsar.methods.registry import resolve_configuration

        train, knobs = self.split({**self.fixed, **values})
        _, configured = resolve_configuration(self.method, knobs.pop("configuration", None))
        from_dict(method_info(self.method).config, configured | knobs, where=f"{self.method} knobs")
        from_dict(TrainConfig, self._train_dict(train, source=".", out="."), where="training settings")
        for key, value in train.items():
            if key in _POSITIVE and not value > 0:
                raise ConfigError(f"{key} must be > 0, got {value!r}")
            if key in _NON_NEGATIVE and not value >= 0:
                raise ConfigError(f"{key} must be >= 0, got {value!r}")

    def split(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``{name: value}`` → (TrainConfig fields, method knobs)."""
        train: dict[str, Any] = {}
        knobs: dict[str, Any] = {}
        for name, value in values.items():
            (knobs if self.target(name) == "knob" else train)[name] = plain(value)
        return train, knobs

    def train_config(self, values: Mapping[str, Any], *, source: str | Path, out: str | Path,
                     **settings: Any) -> TrainConfig:
        """The TrainConfig of one trial: the fixed settings, then the trial's drawn ``values``, then the
        sweep's own ``settings`` (reserved fields such as ``use_gpu`` or the MLflow parent). ``source``: the
        feature store, or the manifest of a ``data: manifest`` space."""
        train, knobs = self.split({**self.fixed, **values})
        data = self._train_dict({**train, **settings}, source=source, out=out) | {"knobs": knobs}
        return from_dict(TrainConfig, data, where="trial config")

    def _train_dict(self, train: Mapping[str, Any], *, source: str | Path, out: str | Path) -> dict[str, Any]:
        """Training settings as a TrainConfig mapping: the data section's names go under ``data``, and
        ``stage.NAME`` under ``data.stage``."""
        section = set(_init_fields(self._section))
        data: dict[str, Any] = {self.data: source, **{k: v for k, v in train.items() if k in section}}
        stage = {k.removeprefix("stage."): v for k, v in train.items() if k.startswith("stage.")}
        if stage:
            data["stage"] = {**(data.get("stage") or {}), **stage}
        rest = {k: v for k, v in train.items() if k not in section and not k.startswith("stage.")}
        return {"method": self.method, "out": out, "data": data, **rest}

    def probe_values(self) -> list[dict[str, Any]]:
        """One ``{name: value}`` per probe of every swept name (others left at their fixed/default
        value): what ``check_training_inputs`` is run on before a sweep starts."""
        return [{name: value} for name, dist in self.space.items() for value in dist.probes()]

    def to_dict(self) -> dict[str, Any]:
        """The space as a YAML-safe mapping, the same shape as the file."""
        return {"method": self.method, "metric": self.metric, "trials": self.trials, "search_seed": self.search_seed,
                "fixed": plain(dict(self.fixed)), "space": {k: plain(d.to_dict()) for k, d in self.space.items()},
                "data": self.data}


def _init_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def plain(value: Any) -> Any:
    """Numpy scalars (what samplers hand back) → Python numbers; tuples → lists, recursively."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def load_search_space(path: str | Path, *, trials: int | None = None, fixed: Mapping[str, Any] | None = None,
                      data: str | None = None) -> SearchSpace:
    """Read and check a space file; ``trials`` overrides the file's count, ``fixed`` adds to (or replaces
    entries of) its fixed settings, and ``data`` (store or manifest) says what the trials read. Errors name
    the file."""
    space_file = load_yaml(path)
    if data is not None:
        space_file["data"] = data
    if trials is not None:
        space_file["trials"] = trials
    if fixed:
        space_file["fixed"] = {**(space_file.get("fixed") or {}), **fixed}
    try:
        return from_dict(SearchSpace, space_file, where="search space")
    except ConfigError as exc:
        raise ConfigError(f"search space {path}: {exc}") from None
