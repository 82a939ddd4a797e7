"""A support set: a few encoded example clips per named class, kept on storage, scored against queries.

Layout on a path or a URI (one file per class, so a class is added or dropped without touching the others)::

    <supports>/classes/<name>.npz   features (K, T, ...) fp16 of the class's K clips, and their video ids

Queries are scored in one episode over every class: the method's ``encode`` runs once per support and per
query, and its ``head`` gives logits ``(N_q, C)``. A query's logits never depend on another query (the method
contract), so queries may be scored in any batches.
"""

from __future__ import annotations

import io
import urllib.parse
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fsar import storage
from fsar.config import ConfigError
from fsar.storage import Location

CLASSES_DIR = "classes"
MAX_NAME = 200


def check_class_name(name: str) -> str:
    """Any printable name of 1-200 characters without '/', no space at either end: dataset class names carry
    brackets, commas and quotes ("Pushing [something] from left to right"). Files use its percent-encoding."""
    if (not name or len(name) > MAX_NAME or name.strip() != name or "/" in name
            or any(not c.isprintable() for c in name)):
        raise ConfigError(f"class name {name!r} is not allowed: use 1-{MAX_NAME} printable characters, no '/', no "
                          "space at either end")
    return name


def _file_name(name: str) -> str:
    return urllib.parse.quote(check_class_name(name), safe=" ,_-.()[]'+") + ".npz"


@dataclass
class SupportClass:
    """One class: its name, its clips' ids and features ``(K, T, ...)`` in the run's view."""

    name: str
    video_ids: list[str]
    features: np.ndarray
    sources: list[str] = field(default_factory=list)  # where each clip was read from (for pictures), when known


def class_file(root: Location, name: str) -> Location:
    return storage.join(root, CLASSES_DIR, _file_name(name))


def save_class(root: Location, support: SupportClass) -> Location:
    """Write one class's file atomically (a reader sees the old file or the new one, whole)."""
    buffer = io.BytesIO()
    np.savez(buffer, features=support.features.astype(np.float16), video_ids=np.asarray(support.video_ids),
             sources=np.asarray(support.sources, dtype=str))
    path = class_file(root, support.name)
    storage.write_bytes(path, buffer.getvalue())
    return path


def delete_class(root: Location, name: str) -> bool:
    """Drop a class; False when there was none of that name."""
    path = class_file(root, name)
    if not storage.is_file(path):
        return False
    storage.delete(path)
    return True


def class_names(root: Location) -> list[str]:
    """The classes stored under ``root``, sorted by name (the order of the score columns)."""
    return sorted(urllib.parse.unquote(storage.name(p)[: -len(".npz")])
                  for p in storage.list_files(storage.join(root, CLASSES_DIR), "*.npz"))


def listing(root: Location) -> tuple[tuple[str, int], ...]:
    """Names and sizes of the class files: changes whenever a class is added, replaced or dropped."""
    return tuple((storage.name(p), storage.size(p)) for p in storage.list_files(storage.join(root, CLASSES_DIR), "*.npz"))


def load_class(root: Location, name: str) -> SupportClass:
    data = np.load(io.BytesIO(storage.read_bytes(class_file(root, name))))
    return SupportClass(name, [str(v) for v in data["video_ids"]], data["features"],
                        [str(v) for v in data["sources"]] if "sources" in data else [])


def load_classes(root: Location) -> list[SupportClass]:
    return [load_class(root, n) for n in class_names(root)]


@dataclass
class EncodedSupports:
    """The support set as the method's head takes it: encodings with a leading episode axis of 1."""

    names: list[str]
    encoding: object  # the method's encoding of (1, N_s, T, ...)
    labels: Tensor  # (1, N_s) int64 class index in ``names`` order
    shots: int


def encode_supports(method: torch.nn.Module, classes: list[SupportClass], device: torch.device) -> EncodedSupports:
    """Encode every support clip once. Classes must have the same number of clips: several methods pool a class's
    shots into one prototype of fixed shape (TRX, the DMGAL head)."""
    if not classes:
        raise ConfigError("the support set holds no class: give at least one class with example clips")
    counts = {c.name: len(c.video_ids) for c in classes}
    if len(set(counts.values())) != 1:
        raise ConfigError(f"every class needs the same number of example clips, got {counts}: give each class the "
                          "same number (a few-shot episode has a fixed shot)")
    features = torch.from_numpy(np.concatenate([c.features for c in classes])).to(device)
    shots = next(iter(counts.values()))
    labels = torch.arange(len(classes), device=device).repeat_interleave(shots)[None]
    with torch.no_grad():
        encoding = method.encode(features.float()[None])
    return EncodedSupports([c.name for c in classes], encoding, labels, shots)


def class_logits(method: torch.nn.Module, supports: EncodedSupports, queries: Tensor, *,
                 class_text: Tensor | None = None, batch_size: int = 256) -> Tensor:
    """The method's logits ``(N_q, C)`` of each query for each support class, as in one episode over all the
    classes. ``queries`` ``(N_q, T, ...)`` in the run's view, on the supports' device."""
    way = len(supports.names)
    text = None if class_text is None else class_text[None]
    out = []
    with torch.no_grad():
        for start in range(0, queries.shape[0], batch_size):
            chunk = method.encode(queries[start : start + batch_size].float()[None])
            out.append(method.head(supports.encoding, supports.labels, chunk, way, class_text=text).logits[0].float())
    return torch.cat(out) if out else torch.empty(0, way, device=supports.labels.device)
