"""Episodic training core: loss module, checkpoints, and a loop that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import config, make_shifting_patch_store, make_signal_store

from fsar.data.sections import StoreData
from fsar.training.checkpoint import load_checkpoint, save_checkpoint
from fsar.training.config import TrainConfig
from fsar.training.loop import train_worker


@pytest.fixture
def signal_store(tmp_path):
    return make_signal_store(tmp_path / "store")


def test_loop_improves_validation_and_reports_checkpoints(signal_store, tmp_path):
    reports = []
    train_worker(config(signal_store, tmp_path / "run"), report=lambda m, p: reports.append((m, p)))
    assert [m["step"] for m, _ in reports] == [20, 40, 60]
    assert all(p is not None and p["step"] == m["step"] for m, p in reports)
    first, last = reports[0][0], reports[-1][0]
    assert last["best_val_accuracy"] > first["val_accuracy"] + 5
    assert reports[0][0]["is_best"] == 1.0


def test_non_zero_ranks_do_not_validate(signal_store, tmp_path):
    reports = []
    train_worker(config(signal_store, tmp_path / "run", steps=20), rank=1, world_size=2,
                 report=lambda m, p: reports.append((m, p)))
    assert len(reports) == 1 and reports[0][1] is None and "val_accuracy" not in reports[0][0]


def test_checkpoint_round_trip_rebuilds_the_method(signal_store, tmp_path):
    reports = []
    train_worker(config(signal_store, tmp_path / "run", steps=20), report=lambda m, p: reports.append(p))
    path = save_checkpoint(reports[-1], tmp_path / "best.pt")
    method, payload = load_checkpoint(path)
    assert payload["method"] == "protonet" and payload["knobs"]["proj_dim"] == 16
    for key, value in reports[-1]["state_dict"].items():
        assert torch.equal(method.state_dict()[key], value)


def test_up_front_errors(signal_store, tmp_path):
    noop = lambda m, p: None  # noqa: E731
    with pytest.raises(ValueError, match="no learnable parameters"):
        train_worker(config(signal_store, tmp_path / "r", knobs={}), report=noop)
    with pytest.raises(ValueError, match="model selection on the test split"):
        train_worker(config(signal_store, tmp_path / "r", val_split="test"), report=noop)
    from fsar.data.feature_store import FeatureStoreError

    with pytest.raises(FeatureStoreError, match="expects 'ViT-B-16'"):
        train_worker(config(signal_store, tmp_path / "r", backbone="ViT-B-16"), report=noop)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 — torch's unpickling error type varies by version
        load_checkpoint(tmp_path / "bad.pt")


def test_every_registered_frame_method_trains(signal_store, tmp_path):
    """Each method with learnable parameters (here: its projection) runs the loop and reports finite metrics;
    methods that need class-name text get a store that has it."""
    from fsar.methods import list_methods, method_info

    with_text = make_signal_store(tmp_path / "with_text", text=True)
    for name in list_methods():
        info = method_info(name)
        if info.input_kind != "frames":
            continue
        reports = []
        knobs = {k: v for k, v in {"proj_dim": 16, "mlp_dim": 64}.items() if k in info.config.__dataclass_fields__}
        cfg = config(with_text if info.needs_text else signal_store, tmp_path / name, method=name, knobs=knobs,
                     steps=6, val_every=3, val_episodes=20)
        train_worker(cfg, report=lambda m, p, reports=reports: reports.append(m))
        assert [m["step"] for m in reports] == [3, 6], name
        assert all(np.isfinite(m["train_loss"]) and 0 <= m["val_accuracy"] <= 100 for m in reports), name


def test_every_registered_patch_method_trains_and_reloads(tmp_path):
    """Patch-grid methods read (N, T, g, g, D) and, when they use it, the store's class text; the
    checkpoint records the view and rebuilds the method."""
    from fsar.data.feature_store import FeatureStore
    from fsar.methods import list_methods, method_info

    store = make_shifting_patch_store(tmp_path / "store")
    assert FeatureStore(store).class_text().shape == (20, 8)
    names = [n for n in list_methods() if method_info(n).input_kind == "patches"]
    assert "a2m2" in names
    for name in names:
        fields = method_info(name).config.__dataclass_fields__
        knobs = {k: v for k, v in {"reduce_dim": 4, "embed_dim": 8, "weight_hidden": 8, "num_frames": 4}.items()
                 if k in fields}
        reports = []
        cfg = config(store, tmp_path / name, method=name, knobs=knobs, steps=6, val_every=3, val_episodes=20)
        train_worker(cfg, report=lambda m, p, reports=reports: reports.append((m, p)))
        assert [m["step"] for m, _ in reports] == [3, 6], name
        assert all(np.isfinite(m["train_loss"]) and 0 <= m["val_accuracy"] <= 100 for m, _ in reports), name
        payload = reports[-1][1]
        assert payload["resolved_view"] == "patches", name
        method, _ = load_checkpoint(save_checkpoint(payload, tmp_path / f"{name}.pt"))
        assert method.input_kind == "patches"


def test_check_training_inputs_catches_impossible_validation_episodes(signal_store, tmp_path):
    from fsar.data.episodes import EpisodeError
    from fsar.training.loop import check_training_inputs

    check_training_inputs(config(signal_store, tmp_path / "r"))
    with pytest.raises(EpisodeError, match="^val: way=7 needs 7 classes"):  # 12 train classes, 6 val classes
        check_training_inputs(config(signal_store, tmp_path / "r", way=7))


class HostFeatures:
    """The per-step side of a source whose steps may hold no complete episode (decoded videos can all fail)."""

    autocast = False
    may_skip_steps = True

    def method_inputs(self, inputs, method, device):
        return inputs.to(device, torch.float32)

    def episode_extras(self, episodes, method, device):
        return None, None


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_step_without_a_complete_episode_or_with_a_nan_changes_no_weight_and_no_optimiser_state(tmp_path, optimizer):
    """AdamW's decoupled weight decay and SGD's momentum would move the weights on a zero gradient; a NaN
    gradient would poison them."""
    import copy

    from fsar.data.episodes import episode_labels
    from fsar.methods import build_method
    from fsar.sources.base import StepBatch
    from fsar.training.loop import EpisodicLoss, make_optimizer, training_step

    torch.manual_seed(0)
    method = build_method("otam", feature_dim=8, proj_dim=4)
    cfg = TrainConfig(method="otam", out=tmp_path, data=StoreData(store=tmp_path), way=2, shot=1, query=1,
                      optimizer=optimizer, lr=0.1, weight_decay=0.1, warmup_steps=1)
    opt, _ = make_optimizer(cfg, [p for p in method.parameters() if p.requires_grad])
    s_lab, q_lab = (torch.as_tensor(episode_labels(2, 1)),) * 2
    inputs = torch.randn(3, 4, 5, 8)  # 3 episodes of 2 support + 2 query videos, 5 frames of 8 features

    def step(weight, batch_inputs=inputs):
        return training_step(EpisodicLoss(method), opt, method, HostFeatures(),
                             StepBatch(batch_inputs, None, weight=weight), cfg, s_lab, q_lab, per_forward=3,
                             device=torch.device("cpu"))

    assert step(1.0)[2]  # optimiser state now holds moments / momentum
    weights, state = copy.deepcopy(method.state_dict()), copy.deepcopy(opt.state_dict())
    loss, _, applied, finite = step(0.0)
    assert not applied and finite and torch.isfinite(loss)
    assert all(torch.equal(weights[k], v) for k, v in method.state_dict().items())
    after = opt.state_dict()["state"]
    assert all(torch.equal(torch.as_tensor(value), torch.as_tensor(after[i][name]))
               for i, entry in state["state"].items() for name, value in entry.items())
    poisoned = inputs.clone()
    poisoned[1, 0, 2, 3] = float("nan")  # one feature of one video: a NaN loss, NaN gradients
    loss, _, applied, finite = step(1.0, poisoned)
    assert not torch.isfinite(loss) and not finite and not applied  # skipped, never applied
    assert all(torch.equal(weights[k], v) for k, v in method.state_dict().items())
    assert all(torch.isfinite(p).all() for p in method.parameters())
    assert step(1.0)[2]  # and a step with episodes moves them again
    assert any(not torch.equal(weights[k], v) for k, v in method.state_dict().items())


def test_steps_that_stay_non_finite_stop_the_run_and_leave_the_best_checkpoint(signal_store, tmp_path, monkeypatch):
    from fsar.training.loop import EpisodicLoss, TrainingDiverged

    calls = {"n": 0}
    original = EpisodicLoss.forward

    def poisoned(self, *args, **kwargs):  # from the 5th step on, every loss is NaN
        calls["n"] += 1
        loss, acc, extra = original(self, *args, **kwargs)
        return (loss * float("nan") if calls["n"] > 4 else loss), acc, extra

    monkeypatch.setattr(EpisodicLoss, "forward", poisoned)
    reports = []
    cfg = config(signal_store, tmp_path / "run", steps=40, val_every=2, episodes_per_step=1, max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged, match="training stopped at step 7: 3 steps in a row.*max_nonfinite_steps=3"):
        train_worker(cfg, report=lambda m, p: reports.append((m, p)))
    assert [m["step"] for m, _ in reports] == [2, 4, 6]
    assert [m["nonfinite_steps"] for m, _ in reports] == [0.0, 0.0, 2.0]
    best = [p for m, p in reports if m["is_best"]][-1]
    assert all(torch.isfinite(v).all() for v in best["state_dict"].values() if v.is_floating_point())
