"""fsar.backbones.trunks: torchvision ResNet-50 maps and the open_clip ViT run block by block."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fsar.backbones import TINY_MODEL, BackboneUnavailableError, build_backbone
from fsar.backbones.open_clip_backbone import vit_positions
from fsar.backbones.trunks import RESNET50, ClipViTTrunk, ResNetMaps, ViTMaps, build_feature_maps

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def seeded_resnet(seed: int) -> torchvision.models.ResNet:
    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None).eval()


def test_resnet_maps_are_layer4_of_torchvision_resnet50():
    maps = ResNetMaps(init_seed=3).eval()
    reference = seeded_resnet(3)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = maps(pixels)
        assert out.shape == (2, 2048, 2, 2)  # 64 px / 32
        # The full network's logits from our maps: same weights, same layers.
        logits = reference.fc(torch.flatten(reference.avgpool(out), 1))
        torch.testing.assert_close(logits, reference(pixels), atol=1e-4, rtol=1e-4)
    assert not any(name.startswith("fc") for name, _ in maps.body.named_children())
    assert maps.preprocess.size == 224


def test_resnet_random_init_is_seeded_without_touching_the_global_rng():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = ResNetMaps(init_seed=1)
    assert torch.equal(torch.rand(1), before)
    b, c = ResNetMaps(init_seed=1), ResNetMaps(init_seed=2)
    assert torch.equal(a.body.conv1.weight, b.body.conv1.weight)
    assert not torch.equal(a.body.conv1.weight, c.body.conv1.weight)


def test_resnet_weights_load_from_a_local_file(tmp_path):
    state = seeded_resnet(7).state_dict()  # includes fc.*, which the trunk ignores
    path = tmp_path / "resnet50.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    maps = build_feature_maps(RESNET50, pretrained=str(path), init_seed=0)
    assert isinstance(maps, ResNetMaps)
    torch.testing.assert_close(maps.body.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    torch.testing.assert_close(maps.body.bn1.running_var, state["bn1.running_var"])


def test_resnet_weight_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(BackboneUnavailableError, match="nope.pt"):
        build_feature_maps(RESNET50, pretrained=str(missing))
    with pytest.raises(BackboneUnavailableError, match="local"):
        build_feature_maps(RESNET50, pretrained="imagenet")
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BackboneUnavailableError, match="not a torchvision ResNet-50"):
        build_feature_maps(RESNET50, pretrained=str(wrong))


def test_vit_trunk_reproduces_open_clip_at_the_native_size():
    torch.manual_seed(0)
    clip = build_backbone(TINY_MODEL, init_seed=5)
    trunk = ClipViTTrunk.build(TINY_MODEL, init_seed=5).eval()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens = trunk(pixels)
        pooled, grid = clip.encode(pixels, patches=True)
    assert trunk.width == 64 and trunk.depth == 2 and trunk.native_grid == (8, 8)
    assert tokens.shape == (3, 65, clip.embed_dim)
    torch.testing.assert_close(tokens[:, 0], pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[:, 1:].reshape(3, 8, 8, -1), grid, atol=1e-5, rtol=1e-5)
    assert trunk.preprocess.size == 64


def test_vit_takes_other_input_sizes_by_resizing_positions():
    trunk = ClipViTTrunk.build(TINY_MODEL).eval()
    native = vit_positions(trunk.visual, (8, 8), torch.float32)
    assert torch.equal(native, trunk.visual.positional_embedding)
    small = vit_positions(trunk.visual, (2, 4), torch.float32)
    assert small.shape == (9, 64)
    assert torch.equal(small[0], native[0])  # the class token's position is kept
    # A constant positional grid stays constant when resized.
    with torch.no_grad():
        trunk.visual.positional_embedding[1:] = 0.25
    torch.testing.assert_close(vit_positions(trunk.visual, (3, 5), torch.float32)[1:], torch.full((15, 64), 0.25))
    maps = ViTMaps(trunk)
    with torch.no_grad():
        out = maps(torch.randn(2, 3, 16, 32))
    assert maps.channels == 64 and out.shape == (2, 64, 2, 4)


def test_unknown_or_unsuitable_backbones_are_refused():
    with pytest.raises(BackboneUnavailableError, match="unknown backbone"):
        build_feature_maps("not-a-model")
