"""fsar.methods.i2st_blocks: position codes, attention blocks, instance perception, spatial/temporal attention."""

from __future__ import annotations

import pytest
import torch

from fsar.methods.i2st_blocks import (
    AttentionBlock,
    FrameScale,
    InstancePerception,
    MultiHeadAttention,
    SpatialAttention,
    TemporalAttention,
    grid_code,
    sinusoid_code,
)
from fsar.ops.instance_masks import mask_pool

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_position_codes_have_the_asked_width_and_tell_positions_apart():
    for width in (1, 7, 16):
        assert sinusoid_code(torch.arange(5), width).shape == (5, width)
    code = grid_code(3, 10)
    assert code.shape == (9, 10)
    assert torch.cdist(code, code).add(torch.eye(9)).min() > 0.1  # all 9 cells differ
    # Row-major: cells of one row share the row half of the code.
    torch.testing.assert_close(code[0, :5], code[2, :5])
    assert not torch.allclose(code[0, :5], code[3, :5])
    assert grid_code(1, 6).shape == (1, 6)


def test_frame_scale_removes_the_overall_scale_but_keeps_which_patches_stand_out():
    torch.manual_seed(0)
    frames = torch.randn(3, 9, 8)
    frames[:, 4] *= 5  # one salient patch per frame
    scaled = FrameScale()(frames)
    torch.testing.assert_close(FrameScale()(7 * frames), scaled)
    torch.testing.assert_close(scaled.pow(2).mean(dim=(-1, -2)), torch.ones(3))
    assert (scaled.norm(dim=-1).argmax(dim=-1) == 4).all()  # a per-patch LayerNorm would erase this


def test_attention_block_self_and_cross():
    torch.manual_seed(0)
    cross = AttentionBlock(8, heads=2, mlp_ratio=2.0, cross=True)
    plain = AttentionBlock(8, heads=2, mlp_ratio=2.0, cross=False)
    x, context = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    assert cross(x, context).shape == (3, 4, 8) and plain(x).shape == (3, 4, 8)
    assert plain.norm_context is None  # no parameters that could never get a gradient
    with pytest.raises(ValueError, match="cross=True"):
        cross(x)
    with pytest.raises(ValueError, match="cross=True"):
        plain(x, context)


@pytest.mark.parametrize("lengths", [(4, 6), (5, 5)])
def test_multi_head_attention_matches_torch_reference_with_the_same_weights(lengths):
    torch.manual_seed(0)
    dim, heads = 8, 2
    ours, reference = MultiHeadAttention(dim, heads), torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():  # torch keeps q, k, v stacked in one in-projection
        reference.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key_value.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key_value.bias]))
        reference.out_proj.weight.copy_(ours.out.weight)
        reference.out_proj.bias.copy_(ours.out.bias)
    x, context = torch.randn(3, lengths[0], dim), torch.randn(3, lengths[1], dim)
    expected = reference(x, context, context, need_weights=False)[0]
    torch.testing.assert_close(ours(x, context), expected)
    torch.testing.assert_close(ours(x, x), reference(x, x, x, need_weights=False)[0])


def test_instance_perception_pools_patch_tokens_with_its_own_masks():
    torch.manual_seed(0)
    module = InstancePerception(8, instances=3, heads=2, mlp_ratio=2.0)
    patches = torch.randn(5, 9, 8)  # 5 frames, 3×3 patches
    instances, logits = module(patches)
    assert instances.shape == (5, 3, 8) and logits.shape == (5, 3, 9)
    torch.testing.assert_close(instances, mask_pool(patches, logits.sigmoid()))
    # Each frame is handled alone: a frame's outputs do not change with the other frames.
    alone, alone_logits = module(patches[2:3])
    torch.testing.assert_close(alone, instances[2:3])
    torch.testing.assert_close(alone_logits, logits[2:3])


def test_instance_location_codes_where_the_mask_is():
    """With ``location=True`` an instance adds a code of its mask's centroid: the same patch tokens laid out
    differently (here: the grid mirrored left-right) give the same masks but other instance embeddings."""
    from fsar.methods.i2st_blocks import grid_coordinates, location_features

    torch.manual_seed(0)
    module = InstancePerception(8, instances=2, heads=2, mlp_ratio=2.0, location=True)
    patches = torch.randn(4, 9, 8)
    mirrored = patches.view(4, 3, 3, 8).flip(2).reshape(4, 9, 8)
    instances, logits = module(patches)
    flipped, flipped_logits = module(mirrored)
    torch.testing.assert_close(flipped_logits, logits.view(4, 2, 3, 3).flip(-1).reshape(4, 2, 9))
    masks = logits.sigmoid()
    centroids = mask_pool(grid_coordinates(3), masks)
    torch.testing.assert_close(instances, mask_pool(patches, masks) + module.location(location_features(centroids)))
    assert not torch.allclose(flipped, instances, atol=1e-4)  # a mirrored layout is another instance location
    assert grid_coordinates(1).abs().sum() == 0 and grid_coordinates(3)[[0, 8]].tolist() == [[-1.0, -1.0], [1.0, 1.0]]
    plain = InstancePerception(8, instances=2, heads=2, mlp_ratio=2.0)
    assert plain.location is None


def test_spatial_attention_is_per_frame():
    torch.manual_seed(0)
    module = SpatialAttention(8, heads=2, mlp_ratio=2.0).eval()
    image, instances = torch.randn(4, 9, 8), torch.randn(4, 3, 8)
    new_image, new_instances = module(image, instances)
    assert new_image.shape == image.shape and new_instances.shape == instances.shape
    one_image, one_instances = module(image[1:2], instances[1:2])
    torch.testing.assert_close(one_image, new_image[1:2])
    torch.testing.assert_close(one_instances, new_instances[1:2])


def test_temporal_attention_mixes_frames_and_knows_their_order():
    torch.manual_seed(0)
    module = TemporalAttention(8, instances=2, heads=2, mlp_ratio=2.0).eval()
    tokens = torch.randn(2, 5, 3, 8)  # 2 videos, 5 frames, [frame; 2 instances]
    out = module(tokens)
    assert out.shape == tokens.shape
    changed = tokens.clone()
    changed[0, 4] += torch.randn(3, 8)  # the last frame of video 0 changes (not by a constant: LayerNorm removes it) ...
    moved = module(changed)
    assert not torch.allclose(moved[0, 0], out[0, 0])  # ... and its first frame sees it
    torch.testing.assert_close(moved[1], out[1])  # videos stay apart
    reversed_out = module(tokens.flip(1))
    assert not torch.allclose(reversed_out.flip(1), out, atol=1e-4)  # the time code makes order matter
