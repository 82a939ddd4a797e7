"""fsar.backbones.trunks: torchvision ResNet-50 maps and their weights files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fsar.backbones import BackboneUnavailableError
from fsar.backbones.trunks import RESNET50, ResNetMaps, build_feature_maps

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


def test_unknown_or_unsuitable_backbones_are_refused():
    with pytest.raises(BackboneUnavailableError, match="unknown backbone"):
        build_feature_maps("not-a-model")
