"""Method registry: a decorator records each method's config class and declared needs under a name.

The pipeline asks the registry what a method consumes (``input_kind``, ``needs_text``) to check a feature
store before any job starts, and builds methods by name with knobs checked against the config class,
so a misspelt knob fails with the list of valid ones instead of silently keeping a default.

A method may register named **configurations**: sets of knob values such as ``paper`` (what the seed paper,
or its released code, describes) and ``fsar`` (the paper plus fsar's own additions, each a named knob).
``build_method(name, configuration=...)`` starts from one (the method's ``default_configuration`` when
none is named) and explicit knobs override it; the built method remembers which (``method.configuration``),
so a checkpoint and every results table can say which configuration a row ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import torch

from fsar.config import ConfigError, from_dict
from fsar.data.sections import StageSettings
from fsar.methods.base import VIDEO_DIMS, FewShotMethod

M = TypeVar("M", bound=type[FewShotMethod])


class UnknownMethodError(ConfigError, KeyError):
    """No method is registered under the requested name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Configuration:
    """A named set of a method's knob values (see the module docstring)."""

    knobs: Mapping[str, Any]  # knob values over the config class's defaults
    description: str  # one line: what it is and where it comes from
    additions: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # knob → what fsar adds there, and its measured effect


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one method."""

    name: str  # registry name, as used on the command line and in results.json
    config: type  # config dataclass; its fields are the method's knobs
    input_kind: str  # "frames" (N,T,D), "patches" (N,T,g,g,d) or "pixels" (N,T,3,H,W)
    needs_text: bool  # whether the method needs class-name text embeddings
    description: str  # one line for `fsar methods`
    cls: type[FewShotMethod]  # the nn.Module class, built as cls(config, feature_dim=..., text_dim=...)
    configurations: Mapping[str, Configuration] = field(default_factory=lambda: MappingProxyType({}))  # by name
    default_configuration: str = ""  # the configuration built when none is named ("" for a method without any)


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(
    name: str, *, config: type, input_kind: str = "frames", needs_text: bool = False, description: str = "",
    configurations: Mapping[str, Configuration] | None = None, default_configuration: str = "",
) -> Callable[[M], M]:
    """Class decorator registering a ``FewShotMethod`` subclass under ``name``.

    The class must accept ``cls(config_instance, *, feature_dim=int, text_dim=int | None)``. Every knob of a
    configuration must be a field of ``config`` (checked here, at import).
    """
    if input_kind not in VIDEO_DIMS:
        raise ValueError(f"method {name!r}: input_kind must be one of {sorted(VIDEO_DIMS)}, got {input_kind!r}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"method {name!r}: config must be a dataclass class, got {config!r}")
    configurations = MappingProxyType(dict(configurations or {}))
    if configurations and default_configuration not in configurations:
        raise ValueError(f"method {name!r}: default_configuration {default_configuration!r} is not one of "
                         f"{sorted(configurations)}")
    fields = {f.name for f in dataclasses.fields(config)}
    for label, conf in configurations.items():
        unknown = set(conf.knobs) - fields
        if unknown:
            raise ValueError(f"method {name!r}: configuration {label!r} sets unknown knobs {sorted(unknown)}")

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, FewShotMethod)):
            raise TypeError(f"method {name!r}: {cls!r} is not a FewShotMethod subclass")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].cls.__qualname__}")
        cls.method_name, cls.input_kind, cls.needs_text = name, input_kind, needs_text
        _REGISTRY[name] = MethodInfo(name, config, input_kind, needs_text, description, cls, configurations,
                                     default_configuration)
        return cls

    return decorate


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def method_info(name: str) -> MethodInfo:
    """The registry entry of ``name``; an unknown name raises UnknownMethodError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; registered methods: {', '.join(list_methods())}") from None


def resolve_configuration(name: str, configuration: str | None) -> tuple[str, dict[str, Any]]:
    """The configuration of method ``name`` a build starts from (its default when ``configuration`` is None or
    empty) and its knobs; ``("", {})`` for a method without configurations."""
    info = method_info(name)
    if not info.configurations:
        if configuration:
            raise ConfigError(f"method {name!r} has no named configurations; drop configuration={configuration!r}")
        return "", {}
    chosen = configuration or info.default_configuration
    if chosen not in info.configurations:
        raise ConfigError(f"method {name!r} has no configuration {chosen!r}; its configurations: "
                          f"{', '.join(sorted(info.configurations))}")
    return chosen, dict(info.configurations[chosen].knobs)


def knobs_beside_configuration(name: str, configuration: str, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Of a method's resolved knobs, those that differ from what its ``configuration`` sets (or, without one,
    from the config class's defaults): what a results row names beside the configuration."""
    info = method_info(name)
    base = dict(info.configurations[configuration].knobs) if configuration in info.configurations else {}
    reference = dataclasses.asdict(from_dict(info.config, base, where=f"method {name!r}"))
    return {k: v for k, v in knobs.items() if k in reference and reference[k] != v}


def build_method(name: str, *, feature_dim: int, text_dim: int | None = None, configuration: str | None = None,
                 stage: StageSettings | None = None, **knobs: Any) -> FewShotMethod:
    """Build method ``name`` for per-frame features of size ``feature_dim``.

    ``text_dim``: the size of the class-name text embeddings the data offers (the store's text tower), None
    when it has none. A method that can read text builds its text parameters only when there is text, so
    no parameter exists that could never receive a gradient (DDP refuses those).

    ``knobs`` are fields of the method's config class; unknown or ill-typed ones raise ConfigError
    naming the valid ones. The resolved config is kept on the module as ``method.config``.

    ``configuration``: a named configuration of the method (``paper``, ``fsar``, ...; default: the method's
    default one) that ``knobs`` override; kept as ``method.configuration``.
    """
    info = method_info(name)
    if stage is not None:
        return _build_end_to_end(name, stage, configuration=configuration, knobs=knobs)
    chosen, base = resolve_configuration(name, configuration)
    config = from_dict(info.config, base | knobs, where=f"method {name!r}")
    method = info.cls(config, feature_dim=feature_dim, text_dim=text_dim)
    method.configuration = chosen
    return method


def _build_end_to_end(name: str, stage: StageSettings, *, configuration: str | None,
                      knobs: dict[str, Any]) -> FewShotMethod:
    """A frames or patches method on a ``BackboneStage`` (``fsar.methods.end_to_end``), sized for the stage's view
    and its text tower."""
    from fsar.backbones.stage import BackboneStage, stage_view
    from fsar.methods.end_to_end import EndToEnd

    info = method_info(name)
    if info.input_kind == "pixels":
        raise ConfigError(f"method {name} brings its own encoder (its knobs backbone, pretrained): drop data.stage")
    view = stage_view(info.input_kind, stage.view)
    # The stage is built on its own seeded RNG (LoRA's random half included), leaving the global one to the
    # method, which so starts from the same weights as a cached run of the same seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stage.init_seed)
        encoder = BackboneStage(stage, view=view)
    chosen, base = resolve_configuration(name, configuration)
    config = from_dict(info.config, base | knobs, where=f"method {name!r}")
    method = info.cls(config, feature_dim=encoder.output_dim, text_dim=encoder.text_dim)
    method.configuration = chosen
    if not method.uses_text:
        encoder.drop_text()
    return EndToEnd(encoder, method)
