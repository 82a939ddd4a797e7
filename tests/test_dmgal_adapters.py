"""DMGAL-Adapter's adapters, block adapters of a frozen stage on the tiny open_clip ViT (``fsar-tiny``: width 64, 2 blocks, 64 px, patch 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsar.backbones import TINY_MODEL, build_backbone
from fsar.backbones.open_clip_backbone import vit_tokens
from fsar.config import ConfigError
from fsar.methods import build_method
from fsar.methods.dmgal import DMGALAdapter
from fsar.methods.dmgal.adapters import SMGAAdapter, default_adapter_blocks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def motion_params(channels: int, c: int) -> int:
    """Parameters of one motion pipeline: reduce (1×1 + BN), depth-wise smooth, two 3×3 + BN, 1×1 fuse."""
    return channels * c + 2 * c + 9 * c + 2 * (9 * c * c + 2 * c) + c * c


def smga_adapter_params(width: int, bottleneck: int, reduction: int) -> int:
    c = max(1, bottleneck // reduction)
    linear = (width * bottleneck + bottleneck) + (bottleneck * width + width)
    return linear + motion_params(bottleneck, c) + 9 * bottleneck + 1  # + depth-wise values + gate


def cmga_adapter_params(width: int, bottleneck: int, reduction: int) -> int:
    c = max(1, bottleneck // reduction)
    linear = (width * bottleneck + bottleneck) + (bottleneck * width + width)
    return linear + motion_params(bottleneck, c) + 2 * c + 9 * bottleneck + 2  # + LayerNorm, values, 2 gates


def adapter_method(**knobs) -> DMGALAdapter:
    return build_method("dmgal_adapter", feature_dim=0, **knobs)  # type: ignore[return-value]


def run_adapted(method: DMGALAdapter, videos: torch.Tensor) -> torch.Tensor:
    """Videos through the adapted stage without the per-task step: final tokens ``(..., T, 1 + L, D)``."""
    return method.stage.finish(method.encode(videos))


def test_zero_gate_adapters_leave_the_backbone_output_unchanged():
    torch.manual_seed(0)
    videos = torch.randn(2, 3, 3, 64, 64)  # (videos, T, 3, H, W) at the model's own size
    clip = build_backbone(TINY_MODEL, init_seed=0)
    method = adapter_method(adapter_blocks=[0, 1], bottleneck=16).eval()
    cross = method.cross_adapter
    assert cross is not None
    with torch.no_grad():
        tokens = run_adapted(method, videos)
        pooled, grid = clip.encode(videos.flatten(0, 1), patches=True)
        torch.testing.assert_close(tokens[..., 0, :].flatten(0, 1), pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tokens[..., 1:, :].flatten(0, 1), grid.flatten(1, 2), atol=1e-5, rtol=1e-5)
        patches = method.encode(videos).patches
        s, q = patches[None, :1], patches[None, 1:]
        new_s, new_q = cross(s, q)
        assert torch.equal(new_s, s) and torch.equal(new_q, q)
        # The same adapters with open gates do change the output: the comparison above can fail.
        for adapter in method.stage.adapters.values():
            adapter.gate.fill_(0.5)
        assert not torch.allclose(run_adapted(method, videos), tokens, atol=1e-3)
        cross.cross_gate.fill_(0.5)
        assert not torch.allclose(cross(s, q)[1], q, atol=1e-3)


def test_smga_adapter_updates_patches_through_its_bottleneck():
    torch.manual_seed(0)
    adapter = SMGAAdapter(12, 4, reduction=2, gate_init=0.3).eval()
    patches = torch.randn(2, 3, 2, 2, 12)  # (videos, T, g, g, width)
    with torch.no_grad():
        out = adapter(patches)
        hidden = adapter.down(patches).permute(0, 1, 4, 2, 3)  # channel-first for the motion attention
        update = adapter.attention(hidden).permute(0, 1, 3, 4, 2)
        torch.testing.assert_close(out, patches + 0.3 * adapter.up(update))


def test_adapters_leave_the_class_token_and_other_videos_alone():
    torch.manual_seed(0)
    method = adapter_method(adapter_blocks=[1], bottleneck=16, gate_init=0.5).eval()  # before the last block only
    videos = torch.randn(3, 2, 3, 32, 32)
    changed = videos.clone()
    changed[1] = torch.randn(2, 3, 32, 32)
    visual = method.stage.encoder.model.visual
    with torch.no_grad():
        cls_a, patches_a = method.encode(videos)
        _, patches_b = method.encode(changed)
        plain = visual.transformer.resblocks[0](vit_tokens(visual, videos.flatten(0, 1)))
    torch.testing.assert_close(patches_a[[0, 2]], patches_b[[0, 2]])
    assert not torch.allclose(patches_a[1], patches_b[1])
    # The adapter before block 1 acts on patches only: its class token is block 0's.
    torch.testing.assert_close(cls_a.flatten(0, 1), plain[:, 0])


def test_adapter_blocks_default_to_the_first_half_and_are_checked():
    assert default_adapter_blocks(12) == [0, 1, 2, 3, 4, 5]
    assert default_adapter_blocks(2) == [0] and default_adapter_blocks(1) == [0]
    with pytest.raises(ConfigError, match="out of range"):
        adapter_method(adapter_blocks=[2], bottleneck=8)


@pytest.mark.parametrize("train_layernorm", [False, True])
def test_only_the_adapters_train(train_layernorm):
    torch.manual_seed(0)
    method = build_method("dmgal_adapter", feature_dim=0, adapter_blocks=[0, 1], bottleneck=16,
                          train_layernorm=train_layernorm)
    trainable = {n: p for n, p in method.named_parameters() if p.requires_grad}
    expected = 2 * smga_adapter_params(64, 16, 8) + cmga_adapter_params(64, 16, 8)
    norms = [m for m in method.stage.encoder.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 2  # ln_1, ln_2 per block; ln_pre, ln_post
    if train_layernorm:
        expected += sum(p.numel() for m in norms for p in m.parameters())
    assert sum(p.numel() for p in trainable.values()) == expected
    allowed = ("stage.adapters.", "cross_adapter.") + (("stage.encoder.",) if train_layernorm else ())
    assert all(n.startswith(allowed) for n in trainable), sorted(trainable)
    frozen = sum(p.numel() for p in method.stage.encoder.parameters() if not p.requires_grad)
    assert frozen > 0.9 * sum(p.numel() for p in method.stage.encoder.parameters())


def test_a_training_step_changes_adapters_and_not_the_backbone():
    torch.manual_seed(0)
    method = build_method("dmgal_adapter", feature_dim=0).train()
    backbone = {k: v.clone() for k, v in method.stage.encoder.state_dict().items()}
    adapters = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
    # A naive optimiser over every parameter, with weight decay: frozen weights have no gradient and stay put.
    optimiser = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
    support, query = torch.randn(2, 3, 4, 3, 32, 32), torch.randn(2, 3, 4, 3, 32, 32)
    labels = torch.arange(3).expand(2, 3)
    for _ in range(2):  # the first step opens the gates; the second reaches the weights behind them
        loss = F.cross_entropy(method(support, labels, query, 3).reshape(-1, 3), labels.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for key, value in method.stage.encoder.state_dict().items():
        assert torch.equal(value, backbone[key]), key
    changed = [n for n, p in method.named_parameters() if p.requires_grad and not torch.equal(p, adapters[n])]
    assert set(changed) == set(adapters)
