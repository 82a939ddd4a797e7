"""fsar.backbones.stage: the trainable backbone stage, its tuning regimes and its views (``fsar-tiny``: width 64,
2 blocks, 64 px, patch 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.backbones import BackboneUnavailableError
from fsar.backbones.stage import BackboneStage, LoRA, StageTokens, stage_view
from fsar.config import ConfigError
from fsar.data.sections import StageSettings, Tuning, parse_tuning

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def pixels(videos: int = 2, frames: int = 3, side: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(videos, frames, 3, side, side, generator=torch.Generator().manual_seed(seed))


def stage(tune: str = "full", view: str = "pooled", **kw) -> BackboneStage:
    return BackboneStage(StageSettings(tune=tune, **kw), view=view)  # type: ignore[arg-type]


def test_tune_settings_parse_and_bad_ones_say_what_is_accepted():
    assert parse_tuning("frozen") == Tuning("frozen") and parse_tuning("full") == Tuning("full")
    assert parse_tuning("last:2") == Tuning("last", 2) and parse_tuning("lora:8") == Tuning("lora", 8)
    for bad in ("last:0", "lora:", "partial", "last:-1", "lora:x"):
        with pytest.raises(ConfigError, match="frozen, full, last:K"):
            StageSettings(tune=bad)
    with pytest.raises(ConfigError, match="lr_scale"):
        StageSettings(lr_scale=-1.0)


def test_views_follow_the_store_rules():
    assert stage_view("frames", "auto") == "pooled" and stage_view("frames", "grid") == "grid"
    assert stage_view("patches", "auto") == "patches" and stage_view("patches", "pooled") == "pooled"
    with pytest.raises(ConfigError, match="patch-grid methods"):
        stage_view("frames", "patches")
    s = stage(view="grid", patch_grid=2)
    assert s.output_dim == 4 * 64 and s(pixels()).shape == (2, 3, 4 * 64)
    assert stage(view="patches", patch_grid=2)(pixels()).shape == (2, 3, 2, 2, 64)
    assert stage()(pixels()).shape == (2, 3, 64)
    with pytest.raises(ConfigError, match="8x8 patch grid"):
        stage(view="grid", patch_grid=9)


def trainable(s: BackboneStage) -> set[str]:
    return {n for n, p in s.named_parameters() if p.requires_grad}


def test_each_regime_trains_what_it_says_and_gets_gradients_there():
    visual = {n for n, _ in stage("frozen").named_parameters() if ".visual." in n}
    assert trainable(stage("frozen")) == set()
    assert trainable(stage("full")) == visual  # the text tower never trains
    last = trainable(stage("last:1"))
    assert last and all(".resblocks.1." in n or n.endswith(("ln_post.weight", "ln_post.bias", "visual.proj"))
                        for n in last)
    assert any(n.endswith("visual.proj") for n in last) and not any(".resblocks.0." in n for n in last)
    lora = trainable(stage("lora:2"))
    assert len(lora) == 8 and all(n.endswith((".down", ".up")) for n in lora)  # 2 blocks × (in, out) × (A, B)
    for tune in ("full", "last:1", "lora:2"):
        s = stage(tune, view="grid", patch_grid=2).train()
        s(pixels()).square().mean().backward()
        for name, param in s.named_parameters():
            if param.requires_grad:
                assert param.grad is not None, f"{tune}: {name}"
                # LoRA's A gets a zero gradient while B is still 0 (B gets its first one here); DDP needs only
                # that a gradient exists.
                assert name.endswith(".down") or param.grad.abs().sum() > 0, f"{tune}: {name}"


def test_frozen_parts_run_without_autograd():
    records: dict[str, bool] = {}
    s = stage("last:1")
    blocks = s.encoder.model.visual.transformer.resblocks
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda _m, _i, out, i=i: records.__setitem__(f"block{i}", out.requires_grad))
    assert s(pixels()).requires_grad
    assert records == {"block0": False, "block1": True}
    assert not stage("frozen")(pixels()).requires_grad


def test_lora_starts_at_the_encoder_and_adds_a_low_rank_update():
    x = pixels()
    torch.testing.assert_close(stage("lora:2")(x), stage("frozen")(x))
    lora = LoRA(6, 4, 2, alpha=4.0)
    with torch.no_grad():
        lora.up.normal_()
    weight = torch.randn(6, 4)
    torch.testing.assert_close(lora(weight), weight + 2.0 * lora.up @ lora.down)
    assert torch.linalg.matrix_rank(lora(weight) - weight) == 2


def test_regimes_the_encoder_cannot_take_are_refused():
    with pytest.raises(ConfigError, match="has 2 blocks"):
        stage("last:3")
    with pytest.raises(ConfigError, match="LoRA adapts attention"):
        stage("lora:2", backbone="resnet50")


class Shift(torch.nn.Module):
    """A block adapter adding ``scale ×`` a learned per-channel vector to every patch token (a shape check too)."""

    def __init__(self, width: int, frames: int, scale: float = 1.0) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.linspace(-1.0, 1.0, width))  # not constant: LayerNorm removes that
        self.frames, self.scale = frames, scale
        self.seen: list[tuple[int, ...]] = []

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(patches.shape))
        return patches + self.scale * self.bias


def test_tokens_view_then_finish_is_the_encoder_and_adapters_act_where_put():
    x = pixels(videos=2, frames=3)
    plain = stage("frozen", view="patches", patch_grid=0)
    tokens_stage = stage("frozen", view="tokens")
    with torch.no_grad():
        tokens = tokens_stage(x)
        assert isinstance(tokens, StageTokens)
        assert tokens.cls.shape == (2, 3, 64) and tokens.patches.shape == (2, 3, 8, 8, 64)
        final = tokens_stage.finish(tokens)  # (videos, T, 1 + 64, D)
        pooled = stage("frozen")(x)
        torch.testing.assert_close(final[..., 0, :], pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(final[..., 1:, :].reshape(2, 3, 8, 8, -1), plain(x), atol=1e-5, rtol=1e-5)
    adapted = stage("frozen", view="pooled")
    shift = Shift(64, frames=3, scale=0.0)
    adapted.put_adapters({1: shift})
    assert trainable(adapted) == {"adapters.1.bias"} and not adapted.frozen
    out = adapted(x)
    assert shift.seen == [(2, 3, 8, 8, 64)]  # per video: (videos, T, g, g, W)
    torch.testing.assert_close(out, pooled)  # a zero update leaves the encoder as it was
    shift.scale = 1.0
    out = adapted(x)
    assert not torch.allclose(out, pooled, atol=1e-3)  # the comparison above can fail
    out.square().sum().backward()
    assert shift.bias.grad is not None and shift.bias.grad.abs().sum() > 0


def test_adapters_start_autograd_at_their_block_and_norms_at_the_embedding():
    records: dict[str, bool] = {}
    s = stage("frozen")
    for i, block in enumerate(s.encoder.model.visual.transformer.resblocks):
        block.register_forward_hook(lambda _m, _i, out, i=i: records.__setitem__(f"block{i}", out.requires_grad))
    assert s.autograd_from == 2  # nothing trains: all of it without autograd
    s.put_adapters({1: Shift(64, frames=3)})
    assert s.autograd_from == 1
    assert s(pixels()).requires_grad and records == {"block0": False, "block1": True}
    s.train_norms()
    assert s.autograd_from == 0 and any("ln_pre" in n for n in trainable(s))
    with pytest.raises(ConfigError, match="out of range"):
        s.put_adapters({2: Shift(64, frames=3)})
    with pytest.raises(ConfigError, match="need an open_clip ViT"):
        stage("frozen", backbone="resnet50").put_adapters({0: Shift(2048, frames=3)})
    with pytest.raises(ConfigError, match="tokens view needs an open_clip ViT"):
        stage("frozen", view="tokens", backbone="resnet50")


def test_resnet50_stage_gives_layer4_views_and_tunes_its_last_stages():
    s = stage("last:1", view="patches", backbone="resnet50", patch_grid=2)
    assert s.preprocess.size == 224 and s.embed_dim == 2048
    out = s(torch.randn(1, 2, 3, 64, 64))
    assert out.shape == (1, 2, 2, 2, 2048) and out.requires_grad
    assert trainable(s) and all(".layer4." in n for n in trainable(s))
    with pytest.raises(BackboneUnavailableError, match="local torchvision state-dict file only"):
        stage("full", backbone="resnet50", pretrained="imagenet")


@pytest.mark.parametrize("backbone", ["fsar-tiny", "resnet50"])
def test_frozen_stage_gives_the_store_features_for_the_same_clips(tmp_path, synth, backbone):
    """The stage and ``fsar embed`` run the same encoder code: the same decoded test clips give the store's
    pooled and patch features, up to the store's fp16 (ResNet-50: torchvision's, random init, at 224 px)."""
    from helpers import embed_config

    from fsar.data.feature_store import FeatureStore
    from fsar.data.sections import ManifestData
    from fsar.sources.pixels import PixelEvaluation, normalise
    from pipelines.embed import run as embed

    embed(embed_config(synth, tmp_path / "store", frames=4, patch_grid=2, shard_size=8, backbone=backbone),
          progress=False)
    features = FeatureStore(tmp_path / "store")
    assert features.meta.backbone == backbone and features.meta.embed_dim == (2048 if backbone == "resnet50" else 64)
    data = ManifestData(manifest=synth, frames=4, stage=StageSettings(backbone=backbone, tune="frozen", patch_grid=2,
                                                                      pretrained="none"))
    for view, method in (("pooled", "otam"), ("patches", "i2st")):
        evaluation = PixelEvaluation(data, "test")
        built, key = evaluation.build(method, {})
        clips = normalise(torch.from_numpy(evaluation.split_for(key).pixels), key.preprocess)
        with torch.no_grad():
            got = built.stage(clips).numpy()
        want = features.load_split("test", view=view, as_grid=view == "patches")  # type: ignore[arg-type]
        assert list(want.video_ids) == evaluation.video_ids(key)
        # ResNet-50 sees the 64 px clips upsampled to 224, which the pixel path caches as uint8 after resizing
        # (embed resizes in float): a rounding of 1/510 at most, grown through 50 random-init layers.
        tolerance = 1e-2 if backbone == "resnet50" else 2e-3
        np.testing.assert_allclose(got, np.asarray(want.features, dtype=np.float32), atol=5 * tolerance, rtol=tolerance)
