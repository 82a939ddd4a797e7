"""Feature columns of a store's Parquet rows read straight into numpy: the fixed-width fp16 vectors and the sampled
frame numbers (``fsar.data.feature_store`` reads every shard through these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)


class FeatureStoreError(ValueError):
    """A feature store is missing, incomplete or incompatible with what a job expects."""


def fixed_width_values(column: pa.Array, width: int, where: str | Path) -> np.ndarray:
    """A binary column of fp16 vectors of ``width`` values each → ``(n, width)`` fp16, read straight from
    the Arrow data buffer (no Python bytes objects, no join)."""
    if column.null_count:
        raise FeatureStoreError(f"feature store {where}: a row has no features in the column read; re-embed")
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32 if column.type == pa.binary() else np.int64,
                            count=len(column) + 1, offset=column.offset * (4 if column.type == pa.binary() else 8))
    if not np.all(np.diff(offsets) == 2 * width):
        raise FeatureStoreError(f"feature store {where}: rows of {set(np.diff(offsets) // 2)} values, expected "
                                f"{width} (frames × feature size in store.json); the store is damaged, re-embed")
    data = np.frombuffer(column.buffers()[2], dtype="<f2", count=len(column) * width, offset=int(offsets[0]))
    return data.reshape(len(column), width)


def frame_indices(rows: pa.Table, frames: int) -> np.ndarray:
    """``(N, T)`` int64 sampled frame numbers of each row; -1 for a row that did not record ``frames`` of them."""
    column = rows["frame_indices"].combine_chunks()
    complete = pa.compute.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False) == frames
    out = np.full((rows.num_rows, frames), -1, dtype=np.int64)
    out[complete] = column.filter(pa.array(complete)).flatten().to_numpy(zero_copy_only=False).reshape(-1, frames)
    return out
