"""What a feature store's merge recorded of each shard, and the check of a whole store against it.

When ``fsar embed`` merges a shard it first records the shard's row count and the SHA-256 of its file
(``checks/shard-NNNNN.json``), then writes the shard file itself, the marker a rerun trusts. ``check_store``
(``fsar store check STORE``) reads everything back: the metadata, every shard (does it read, does it hold the
rows and the bytes its merge recorded, do its rows and failures cover its manifest rows), and names each damaged
shard with the fix. ``damaged_shards`` is what ``fsar embed --repair`` re-embeds.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fsar import storage
from fsar.data.feature_store import FeatureStoreError, finished_shards, read_meta, shard_path

CHECKS_DIR = "checks"


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of its Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def record_path(root: str | Path, shard: int) -> storage.Location:
    return storage.join(root, CHECKS_DIR, f"shard-{shard:05d}.json")


def write_shard(root: str | Path, shard: int, table: pa.Table) -> None:
    """Record the shard's rows and digest, then write the shard file (last: the marker a rerun trusts)."""
    data = parquet_bytes(table)
    storage.write_text(record_path(root, shard),
                       json.dumps({"rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest()}))
    storage.write_bytes(shard_path(root, shard), data)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: where, what, and whether a repair re-embeds it (a shard)."""

    where: str
    what: str
    shard: int | None = None


def _check_shard(root: str | Path, shard: int, expected_rows: int | None) -> list[Problem]:
    path = shard_path(root, shard)
    try:
        data = storage.read_bytes(path)
        rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    except (pa.ArrowInvalid, OSError, storage.StorageError) as exc:
        return [Problem(str(path), f"does not read ({str(exc)[:80]})", shard)]
    problems = []
    record_file = record_path(root, shard)
    if storage.is_file(record_file):
        record = json.loads(storage.read_text(record_file))
        if rows != record["rows"]:
            problems.append(Problem(str(path), f"holds {rows} rows, its merge wrote {record['rows']}", shard))
        elif hashlib.sha256(data).hexdigest() != record["sha256"]:
            problems.append(Problem(str(path), "its bytes differ from what its merge wrote (checksum)", shard))
    if expected_rows is not None:
        failures = storage.join(root, "failures", f"shard-{shard:05d}.parquet")
        failed = pq.ParquetFile(io.BytesIO(storage.read_bytes(failures))).metadata.num_rows \
            if storage.is_file(failures) else 0
        if rows + failed != expected_rows:
            problems.append(Problem(str(path), f"{rows} videos and {failed} failures, but its manifest rows are "
                                               f"{expected_rows}", shard))
    return problems


def check_store(root: str | Path) -> tuple[list[Problem], int]:
    """Every problem of the store at ``root`` and the number of shards checked (see the module docstring)."""
    from fsar.data.manifest import manifest_rows

    try:
        meta = read_meta(root)
    except FeatureStoreError as exc:
        return [Problem(str(storage.join(root, "store.json")), str(exc))], 0
    total = None
    if meta.manifest and storage.is_file(meta.manifest):
        total = manifest_rows(meta.manifest)
    shards = sorted(finished_shards(root))
    problems = []
    for shard in shards:
        expected = None if total is None else max(0, min(total, (shard + 1) * meta.shard_size) - shard * meta.shard_size)
        problems += _check_shard(root, shard, expected)
    if total is not None:
        n_shards = (total + meta.shard_size - 1) // meta.shard_size
        missing = sorted(set(range(n_shards)) - set(shards))
        if missing:
            problems.append(Problem(str(root), f"{len(missing)} shard(s) not written yet (first: {missing[0]}): the "
                                               "embed job did not finish; rerun it"))
    return problems, len(shards)


def damaged_shards(root: str | Path) -> list[int]:
    """Shards a repair must re-embed."""
    return sorted({p.shard for p in check_store(root)[0] if p.shard is not None})


def forget_shards(root: str | Path, shards: list[int]) -> None:
    """Remove what a damaged shard left (its file, record and failures), so a rerun embeds exactly its rows."""
    for shard in shards:
        for location in (shard_path(root, shard), record_path(root, shard),
                         storage.join(root, "failures", f"shard-{shard:05d}.parquet")):
            storage.delete(location)


def format_problems(root: str | Path, problems: list[Problem], shards: int) -> str:
    if not problems:
        return f"{root}: {shards} shard(s) checked, no damage"
    lines = [f"{root}: {len(problems)} problem(s) in {shards} shard(s) checked:"]
    lines += [f"  {p.where}: {p.what}" for p in problems]
    if any(p.shard is not None for p in problems):
        lines.append("fix: rerun the `fsar embed` that built the store with --repair: it re-embeds exactly those shards")
    return "\n".join(lines)
