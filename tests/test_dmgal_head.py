"""fsar.methods.dmgal.head: the ``dmgal`` head on cached patch grids."""

from __future__ import annotations

import pytest
import torch

from fsar.config import ConfigError
from fsar.methods import build_method
from fsar.ops.frame_distance import mean_hausdorff, pairwise_frame_distance


def grids(batch: int = 2, n: int = 6, frames: int = 4, g: int = 2, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, n, frames, g, g, dim, generator=torch.Generator().manual_seed(seed))


def test_closed_gates_without_mixer_are_bimhm_on_the_pooled_grid():
    """Gates start at 0 (as released): with the mixer off, the head is Bi-MHM on each frame's mean patch, or on
    the flattened grid with ``pool=flatten``."""
    support, query = grids(), grids(n=4, seed=1)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    for pool, frames in (("mean", lambda x: x.mean(dim=(-3, -2))), ("flatten", lambda x: x.flatten(-3))):
        head = build_method("dmgal", feature_dim=16, num_frames=4, mixer=False, pool=pool, learn_scale=False).eval()
        distance = mean_hausdorff(pairwise_frame_distance(frames(query), frames(support)))
        expected = -(distance.view(2, 4, 3, 2).mean(-1)) / 0.125
        torch.testing.assert_close(head(support, labels, query, 3), expected, atol=1e-5, rtol=1e-5)


def test_queries_never_influence_each_other_or_the_supports():
    head = build_method("dmgal", feature_dim=16, num_frames=4, gate_init=0.5, reduction=2).eval()
    support, query = grids(), grids(n=4, seed=1)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    changed = query.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])
    with torch.no_grad():
        before, after = head(support, labels, query, 3), head(support, labels, changed, 3)
        other_support = support.clone()
        other_support[:, 0] += 1.0
        moved = head(other_support, labels, query, 3)
    torch.testing.assert_close(after[:, 1:], before[:, 1:])  # only the changed query's row moves
    assert not torch.allclose(after[:, 0], before[:, 0])
    assert not torch.allclose(moved, before)  # a support change does reach the logits: the test can fail


def test_ablation_switches_remove_their_modules():
    full = build_method("dmgal", feature_dim=16)
    assert full.smga is not None and full.mixer is not None and full.cmga is not None
    for switch in ("smga", "mixer", "cmga"):
        lean = build_method("dmgal", feature_dim=16, **{switch: False})
        assert getattr(lean, switch) is None
        assert sum(p.numel() for p in lean.parameters()) < sum(p.numel() for p in full.parameters())


def test_frame_count_and_knobs_are_checked():
    head = build_method("dmgal", feature_dim=16, num_frames=8)
    with pytest.raises(ValueError, match="knobs.num_frames=4"):
        head.encode(grids()[0])
    build_method("dmgal", feature_dim=16, num_frames=8, mixer=False).encode(grids()[0])  # no mixer, any T
    for bad in ({"pool": "max"}, {"reduction": 0}, {"dropout": 1.0}, {"temperature": 0.0}):
        with pytest.raises(ConfigError):
            build_method("dmgal", feature_dim=16, **bad)


def test_training_refuses_a_store_with_another_frame_count(tmp_path):
    from helpers import make_signal_store

    from fsar.data.sections import StoreData
    from fsar.training.config import TrainConfig
    from fsar.training.loop import check_training_inputs

    store = make_signal_store(tmp_path / "store")  # 4 frames per video
    pooled = StoreData(store=store, view="pooled")  # no patch grid: the 1x1 grid, asked for
    config = TrainConfig(method="dmgal", out=tmp_path / "run", data=pooled)
    with pytest.raises(ConfigError, match=r"num_frames=8 but 4 frames per video are in store .*; set knobs.num_frames=4"):
        check_training_inputs(config)
    check_training_inputs(TrainConfig(method="dmgal", out=tmp_path / "run", data=pooled, knobs={"num_frames": 4}))


def test_otam_metric_is_order_aware_and_on_bimhm_scale():
    torch.manual_seed(0)
    support, query = grids(batch=1, n=3), grids(batch=1, n=1, seed=2)
    labels = torch.tensor([[0, 1, 2]])
    kw = {"feature_dim": 16, "num_frames": 4, "mixer": False, "cmga": False, "smga": False, "learn_scale": False}
    bimhm, otam = (build_method("dmgal", metric=m, **kw).eval() for m in ("bimhm", "otam"))
    reverse = query.flip(2)
    with torch.no_grad():
        assert torch.allclose(bimhm(support, labels, reverse, 3), bimhm(support, labels, query, 3))  # order-blind
        assert not torch.allclose(otam(support, labels, reverse, 3), otam(support, labels, query, 3))
        # Both are frame-level 1 − cos in [0, 2] summed over two directions: logits in [-4/0.125, 0].
        for head in (bimhm, otam):
            assert float(head(support, labels, query, 3).min()) >= -4 / 0.125 - 1e-3


@pytest.mark.parametrize(("pool", "proj_dim"), [("mean", 0), ("flatten", 0), ("flatten", 6), ("mean", 6)])
def test_cached_video_parts_give_the_released_cmga(pool, proj_dim):
    """The head caches each video's C-MGA parts and runs the cross branch in the projected space; the logits
    equal C-MGA applied to the episode's maps as released (support' = x + γ₁·self, query' = x + γ₁·self +
    γ₂·cross), then projected, pooled and compared with Bi-MHM."""
    torch.manual_seed(0)
    head = build_method("dmgal", feature_dim=16, num_frames=4, gate_init=0.7, reduction=2, pool=pool,
                        proj_dim=proj_dim, learn_scale=False).eval()
    support, query = grids(), grids(n=4, seed=1)
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    with torch.no_grad():
        maps = [head.mixer(head.smga(x.permute(0, 1, 2, 5, 3, 4).flatten(0, 1))).view(2, -1, 4, 16, 2, 2)
                for x in (support, query)]
        s_new, q_new = head.cmga(*maps)

        def frames(m):
            tokens = m.flatten(-2).transpose(-1, -2)
            tokens = head.proj(tokens) if head.proj is not None else tokens
            return tokens.mean(-2) if pool == "mean" else tokens.flatten(-2)

        distance = mean_hausdorff(pairwise_frame_distance(frames(q_new), frames(s_new)))
        expected = -(distance.view(2, 4, 3, 2).mean(-1)) / 0.125
        torch.testing.assert_close(head(support, labels, query, 3), expected, atol=1e-4, rtol=1e-4)
