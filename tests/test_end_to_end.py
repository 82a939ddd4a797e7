"""fsar.methods.end_to_end: every registered frames or patches method composed with the backbone stage, under the
registry's contract (shapes, gradients to every trainable parameter, each video encoded alone, batched =
one episode at a time), and trained, warm-started and evaluated from a manifest."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fsar.config import ConfigError
from fsar.data.sections import StageSettings
from fsar.methods import build_method, list_methods, method_info
from fsar.methods.base import Supervision
from fsar.methods.end_to_end import EndToEnd

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread

COMPOSABLE = [n for n in list_methods() if method_info(n).input_kind in ("frames", "patches")]
# Small sizes of the methods' learned parts (as the registry tests use), where a method has the knob.
SMALL = {"proj_dim": 16, "learn_scale": True, "num_frames": 4, "gate_init": 0.1, "reduction": 2, "scales": [2, 4],
         "dim": 16, "embed_dim": 16, "reduce_dim": 8}


def compose(name: str, tune: str = "full") -> EndToEnd:
    fields = {f.name for f in dataclasses.fields(method_info(name).config)}
    torch.manual_seed(0)
    method = build_method(name, feature_dim=0, stage=StageSettings(tune=tune, patch_grid=2, view="auto"),
                          **{k: v for k, v in SMALL.items() if k in fields})
    assert isinstance(method, EndToEnd) and method.input_kind == "pixels"
    return method


def episodes(batch: int = 2, way: int = 3, shot: int = 1, n_query: int = 1, frames: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    support = torch.randn(batch, way * shot, frames, 3, 64, 64, generator=gen)  # fsar-tiny: its own 64 px
    query = torch.randn(batch, way * n_query, frames, 3, 64, 64, generator=gen)
    labels = torch.arange(way).repeat_interleave(shot).expand(batch, -1)
    return support, labels, query, torch.arange(way).repeat_interleave(n_query).expand(batch, -1)


def text_for(method: EndToEnd, batch: int, way: int = 3) -> torch.Tensor | None:
    return torch.randn(batch, way, method.stage.text_dim) if method.uses_text else None


@pytest.mark.parametrize("name", COMPOSABLE)
def test_every_composition_keeps_the_method_s_declarations_and_shapes(name):
    method = compose(name).eval()
    head = method.method
    assert (method.pair_table, method.uses_text, method.clip_length) == (head.pair_table, head.uses_text, head.clip_length)
    assert method.preprocess == method.stage.preprocess
    support, labels, query, _ = episodes()
    with torch.no_grad():
        logits = method(support, labels, query, 3, class_text=text_for(method, 2))
        text = text_for(method, 1)
        one = method(support[1], labels[1], query[1], 3, class_text=None if text is None else text[0])
    assert logits.shape == (2, 3, 3) and torch.isfinite(logits).all() and one.shape == (3, 3)


@pytest.mark.parametrize("name", COMPOSABLE)
@pytest.mark.parametrize("tune", ["full", "last:1", "lora:2"])
def test_gradients_reach_every_trainable_parameter_of_stage_and_method(name, tune):
    method = compose(name, tune).train()
    support, labels, query, query_labels = episodes()
    logits, aux = method.forward_with_aux(support, labels, query, 3, class_text=text_for(method, 2),
                                          supervision=Supervision(query_labels=query_labels))
    (F.cross_entropy(logits.reshape(-1, 3), query_labels.reshape(-1)) + sum(aux.values())).backward()
    params = {n: p for n, p in method.named_parameters() if p.requires_grad}
    assert any(n.startswith("stage.") for n in params)
    for pname, param in params.items():
        assert param.grad is not None, f"{name} ({tune}): {pname} got no gradient"


@pytest.mark.parametrize("name", [n for n in COMPOSABLE if n != "dmgal"])  # DMGAL keeps the released BatchNorm
def test_training_encodes_each_video_alone(name):
    method = compose(name).train()
    for module in method.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    videos = torch.randn(3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        together, alone = method.encode(videos), method.encode(videos[:1])
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["otam", "i2st", "trx"])
def test_batched_equals_one_episode_at_a_time(name):
    method = compose(name).eval()
    support, labels, query, _ = episodes(batch=3, seed=2)
    with torch.no_grad():
        batched = method(support, labels, query, 3)
        for b in range(3):
            torch.testing.assert_close(method(support[b], labels[b], query[b], 3), batched[b], atol=1e-5, rtol=1e-5)


def test_a_pixels_method_refuses_a_stage_and_a_bad_view_is_named():
    with pytest.raises(ConfigError, match="brings its own encoder"):
        build_method("dmgal_ft", feature_dim=0, stage=StageSettings())
    with pytest.raises(ConfigError, match="patch-grid methods"):
        build_method("otam", feature_dim=0, stage=StageSettings(view="patches"))


def test_end_to_end_run_warm_starts_from_a_cached_run_and_evaluates_from_the_manifest(tmp_path, synth):
    """A cached OTAM run on a store of fsar-tiny warm-starts OTAM on a LoRA stage of the same encoder (its
    projection loaded exactly); the end-to-end run trains with the encoder at lr × lr_scale, saves a
    checkpoint that rebuilds the composition, and `fsar eval --manifest` scores it."""
    from helpers import embed_config

    from fsar.data.sections import ManifestData, StoreData
    from fsar.training.checkpoint import load_checkpoint, warm_start
    from fsar.training.config import TrainConfig
    from fsar.training.loop import parameter_groups, train_worker
    from pipelines.embed import run as embed
    from pipelines.evaluate import EvalConfig
    from pipelines.evaluate import run as evaluate

    embed(embed_config(synth, tmp_path / "store", frames=4, patch_grid=2, shard_size=8), progress=False)
    common = {"method": "otam", "knobs": {"proj_dim": 16}, "way": 3, "shot": 1, "query": 1, "steps": 2,
              "episodes_per_step": 1, "val_every": 2, "val_episodes": 6, "warmup_steps": 1, "lr": 1e-2}
    cached = TrainConfig(data=StoreData(store=tmp_path / "store", view="grid"), out=tmp_path / "cached", **common)
    train_worker(cached, report=lambda m, p: p and torch.save(p, tmp_path / "cached.pt"))
    stage = StageSettings(tune="lora:2", view="grid", patch_grid=2, lr_scale=0.5)
    data = ManifestData(manifest=synth, frames=4, decode="threads", decode_threads=2, stage=stage)
    config = TrainConfig(data=data, out=tmp_path / "e2e", init_from=tmp_path / "cached.pt", **common)

    from fsar.sources import open_source

    method = open_source(config).build_method()
    warm_start(method, tmp_path / "cached.pt")
    trained_cached, _ = load_checkpoint(tmp_path / "cached.pt")
    torch.testing.assert_close(method.method.proj.weight, trained_cached.proj.weight)
    groups = parameter_groups(config, method)
    assert [g["lr"] for g in groups] == [1e-2, 5e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.stage.parameters() if p.requires_grad}

    payloads = []
    train_worker(config, report=lambda m, p: payloads.append(p))
    torch.save(payloads[-1], tmp_path / "e2e.pt")
    rebuilt, payload = load_checkpoint(tmp_path / "e2e.pt")
    assert isinstance(rebuilt, EndToEnd) and payload["stage"]["tune"] == "lora:2"
    records = evaluate(EvalConfig(data=ManifestData(manifest=synth, frames=4), out=tmp_path / "eval",
                                  runs=[str(tmp_path / "e2e.pt")], episodes=20, way=3), progress=False)
    assert len(records) == 1 and 0 <= records[0].accuracy <= 100
    assert records[0].method.startswith("otam on fsar-tiny lora:2 (trained")  # the row names its encoder and regime


def test_warm_start_from_another_encoder_is_refused_naming_the_difference(tmp_path, synth):
    from helpers import embed_config

    from fsar.data.sections import ManifestData, StoreData
    from fsar.sources import open_source
    from fsar.training.checkpoint import warm_start
    from fsar.training.config import TrainConfig
    from fsar.training.loop import train_worker
    from pipelines.embed import run as embed

    embed(embed_config(synth, tmp_path / "store", frames=4, patch_grid=2, shard_size=8), progress=False)
    common = {"method": "otam", "knobs": {"proj_dim": 16}, "way": 3, "steps": 1, "episodes_per_step": 1,
              "val_every": 1, "val_episodes": 6, "query": 1}
    cached = TrainConfig(data=StoreData(store=tmp_path / "store", view="grid"), out=tmp_path / "cached", **common)
    train_worker(cached, report=lambda m, p: p and torch.save(p, tmp_path / "cached.pt"))
    for stage, fragment in ((StageSettings(view="grid", patch_grid=2, init_seed=5), "init_seed (store 0, stage 5)"),
                            (StageSettings(view="grid", patch_grid=1), "patch_grid (store 2, stage 1)")):
        data = ManifestData(manifest=synth, frames=4, stage=stage)
        method = open_source(TrainConfig(data=data, out=tmp_path / "x", **common)).build_method()
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            warm_start(method, tmp_path / "cached.pt")
    with pytest.raises(ConfigError, match="trained otam, this one trains protonet"):
        data = ManifestData(manifest=synth, frames=4, stage=StageSettings(view="grid", patch_grid=2))
        other = open_source(TrainConfig(data=data, out=tmp_path / "y", **(common | {"method": "protonet"}))).build_method()
        warm_start(other, tmp_path / "cached.pt")


def test_manifest_evaluation_gives_each_run_the_text_of_its_own_encoder(synth):
    """Two runs on stages of different encoders (here: two random inits of fsar-tiny) read different class text,
    each its own encoder's; a method that reads no text gets none."""
    from fsar.data.sections import ManifestData
    from fsar.sources.pixels import PixelEvaluation

    evaluation = PixelEvaluation(ManifestData(manifest=synth, frames=4), "test")
    names = [evaluation.class_names.get(label, "") for label in range(max(evaluation.class_names) + 1)]
    texts = []
    for seed in (0, 1):
        method = build_method("a2m2", feature_dim=0, stage=StageSettings(init_seed=seed, patch_grid=2))
        assert method.uses_text
        text = evaluation.text_for(method)
        torch.testing.assert_close(text, method.stage.class_text(names))
        assert evaluation.text_for(method) is text  # made once per encoder
        texts.append(text)
    assert not torch.allclose(texts[0], texts[1])
    assert evaluation.text_for(build_method("otam", feature_dim=0, stage=StageSettings())) is None
