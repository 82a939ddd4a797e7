"""End-to-end (pixels) training on real synthetic mp4s with the tiny ViT, in-process: `fsar train --manifest`,
`fsar eval --manifest`, checkpoints of both DMGAL variants, and the errors that say what to pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import pixels_config

from fsar.config import ConfigError, from_dict
from fsar.data.manifest import read_manifest, write_manifest
from fsar.data.sections import ManifestData, StageSettings, StoreData
from fsar.training.checkpoint import load_checkpoint
from fsar.training.config import TrainConfig
from fsar.training.loop import check_training_inputs, train_worker
from pipelines.cli import main

LN3 = float(np.log(3))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def write_colour_video(path: Path, colour: np.ndarray, rng: np.random.Generator, *, frames: int = 12,
                       size: int = 64) -> Path:
    """A clip of one background colour (the class) with a grey square moving at a random velocity."""
    import av

    pos, vel = rng.integers(8, size - 24, 2), rng.integers(-3, 4, 2)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "18", "preset": "ultrafast"}
        for t in range(frames):
            img = np.broadcast_to(colour, (size, size, 3)).copy()
            y, x = np.clip(pos + t * vel, 0, size - 16)
            img[y : y + 16, x : x + 16] = 128
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """An easy dataset the untrained tiny ViT already half separates: the class is the background colour
    (6 train / 3 val / 3 test classes × 4 videos), so a short run shows the loss going down."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    records = []
    for c in range(12):
        colour = (np.array([np.sin(c), np.sin(c + 2.1), np.sin(c + 4.2)]) * 100 + 128).astype(np.uint8)
        split = "train" if c < 6 else "val" if c < 9 else "test"
        for v in range(4):
            path = write_colour_video(root / f"c{c}v{v}.mp4", colour, rng)
            records.append({"video_id": f"c{c}v{v}", "path": str(path), "label": c, "class_name": f"colour{c}",
                            "split": split})
    return write_manifest(records, root / "manifest.parquet")


def test_training_loss_decreases(colours, tmp_path):
    reports = []
    config = pixels_config(colours, tmp_path / "run", knobs={"learn_scale": True}, steps=24, query=2,
                           lr=2e-2, val_every=6)
    train_worker(config, report=lambda m, p: reports.append(m))
    losses = [m["train_loss"] for m in reports]
    assert [m["step"] for m in reports] == [6, 12, 18, 24]
    assert losses[-1] < losses[0] - 0.1 and losses[-1] < LN3, losses
    assert all(m["failed_videos"] == 0 for m in reports)


def test_fsar_train_and_eval_on_a_manifest(synth, tmp_path, capsys):
    run, ev = tmp_path / "run", tmp_path / "eval"
    code = main(["train", "--manifest", str(synth), "--method", "dmgal_adapter", "--out", str(run), "--steps", "2",
                 "--way", "3", "--shot", "1", "episodes_per_step=1", "query=1", "val_every=2", "val_episodes=4",
                 "data.frames=4", "data.decode_threads=2"])
    assert code == 0, capsys.readouterr().err
    assert (run / "best.pt").is_file() and (run / "train_config.yaml").is_file()
    code = main(["eval", "--manifest", str(synth), "--run", str(run), "--method", "dmgal_ft", "--out", str(ev),
                 "--episodes", "20", "--way", "3", "--shot", "1", "data.frames=4", "knobs.dmgal_ft.num_frames=4"])
    assert code == 0, capsys.readouterr().err
    records = json.loads((ev / "results.json").read_text())
    assert [r["method"] for r in records] == ["dmgal_ft[num_frames=4]", "dmgal_adapter (trained: run)"]
    assert all(r["episodes"] == 20 and r["split"] == "test" and r["store"] == str(synth) for r in records)
    assert all(0 <= r["accuracy"] <= 100 for r in records)
    assert main(["eval", "--manifest", str(synth), "--method", "protonet", "--out", str(ev)]) == 2  # not a pixels method


@pytest.mark.parametrize("method,knobs", [("dmgal_ft", {"num_frames": 4}), ("dmgal_adapter", {})])
def test_checkpoints_round_trip(synth, tmp_path, method, knobs):
    reports = []
    train_worker(pixels_config(synth, tmp_path / "r", method=method, knobs=knobs, steps=2),
                 report=lambda m, p: reports.append(p))
    payload = reports[-1]
    from fsar.training.checkpoint import save_checkpoint

    path = save_checkpoint(payload, tmp_path / "best.pt")
    loaded, meta = load_checkpoint(path)
    frozen = {n for n, p in loaded.named_parameters() if not p.requires_grad}
    assert meta["frozen_rebuilt"] == bool(frozen) and (method == "dmgal_adapter") == bool(frozen)
    assert not frozen & set(payload["state_dict"])  # the frozen backbone is not saved ...
    for key, value in loaded.state_dict().items():  # ... and comes back identical from its init_seed
        assert torch.equal(value, payload["state_dict"].get(key, value))


def test_a_corrupt_video_does_not_stop_training(synth, tmp_path):
    table = read_manifest(synth).to_pylist()
    first_train = next(r for r in table if r["split"] == "train")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(Path(first_train["path"]).read_bytes()[:300])
    first_train["path"] = str(broken)
    manifest = write_manifest(table, tmp_path / "m.parquet")
    reports = []
    train_worker(pixels_config(manifest, tmp_path / "r", steps=6, episodes_per_step=2, query=2),
                 report=lambda m, p: reports.append(m))
    assert reports[-1]["step"] == 6 and reports[-1]["failed_videos"] >= 1


def test_errors_say_what_to_pass(synth, tmp_path):
    with pytest.raises(ConfigError, match="pass --manifest"):
        check_training_inputs(TrainConfig(method="dmgal_ft", out=tmp_path, data=StoreData(store=tmp_path)))
    with pytest.raises(ConfigError, match="brings its own encoder .*drop data.stage"):
        check_training_inputs(TrainConfig(method="dmgal_ft", out=tmp_path,
                                          data=ManifestData(manifest=synth, stage=StageSettings())))
    with pytest.raises(ConfigError, match="give exactly one of .*several"):
        from_dict(TrainConfig, {"method": "dmgal_ft", "out": str(tmp_path),
                                "data": {"store": str(tmp_path), "manifest": str(synth)}})
    with pytest.raises(ConfigError, match="frames → data.frames"):
        from_dict(TrainConfig, {"method": "dmgal_ft", "out": str(tmp_path), "data": {"manifest": str(synth)},
                                "frames": 4})
    with pytest.raises(ConfigError, match=r"num_frames=8 but 4 frames are decoded per video \(frames\); set knobs.num_frames=4"):
        check_training_inputs(pixels_config(synth, tmp_path, method="dmgal_ft", knobs={}))
    assert main(["train", "--store", str(tmp_path), "--method", "dmgal_adapter", "--out", str(tmp_path / "r")]) == 2


def test_a_resumed_run_decodes_no_completed_step(synth, tmp_path, monkeypatch):
    from fsar.sources.decoding import EpisodeDecoder

    payloads = []
    config = pixels_config(synth, tmp_path / "r", steps=4, episodes_per_step=2, query=1, val_every=2, decode="threads")
    train_worker(config, report=lambda m, p: payloads.append(p))
    decoded: list[int] = []
    original = EpisodeDecoder.decode_episode

    def counting(self, episode, rows):
        decoded.append(int(episode))
        return original(self, episode, rows)

    monkeypatch.setattr(EpisodeDecoder, "decode_episode", counting)
    reports = []
    train_worker(config, report=lambda m, p: reports.append(m), state=payloads[0], start_step=2)
    assert sorted(decoded) == [4, 5, 6, 7]  # steps 2 and 3 only, 2 episodes each: steps 0-1 are not decoded again
    assert [m["step"] for m in reports] == [4]
