"""The ``fsar`` command: flags, config files and overrides reach the jobs; bad input exits 2 with a message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fsar.data.feature_store import StoreMeta, write_meta, write_shard
from pipelines.cli import main


@pytest.fixture
def store(tmp_path):
    """A tiny store whose test classes are separable: class c's frames point along axis c."""
    rng = np.random.default_rng(0)
    rows = []
    for c in range(6):
        for v in range(4):
            feats = rng.normal(scale=0.3, size=(4, 8))
            feats[:, c] += 3.0
            rows.append({"video_id": f"c{c}v{v}", "label": c, "class_name": f"class {c}", "split": "test",
                         "num_frames": 20, "frame_indices": [2, 7, 12, 17], "frames": feats})
    root = tmp_path / "store"
    write_meta(root, StoreMeta(backbone="fsar-tiny", pretrained=None, frames=4, embed_dim=8, patch_grid=0, image_size=64))
    write_shard(root, 0, rows)
    return root


def test_eval_writes_results_for_each_method(store, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--store", str(store), "--out", str(out), "--method", "protonet", "--method", "otam",
                 "--episodes", "200", "query=2"])
    assert code == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in records] == ["protonet", "otam"]
    assert all(r["episodes"] == 200 and r["accuracy"] > 90 for r in records)
    assert "| protonet |" in capsys.readouterr().out
    episode_files = list(out.glob("episodes-*.json"))
    assert len(episode_files) == 1 and "2q" in episode_files[0].name


def test_eval_on_a_named_device(store, tmp_path):
    assert main(["eval", "--store", str(store), "--out", str(tmp_path / "e"), "--method", "otam", "--episodes", "50",
                 "--device", "cpu"]) == 0


def test_config_file_then_overrides(store, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"data: {{store: {store}}}\nout: {tmp_path / 'e'}\nmethods: [bimhm]\nepisodes: 50\nshot: 2\n")
    assert main(["eval", "--config", str(cfg), "shot=1"]) == 0
    (record,) = json.loads((tmp_path / "e" / "results.json").read_text())
    assert (record["method"], record["shot"], record["episodes"]) == ("bimhm", 1, 50)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shto=1"], "unknown key(s) ['shto']"),
        (["methods=[nosuch]"], "unknown method 'nosuch'"),
        (["--shot", "5"], "shot+query=6"),
        (["split=val"], "no videos in split 'val'"),
        (["--device", "tpu"], "device='tpu' is not a device"),
        *([(["--device", "cuda"], "this machine has no CUDA device")] if not __import__("torch").cuda.is_available() else []),
    ],
)
def test_bad_input_exits_2_with_a_message(store, tmp_path, capsys, args, message):
    code = main(["eval", "--store", str(store), "--out", str(tmp_path / "e"), "--episodes", "10", "methods=[otam]", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_not_a_store(tmp_path, capsys):
    assert main(["eval", "--store", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "not a feature store" in capsys.readouterr().err


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("protonet", "otam", "bimhm"):
        assert name in out


def test_manifest_from_folder_tree(tmp_path, capsys):
    for c in range(5):
        for v in range(2):
            path = tmp_path / "videos" / f"class{c}" / f"clip{v}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0")
    out = tmp_path / "m.parquet"
    assert main(["manifest", "--videos", str(tmp_path / "videos"), "--out", str(out), "--class-split", "0.6,0.2,0.2"]) == 0
    from fsar.data.manifest import read_manifest

    table = read_manifest(out)
    assert table.num_rows == 10 and sorted(set(table["split"].to_pylist())) == ["test", "train", "val"]
    assert table["num_frames"].null_count == 10  # lengths are not probed: embed learns them when it decodes
    printed = capsys.readouterr()
    assert "scan" not in printed.err and "check paths" not in printed.err  # no progress bars off a terminal
    assert main(["manifest", "--videos", str(tmp_path / "videos"), "--out", str(out), "--splits", str(tmp_path)]) == 2
    assert "--splits needs --benchmark" in capsys.readouterr().err


def test_manifest_of_a_benchmark_from_the_lists_that_ship(tmp_path, capsys):
    """No --splits: the packaged lists; one video per listed class is present, the rest are reported missing."""
    from fsar.data.manifest import read_manifest
    from fsar.data.split_lists import read_split_lists

    entries = read_split_lists(None, "hmdb_arn")
    present = {split: list({e.class_name: e for e in listed}.values()) for split, listed in entries.items()}
    for listed in present.values():
        for e in listed:
            path = tmp_path / "videos" / e.class_key / f"{e.vid}.avi"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0")
    out = tmp_path / "hmdb.parquet"
    assert main(["manifest", "--videos", str(tmp_path / "videos"), "--out", str(out), "--benchmark", "hmdb_arn"]) == 0
    table = read_manifest(out)
    assert table.num_rows == 31 + 10 + 10 and len(set(table["class_name"].to_pylist())) == 51
    assert "missing" in capsys.readouterr().out


def test_train_then_eval_the_run_beside_untrained_methods(tmp_path, capsys):
    from helpers import make_signal_store

    store = make_signal_store(tmp_path / "store")
    run_dir = tmp_path / "run"
    assert main(["train", "--store", str(store), "--method", "protonet", "--out", str(run_dir), "--steps", "40",
                 "--lr", "0.03", "knobs.proj_dim=16", "val_every=20", "val_episodes=200", "workers=0"]) == 0
    assert "best validation accuracy" in capsys.readouterr().out
    out = tmp_path / "eval"
    assert main(["eval", "--store", str(store), "--out", str(out), "--method", "protonet", "--run", str(run_dir),
                 "--episodes", "300"]) == 0
    untrained, trained = json.loads((out / "results.json").read_text())
    assert untrained["run"] is None and trained["run"] == str(run_dir)
    assert trained["accuracy"] > untrained["accuracy"] + trained["ci95"] + untrained["ci95"]
    assert (out / "results.png").stat().st_size > 1000 and (out / "results.md").is_file()


def test_nothing_to_evaluate(store, tmp_path, capsys):
    assert main(["eval", "--store", str(store), "--out", str(tmp_path / "e")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_a_key_that_moved_into_data_names_its_new_place(store, tmp_path, capsys):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"store: {store}\nout: {tmp_path / 'e'}\nmethods: [bimhm]\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    assert "store → data.store" in capsys.readouterr().err
    assert main(["train", "--store", str(store), "--method", "otam", "--out", str(tmp_path / "r"), "view=grid"]) == 2
    assert "view → data.view" in capsys.readouterr().err
