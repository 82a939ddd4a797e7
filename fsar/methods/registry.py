"""Method registry: a decorator records each method's config class and declared needs under a name.

The pipeline asks the registry what a method consumes (``input_kind``, ``needs_text``) to check a feature
store before any job starts, and builds methods by name with knobs checked against the config class,
so a misspelt knob fails with the list of valid ones instead of silently keeping a default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fsar.config import ConfigError, from_dict
from fsar.methods.base import VIDEO_DIMS, FewShotMethod

M = TypeVar("M", bound=type[FewShotMethod])


class UnknownMethodError(ConfigError, KeyError):
    """No method is registered under the requested name; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one method."""

    name: str  # registry name, as used on the command line and in results.json
    config: type  # config dataclass; its fields are the method's knobs
    input_kind: str  # "frames" (N,T,D), "patches" (N,T,g,g,d) or "pixels" (N,T,3,H,W)
    needs_text: bool  # whether the method needs class-name text embeddings
    description: str  # one line for `fsar methods`
    cls: type[FewShotMethod]  # the nn.Module class, built as cls(config, feature_dim=..., text_dim=...)


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(
    name: str, *, config: type, input_kind: str = "frames", needs_text: bool = False, description: str = ""
) -> Callable[[M], M]:
    """Class decorator registering a ``FewShotMethod`` subclass under ``name``.

    The class must accept ``cls(config_instance, *, feature_dim=int, text_dim=int | None)``.
    """
    if input_kind not in VIDEO_DIMS:
        raise ValueError(f"method {name!r}: input_kind must be one of {sorted(VIDEO_DIMS)}, got {input_kind!r}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"method {name!r}: config must be a dataclass class, got {config!r}")

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, FewShotMethod)):
            raise TypeError(f"method {name!r}: {cls!r} is not a FewShotMethod subclass")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].cls.__qualname__}")
        cls.method_name, cls.input_kind, cls.needs_text = name, input_kind, needs_text
        _REGISTRY[name] = MethodInfo(name, config, input_kind, needs_text, description, cls)
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


def build_method(name: str, *, feature_dim: int, text_dim: int | None = None, **knobs: Any) -> FewShotMethod:
    """Build method ``name`` for per-frame features of size ``feature_dim``.

    ``text_dim``: the size of the class-name text embeddings the data offers (the store's text tower), None
    when it has none. A method that can read text builds its text parameters only when there is text, so
    no parameter exists that could never receive a gradient (DDP refuses those).

    ``knobs`` are fields of the method's config class; unknown or ill-typed ones raise ConfigError
    naming the valid ones. The resolved config is kept on the module as ``method.config``.
    """
    info = method_info(name)
    config = from_dict(info.config, knobs, where=f"method {name!r}")
    return info.cls(config, feature_dim=feature_dim, text_dim=text_dim)
