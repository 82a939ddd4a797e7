"""pipelines.bench.predict: its quality figures from a prediction folder, and its table."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fsar.prediction.output import PREDICTION_SCHEMA, part_file
from pipelines.bench.predict import OpenSetCase, quality, table


def test_quality_counts_known_and_unknown_queries_apart(tmp_path):
    rows = [("a.mp4", "run", ["run", "jump"], False), ("b.mp4", "unknown", ["jump", "run"], True),
            ("c.mp4", "unknown", ["run", "jump"], True), ("d.mp4", "jump", ["jump", "run"], False)]
    table_ = pa.Table.from_pylist([{"video_id": v, "label": lab, "top_classes": top, "top_scores": [0.6, 0.4],
                                    "unknown": unk} for v, lab, top, unk in rows], schema=PREDICTION_SCHEMA)
    part_file(tmp_path, 0).parent.mkdir(parents=True)
    pq.write_table(table_, part_file(tmp_path, 0))
    case = OpenSetCase(Path("run"), Path("s"), Path("m"), Path("sup"), Path("q"),
                       {"a.mp4": "run", "b.mp4": "run", "c.mp4": "wave", "d.mp4": "wave"}, ("run", "jump"), "")
    q = quality(case, tmp_path)
    assert q == {"known_queries": 2, "unknown_queries": 2, "known_top1": 0.5, "known_accepted_right": 0.5,
                 "unknown_false_accept": 0.5}
    text = table(q | {"open_set": {"score": "max_logit", "target_far": 0.05, "episodes": 500, "way": 5,
                                   "known_accuracy": 0.4}},
                 [{"engine": "local", "videos": 4, "predict_per_s": 10.0, "embed_per_s": 5.0, "ratio": 2.0}],
                 {"requests": 300, "concurrency": 8, "p50_ms": 100.0, "p99_ms": 150.0, "requests_per_s": 60.0})
    assert "| local | 4 | 10.0 | 5.0 | 2.00 |" in text and "| POST /classify | 300 | 8 | 100 | 150 | 60.0 |" in text
