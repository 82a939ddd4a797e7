"""What ``fsar predict`` is given: support clips (a folder per class, or a manifest) and queries (a folder of
videos, a manifest, or a feature store), on a path or a URI."""

from __future__ import annotations

import posixpath
from typing import Any, Literal

import pyarrow as pa

from fsar import storage
from fsar.config import ConfigError
from fsar.data.manifest import VIDEO_EXTENSIONS, natural_key, read_manifest
from fsar.prediction.support_set import SupportClass, check_class_name, class_file, load_class, save_class
from fsar.storage import Location

QueryKind = Literal["store", "manifest", "folder"]


def _videos_below(folder: Location) -> list[Location]:
    return [p for p in storage.list_files(folder, recursive=True)
            if posixpath.splitext(str(p))[1].lower() in VIDEO_EXTENSIONS]


def support_clips(location: Location) -> dict[str, list[tuple[str, str]]]:
    """``{class name: [(video id, path), ...]}`` from a folder of class folders (``<support>/<class>/<clip>``)
    or a manifest (its ``class_name`` and ``path`` columns, every split), classes in natural name order."""
    location = storage.as_location(location)
    if str(location).endswith(".parquet"):
        table = read_manifest(location)
        rows = zip(table["class_name"].to_pylist(), table["video_id"].to_pylist(), table["path"].to_pylist(),
                   strict=True)
    elif storage.is_dir(location):
        base = str(location).rstrip("/")
        rows = []
        for path in _videos_below(location):
            relative = str(path)[len(base) + 1:]
            if "/" not in relative:
                raise ConfigError(f"{path} lies directly in the support folder {location}: put each class's clips in "
                                  "a folder named after the class (<support>/<class>/<clip>)")
            rows.append((relative.split("/", 1)[0], relative, str(path)))
    else:
        raise ConfigError(f"support {location} is neither a folder of class folders nor a manifest (.parquet)")
    classes: dict[str, list[tuple[str, str]]] = {}
    for name, vid, path in rows:
        classes.setdefault(check_class_name(name), []).append((vid, path))
    if not classes:
        raise ConfigError(f"support {location} holds no videos ({', '.join(VIDEO_EXTENSIONS[:4])}, ...)")
    return {k: classes[k] for k in sorted(classes, key=natural_key)}


def query_kind(location: Location) -> QueryKind:
    """A feature store (has ``store.json``), a manifest (``.parquet``) or a folder of videos."""
    if storage.is_file(storage.join(location, "store.json")):
        return "store"
    if str(location).endswith(".parquet"):
        return "manifest"
    if storage.is_dir(location):
        return "folder"
    raise ConfigError(f"query {location} is not a feature store, a manifest (.parquet) or a folder of videos")


def query_table(location: Location, kind: QueryKind) -> pa.Table:
    """``video_id``, ``path`` and (when the manifest has it) ``true_class`` of every query video, in a fixed order."""
    if kind == "manifest":
        table = read_manifest(location)
        return pa.table({"video_id": table["video_id"], "path": table["path"], "true_class": table["class_name"]})
    base = str(location).rstrip("/")
    paths = sorted((str(p) for p in _videos_below(location)), key=natural_key)
    if not paths:
        raise ConfigError(f"query folder {location} holds no videos ({', '.join(VIDEO_EXTENSIONS[:4])}, ...)")
    return pa.table({"video_id": [p[len(base) + 1:] for p in paths], "path": paths})


def encode_support_clips(predictor: Any, clips: dict[str, list[tuple[str, str]]], root: Location, *,
                         batch_size: int, progress: bool = True) -> list[SupportClass]:
    """Decode and encode every support clip once (``clips``: ``support_clips``'s), save one file per class under
    ``root``; classes already saved there (a rerun) are read back instead. ``predictor``: a ``Predictor``."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm.auto import tqdm

    from fsar.data.video import VideoDecodeError

    def decode(name: str, video: tuple[str, str]) -> Any:
        try:
            return predictor.decode(video[1])
        except VideoDecodeError as exc:
            raise ConfigError(f"support clip {video[1]} of class {name!r} does not decode ({exc}): replace or remove "
                              "it") from None

    out = []
    for name, videos in tqdm(clips.items(), desc="supports", unit="class", disable=not progress):
        if storage.is_file(class_file(root, name)):
            out.append(load_class(root, name))
            continue
        with ThreadPoolExecutor(max_workers=4) as pool:
            decoded = list(pool.map(lambda v, n=name: decode(n, v), videos))
        features = np.concatenate([predictor.encode(decoded[i : i + batch_size])
                                   for i in range(0, len(decoded), batch_size)])
        support = SupportClass(name, [v for v, _ in videos], features, [p for _, p in videos])
        save_class(root, support)
        out.append(support)
    return out
