"""Typed configuration: dataclasses filled from YAML files and ``key=value`` overrides.

Unknown keys are rejected with the list of valid ones, so a typo never silently falls back to a
default. Values given as strings (from the command line) are parsed as YAML scalars/lists, then
checked against the field's annotated type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fsar import storage
from fsar.storage import as_location

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which and how to fix it."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert the lossless cases (int→float, list→tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if sections and isinstance(value, dict):
            return _coerce_section(value, sections, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if len(args) == 2 else (Any, Any)
        if value_type is Any and key_type is not int:
            return dict(value)
        return {_coerce(k, key_type, f"{where} key") if key_type is int else k: _coerce(v, value_type, f"{where}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-3" (no dot) as a string; accept any spelling Python reads as a number.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return as_location(value)  # a URI (s3://...) stays a string: Path() would fold its "//"
    return value


def _required(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def _coerce_section(value: dict[str, Any], sections: list[type], where: str) -> Any:
    """A mapping for a union of dataclasses (e.g. ``data:`` = a store or a manifest): the member whose
    required keys the mapping has; its own errors (unknown keys, types) are reported as they are."""
    matching = [s for s in sections if _required(s) <= set(value)]
    if len(matching) != 1:
        options = " or ".join(f"{{{', '.join(sorted(_required(s)))}: ...}} ({s.__name__})" for s in sections)
        found = "several" if matching else "none"
        raise ConfigError(f"{where}: give exactly one of {options}; {found} of them in keys {sorted(value)}")
    return from_dict(matching[0], value, where=where)


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and ill-typed values raise ConfigError.

    A class may map keys it used to have to where they moved (``MOVED_KEYS = {"store": "data.store"}``):
    those are refused with the new name."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    moved = getattr(cls, "MOVED_KEYS", {})
    if any(k in moved for k in unknown):
        hints_text = ", ".join(f"{k} → {moved[k]}" for k in unknown if k in moved)
        raise ConfigError(f"{where}: key(s) moved in {cls.__name__}: {hints_text} (write e.g. data.store=... "
                          f"or a `data:` section in the file)")
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(fields)}"
        )
    missing = sorted(_required(cls) - set(data))
    if missing:
        hints_for = getattr(cls, "MISSING_HINTS", {})
        how = "; ".join(f"{k}: {hints_for[k]}" for k in missing if k in hints_for)
        raise ConfigError(f"{where}: missing required key(s) {missing} for {cls.__name__}" + (f" ({how})" if how else ""))
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from exc


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["a=1", "b.c=[1, 2]"]`` into a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"override {pair!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {pair!r}: {raw!r} is not a YAML value (lists are [a, b], mappings "
                              "{k: v}; quote text with brackets)") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; a missing file or non-mapping content is a ConfigError."""
    if not storage.is_file(path):
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(storage.read_text(path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}; "
                          "fix that line") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def resolve(
    cls: type[T],
    *,
    file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Build ``cls`` from (lowest to highest priority) defaults, ``base`` (a recipe), a YAML file, CLI flags,
    overrides."""
    data: dict[str, Any] = dict(base or {})
    if file is not None:
        data = merge(data, load_yaml(file))
    if flags:
        data = merge(data, {k: v for k, v in flags.items() if v is not None})
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """A YAML-safe dict of a config dataclass (paths become strings, tuples lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def dump_yaml(config: Any, path: str | Path) -> None:
    """Save the resolved config next to an output (a local path or a URI), so a run can be reproduced from its
    folder."""
    storage.write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
