"""A prediction job's output folder: its layout, the prediction table's schema, and reading it back.

    <out>/predict_config.yaml         the job's settings (a rerun with the same ones resumes)
    <out>/queries.parquet             the query videos, one row group per shard (video queries)
    <out>/supports/classes/*.npz      the encoded support set (fsar.prediction.support_set)
    <out>/predictions/part-NNNNN.parquet  one file per shard, written whole by the worker that predicted it
    <out>/summary.json                counts, accuracy when the queries' classes are known, the threshold
    <out>/explain/*.png               pictures (--explain)
    <out>/mlflow_run_id               the job's MLflow run
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from fsar import storage
from fsar.storage import Location

QUERIES_FILE = "queries.parquet"
SUPPORTS_DIR = "supports"
PREDICTIONS_DIR = "predictions"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "predict_config.yaml"
EXPLAIN_DIR = "explain"
MLFLOW_RUN_ID_FILE = "mlflow_run_id"

PREDICTION_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("label", pa.string()), ("top_classes", pa.list_(pa.string())),
    ("top_scores", pa.list_(pa.float32())), ("unknown", pa.bool_()), ("match_score", pa.float32()),
    ("start_s", pa.float64()), ("end_s", pa.float64()), ("true_class", pa.string()), ("error", pa.string()),
])


def part_file(out: Location, shard: int) -> Location:
    """Shard ``shard``'s prediction file: its presence marks the shard done."""
    return storage.join(out, PREDICTIONS_DIR, f"part-{shard:05d}.parquet")


def read_predictions(out: Location, columns: list[str] | None = None) -> pa.Table:
    """Every part's rows, in shard order."""
    from fsar.data.feature_store import read_table

    parts = storage.list_files(storage.join(out, PREDICTIONS_DIR), "part-*.parquet")
    if not parts:
        return PREDICTION_SCHEMA.empty_table()
    return pa.concat_tables(read_table(p, columns) for p in parts)


def summarise(out: Location) -> dict[str, Any]:
    """Counts over the written parts; with known query classes, accuracy on the supports' classes and the
    unknown answers on the others."""
    table = read_predictions(out, ["video_id", "label", "top_classes", "unknown", "true_class", "error"])
    labels = table["label"].to_pylist()
    errors = [e for e in table["error"].to_pylist() if e]
    summary: dict[str, Any] = {"predictions": table.num_rows - len(errors), "failed": len(errors),
                               "videos": len(set(table["video_id"].to_pylist())),
                               "unknown": sum(1 for u in table["unknown"].to_pylist() if u)}
    truth = table["true_class"].to_pylist()
    if any(t is not None for t in truth):
        from fsar.prediction.support_set import class_names

        known = set(class_names(storage.join(out, SUPPORTS_DIR)))
        on_known = [(lab, t) for lab, t in zip(labels, truth, strict=True) if lab is not None and t in known]
        on_unknown = [lab for lab, t in zip(labels, truth, strict=True) if lab is not None and t not in known]
        top1 = [tc[0] == t for tc, t in zip(table["top_classes"].to_pylist(), truth, strict=True) if tc and t in known]
        summary["known_accuracy"] = float(np.mean([lab == t for lab, t in on_known])) if on_known else None
        summary["known_top1"] = float(np.mean(top1)) if top1 else None  # ignoring the threshold
        summary["known_answered_unknown"] = (float(np.mean([lab == "unknown" for lab, _ in on_known]))
                                             if on_known else None)
        summary["unknown_false_accept_rate"] = (float(np.mean([lab != "unknown" for lab in on_unknown]))
                                                if on_unknown else None)
    return summary
