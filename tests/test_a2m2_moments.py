"""fsar.methods.a2m2.moments: windows, second moments and the M2 block against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.methods.a2m2.moments import M2Block, Scale, second_moment, time_features, window_samples


def test_window_samples_hold_the_right_patches():
    v, t, g, d = 2, 6, 4, 3
    x = torch.randn(v, t, g, g, d)
    samples, centres = window_samples(x, Scale(frames=2, block=2))
    # (6 // 2) time windows × (4 / 2)² blocks, each of 2 frames × 2 × 2 patches.
    assert samples.shape == (v, 3 * 4, 8, d) and centres.shape == (12,)
    # Window index = time_window · 4 + block_row · 2 + block_col; pick time window 1, block (1, 0).
    window = samples[1, 1 * 4 + 1 * 2 + 0]
    expected = x[1, 2:4, 2:4, 0:2].reshape(-1, d)
    assert sorted(map(tuple, window.tolist())) == sorted(map(tuple, expected.tolist()))
    # Centre times: frames {0,1} → 0.5/5, {2,3} → 2.5/5, {4,5} → 4.5/5, repeated for the 4 blocks.
    torch.testing.assert_close(centres[::4], torch.tensor([0.1, 0.5, 0.9]))


def test_whole_grid_and_trailing_frames():
    x = torch.randn(1, 7, 2, 2, 5)
    samples, centres = window_samples(x, Scale(frames=3, block=0))
    assert samples.shape == (1, 2, 3 * 4, 5)  # frame 6 does not fill a third window and is left out
    torch.testing.assert_close(samples[0, 1], x[0, 3:6].reshape(-1, 5))
    with pytest.raises(ValueError, match="does not divide"):
        window_samples(x, Scale(frames=1, block=3))
    whole, centre = window_samples(x, Scale(frames=8, block=0))  # longer than the clip: the whole clip
    torch.testing.assert_close(whole[0, 0], x[0].reshape(-1, 5))
    assert centre.tolist() == [0.5]


def test_second_moment_matches_numpy_and_handles_one_sample():
    samples = torch.randn(3, 10, 4, dtype=torch.float64)
    for i in range(3):
        np.testing.assert_allclose(second_moment(samples)[i].numpy(), np.cov(samples[i].numpy().T, bias=True), atol=1e-12)
    one = torch.randn(2, 1, 4, dtype=torch.float64)
    torch.testing.assert_close(second_moment(one), one.transpose(-1, -2) @ one)


def test_time_features_are_distinct_per_window():
    feats = time_features(torch.linspace(0, 1, 8))
    assert feats.shape == (8, 8)
    assert torch.cdist(feats, feats).add(torch.eye(8)).min() > 0.1


def eigen_sqrt(mat: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(mat.double())
    return (vectors * values.clamp_min(0).sqrt()[..., None, :]) @ vectors.transpose(-1, -2)


def test_candidates_equal_an_eigendecomposition_pipeline():
    """With many Newton–Schulz steps the block's output equals projecting the eigh square root."""
    torch.manual_seed(0)
    scales = [Scale(1, 0), Scale(2, 2)]
    block = M2Block(feature_dim=6, reduce_dim=4, embed_dim=5, scales=scales, ns_iterations=25,
                    temporal_centre=True, time_encoding=True).eval()
    # A non-trivial LayerNorm affine map, so that the normalisation is not an identity.
    block.norm.weight.data.uniform_(0.5, 2.0)
    block.norm.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(3, 4, 2, 2, 6)
    candidates, reduced = block(x)
    assert candidates.shape == (3, block.num_candidates(4, 2), 5) == (3, 4 * 1 + 2 * 1, 5)
    centred = x - x.mean(dim=1, keepdim=True)
    ref_reduced = torch.relu(block.norm(block.reduce(centred).reshape(-1, 4)).reshape(3, 4, 2, 2, 4))
    torch.testing.assert_close(reduced, ref_reduced)
    expected = []
    for i, scale in enumerate(scales):
        samples, centres = window_samples(ref_reduced, scale)
        root = eigen_sqrt(second_moment(samples.double()))
        rows, cols = torch.triu_indices(4, 4)
        vec = root[..., rows, cols].float()
        expected.append(block.project(vec) + block.scale_embedding[i] + block.time_projection(time_features(centres)))
    # NS with the relative ridge 1e-5 approximates sqrt(C + 1e-5·tr(C)·I): agreement to ~1e-3 relative.
    torch.testing.assert_close(candidates, torch.cat(expected, dim=1), atol=2e-3, rtol=2e-3)


def test_rank_deficient_windows_stay_finite_with_gradients():
    """Scale 1 on a 1×1 grid has one sample per window (rank 1), scale 2 has rank ≤ 1 after centring."""
    torch.manual_seed(1)
    block = M2Block(feature_dim=8, reduce_dim=16, embed_dim=4, scales=[Scale(1, 0), Scale(2, 0)], ns_iterations=5,
                    temporal_centre=True, time_encoding=False)
    x = torch.randn(5, 8, 1, 1, 8, requires_grad=True)
    candidates, _ = block(x)
    candidates.square().sum().backward()
    assert torch.isfinite(candidates).all() and torch.isfinite(x.grad).all()
    for p in block.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    # A static video has zero centred features: its moments are zero, not NaN.
    static = torch.ones(1, 8, 1, 1, 8)
    assert torch.isfinite(block.eval()(static)[0]).all()
