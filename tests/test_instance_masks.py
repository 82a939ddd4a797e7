"""fsar.ops.instance_masks: mask-weighted pooling, text pseudo-masks, the matched BCE + Dice loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsar.ops.instance_masks import (
    dice_loss,
    instance_matching_loss,
    mask_pool,
    matched_mask_loss,
    text_pseudo_masks,
    union_log_probs,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_mask_pool_with_a_one_hot_mask_returns_exactly_that_patch():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 9, 5, generator=gen)  # 2 frames of 3×3 patches, D = 5
    masks = torch.zeros(2, 3, 9)  # K = 3 masks per frame
    picks = [[4, 0, 8], [7, 2, 2]]
    for frame, row in enumerate(picks):
        for k, patch in enumerate(row):
            masks[frame, k, patch] = 1.0
    pooled = mask_pool(features, masks)
    assert pooled.shape == (2, 3, 5)
    for frame, row in enumerate(picks):
        for k, patch in enumerate(row):
            assert torch.equal(pooled[frame, k], features[frame, patch])  # exactly, not approximately


def test_mask_pool_is_a_weighted_mean_and_an_empty_mask_pools_to_zero():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    masks = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    pooled = mask_pool(features, masks)
    torch.testing.assert_close(pooled[0], torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(pooled[1], torch.zeros(2))
    torch.testing.assert_close(pooled[2], torch.tensor([3.5, 2.5]))
    # Scaling a mask does not change its mean: only where it puts weight matters.
    torch.testing.assert_close(mask_pool(features, 7 * masks[:1]), pooled[:1])


def synthetic_frame(grid=4, dim=16, seed=0):
    """Patches of a frame where one 2×1 region is the text embedding plus small noise, the rest unrelated."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(dim, generator=gen)
    patches = torch.randn(grid * grid, dim, generator=gen)
    region = [5, 9]
    patches[region] = text + 0.1 * torch.randn(len(region), dim, generator=gen)
    return patches, text, region


def test_pseudo_mask_is_highest_on_the_region_matching_the_text():
    patches, text, region = synthetic_frame()
    soft = text_pseudo_masks(patches, text)
    assert soft.shape == (16,)
    assert float(soft.min()) >= 0.0 and float(soft.max()) == pytest.approx(1.0)
    others = [p for p in range(16) if p not in region]
    assert float(soft[region].min()) > float(soft[others].max())
    assert int(soft.argmax()) in region
    hard = text_pseudo_masks(patches, text, threshold=0.9)
    assert hard[region].tolist() == [1.0, 1.0] and float(hard[others].sum()) == 0.0


def test_pseudo_masks_broadcast_text_per_video_and_carry_no_gradient():
    patches, text, region = synthetic_frame()
    other_patches, other_text, other_region = synthetic_frame(seed=1)
    batch = torch.stack([patches, other_patches])[:, None].expand(2, 3, 16, 16).requires_grad_()  # (V, T, P, D)
    masks = text_pseudo_masks(batch, torch.stack([text, other_text])[:, None])
    assert masks.shape == (2, 3, 16) and not masks.requires_grad
    assert int(masks[0, 0].argmax()) in region and int(masks[1, 2].argmax()) in other_region


def test_pseudo_mask_of_a_uniform_frame_is_empty():
    text = torch.randn(8)
    assert torch.equal(text_pseudo_masks(torch.ones(1, 8), text), torch.zeros(1))  # a 1×1 grid
    assert torch.equal(text_pseudo_masks(text.expand(4, 8), text), torch.zeros(4))


def test_dice_loss():
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert float(dice_loss(target, target)) == pytest.approx(0.0)
    assert float(dice_loss(torch.zeros(1, 4), torch.zeros(1, 4))) == pytest.approx(0.0)
    assert float(dice_loss(1 - target, target)) == pytest.approx(1 - 1 / 5)  # no overlap: only smoothing


def test_union_log_probs_match_the_direct_formula():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    log_p, log_not = union_log_probs(logits)
    union = 1 - torch.prod(1 - logits.sigmoid(), dim=-2)
    torch.testing.assert_close(log_p.exp(), union)
    torch.testing.assert_close(log_not.exp(), 1 - union)


def test_best_match_supervises_the_cheapest_query_only():
    target = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]])  # (V=1, T=1, P=4)
    good = 6 * (2 * target[:, :, None] - 1)  # logits agreeing with the target
    logits = torch.cat([torch.zeros(1, 1, 1, 4), good, -good], dim=2).requires_grad_()  # K=3, query 1 matches
    loss = matched_mask_loss(logits, target, torch.tensor([True]))
    expected = (F.binary_cross_entropy_with_logits(good[0, 0, 0], target[0, 0]) + dice_loss(good.sigmoid(), target).sum())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    loss.backward()
    per_query = logits.grad.abs().sum(dim=(0, 1, 3))
    assert per_query[1] > 0 and per_query[0] == 0 and per_query[2] == 0


def test_match_is_per_video_and_invalid_videos_take_no_part():
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(3, 4, 9, generator=gen) > 0.5).float()
    logits = torch.randn(3, 4, 2, 9, generator=gen, requires_grad=True)
    valid = torch.tensor([True, False, True])
    for match in ("best", "union"):
        loss = matched_mask_loss(logits, target, valid, match=match)
        alone = [matched_mask_loss(logits[i : i + 1], target[i : i + 1], valid[i : i + 1], match=match) for i in (0, 2)]
        torch.testing.assert_close(loss, (alone[0] + alone[1]) / 2)
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0
    none_valid = matched_mask_loss(logits, target, torch.zeros(3, dtype=torch.bool))
    assert float(none_valid.detach()) == 0.0 and none_valid.requires_grad


def test_the_loss_prefers_masks_that_fit():
    target = torch.zeros(1, 2, 9)
    target[0, :, 4] = 1.0
    fitting = 8 * (2 * target[:, :, None] - 1).expand(1, 2, 2, 9)
    for match in ("best", "union"):
        right = matched_mask_loss(fitting, target, torch.tensor([True]), match=match)
        wrong = matched_mask_loss(fitting.roll(1, dims=-1), target, torch.tensor([True]), match=match)
        assert float(right) < 0.05 < 1.0 < float(wrong)


def test_matched_mask_loss_checks_shapes_and_match():
    with pytest.raises(ValueError, match=r"logits \(V, T, K, P\)"):
        matched_mask_loss(torch.zeros(2, 3, 4, 9), torch.zeros(2, 3, 8), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="best' or 'union"):
        matched_mask_loss(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 4), torch.ones(1, dtype=torch.bool), match="all")


def hungarian_reference(logits, target, valid):
    """instance_matching_loss computed the textbook way: a cost matrix per video, SciPy's Hungarian solver on
    the present instances, the matched costs averaged."""
    from scipy.optimize import linear_sum_assignment

    per_video = []
    for v in range(logits.shape[0]):
        present = [i for i in range(target.shape[2]) if target[v, :, i].max() > 0]
        if not valid[v] or not present:
            continue
        cost = torch.zeros(logits.shape[2], len(present))
        for k in range(logits.shape[2]):
            for j, i in enumerate(present):
                tgt = target[v, :, i]
                bce = F.binary_cross_entropy_with_logits(logits[v, :, k], tgt, reduction="none").mean(-1)
                cost[k, j] = (bce + dice_loss(logits[v, :, k].sigmoid(), tgt)).mean()
        rows, cols = linear_sum_assignment(cost.numpy())
        per_video.append(cost[rows, cols].sum() / len(present))
    return torch.stack(per_video).mean() if per_video else torch.zeros(())


@pytest.mark.parametrize("queries, instances", [(4, 1), (4, 3), (4, 4), (6, 2)])
def test_instance_matching_equals_the_hungarian_assignment(queries, instances):
    g = torch.Generator().manual_seed(queries * 10 + instances)
    logits = torch.randn(5, 3, queries, 16, generator=g) * 2
    target = (torch.rand(5, 3, instances, 16, generator=g) > 0.6).float()
    target[1, :, 0] = 0  # an instance absent from a video takes no part
    valid = torch.tensor([True, True, False, True, True])
    torch.testing.assert_close(instance_matching_loss(logits, target, valid),
                               hungarian_reference(logits, target, valid), rtol=1e-5, atol=1e-6)


def test_instance_matching_supervises_every_matched_query_and_no_other():
    logits = torch.zeros(1, 2, 4, 9, requires_grad=True)
    target = torch.zeros(1, 2, 2, 9)
    target[0, :, 0, :3], target[0, :, 1, 6:] = 1.0, 1.0
    instance_matching_loss(logits, target, torch.tensor([True])).backward()
    touched = (logits.grad.abs().sum(dim=(0, 1, 3)) > 0).tolist()
    assert sum(touched) == 2  # two instances, two matched queries, the other two untouched
    with pytest.raises(ValueError, match="raise the method's instances to at least 5"):
        instance_matching_loss(torch.zeros(1, 1, 4, 9), torch.zeros(1, 1, 5, 9), torch.tensor([True]))
