"""DMGAL motion modules: the motion pipeline, S-MGA and C-MGA, checked against loop-by-loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsar.methods.dmgal.motion import CMGA, SMGA, MotionTokens, sinusoidal_positions

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def randomise_norms(module: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm/LayerNorm statistics and affine parameters, so no branch is a no-op by accident."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return module.eval()


@pytest.mark.parametrize("dim", [6, 7])
def test_sinusoidal_positions_match_the_formula(dim):
    code = sinusoidal_positions(5, dim, scale=0.1, device=torch.device("cpu"), dtype=torch.float64)
    assert code.shape == (5, dim) and code.dtype == torch.float64
    for pos in range(5):
        for i in range(dim):
            angle = pos / 10000 ** ((i - i % 2) / dim)
            expected = 0.1 * (math.sin(angle) if i % 2 == 0 else math.cos(angle))
            assert code[pos, i].item() == pytest.approx(expected, abs=1e-6)


def reference_motion(module: MotionTokens, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One video ``(T, C, h, w)`` with even h, w (nearest upsampling = repeat) → forward/backward ``(T, h·w, c)``."""
    frames, _, h, w = video.shape
    base = [module.reduce(video[t : t + 1]) for t in range(frames)]
    smooth = [module.smooth(b) for b in base]

    def fuse(diff: torch.Tensor) -> torch.Tensor:
        coarse = module.coarse(F.avg_pool2d(diff, 2)).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        fused = module.fuse((diff + coarse + module.fine(diff)) / 3)
        return fused[0].reshape(fused.shape[1], h * w).T

    zero = torch.zeros_like(base[0])
    forward = [fuse(smooth[t + 1] - base[t]) if t + 1 < frames else fuse(zero) for t in range(frames)]
    backward = [fuse(smooth[t - 1] - base[t]) if t > 0 else fuse(zero) for t in range(frames)]
    return torch.stack(forward), torch.stack(backward)


def test_motion_tokens_match_a_frame_by_frame_reference():
    torch.manual_seed(0)
    module = randomise_norms(MotionTokens(16, reduction=4))
    videos = torch.randn(2, 3, 5, 16, 4, 6)  # (episodes, videos, T, C, h, w)
    with torch.no_grad():
        forward, backward = module(videos)
        assert forward.shape == backward.shape == (2, 3, 5, 24, 4)
        for b in range(2):
            for n in range(3):
                ref_f, ref_b = reference_motion(module, videos[b, n])
                torch.testing.assert_close(forward[b, n], ref_f, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(backward[b, n], ref_b, atol=1e-5, rtol=1e-5)


def test_reversing_time_swaps_forward_and_backward_motion():
    torch.manual_seed(0)
    module = randomise_norms(MotionTokens(8, reduction=2))
    video = torch.randn(4, 6, 8, 3, 3)
    with torch.no_grad():
        forward, backward = module(video)
        rev_forward, rev_backward = module(video.flip(1))
    torch.testing.assert_close(rev_backward, forward.flip(1))
    torch.testing.assert_close(rev_forward, backward.flip(1))
    assert not torch.allclose(forward, backward)


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (3, 5), (7, 7)])
def test_modules_work_on_any_grid(grid):
    torch.manual_seed(0)
    smga = SMGA(16, gate_init=0.5).train()
    cmga = CMGA(16, gate_init=0.5).train()
    support, query = torch.randn(2, 3, 4, 16, *grid), torch.randn(2, 2, 4, 16, *grid)
    out = smga(support)
    assert out.shape == support.shape and torch.isfinite(out).all()
    new_support, new_query = cmga(support, query)
    assert new_support.shape == support.shape and new_query.shape == query.shape
    assert torch.isfinite(new_query).all()


def test_zero_gates_leave_the_features_unchanged():
    torch.manual_seed(0)
    support, query = torch.randn(2, 3, 4, 16, 3, 3), torch.randn(2, 2, 4, 16, 3, 3)
    for mode in (True, False):  # dropout and batch statistics on or off: the gate still zeroes the update
        assert torch.equal(SMGA(16).train(mode)(support), support)
        new_support, new_query = CMGA(16).train(mode)(support, query)
        assert torch.equal(new_support, support) and torch.equal(new_query, query)
    assert not torch.allclose(SMGA(16, gate_init=0.5).eval()(support), support)


def test_smga_matches_a_per_frame_reference():
    torch.manual_seed(0)
    smga = randomise_norms(SMGA(12, reduction=4, pe_scale=0.5, gate_init=0.7))
    video = torch.randn(5, 12, 4, 4)
    with torch.no_grad():
        out = smga(video)
        forward, backward = smga.attention.motion(video)
        c = forward.shape[-1]
        code = sinusoidal_positions(16, c, scale=0.5, device=video.device, dtype=video.dtype)
        for t in range(5):
            values = smga.attention.values(video[t : t + 1])[0].reshape(12, 16).T  # (hw, C)
            mixed = torch.zeros(16, 12)
            for tokens in (forward[t] + code, backward[t] + code):
                mixed += 0.5 * torch.softmax(tokens @ tokens.T / math.sqrt(c), dim=-1) @ values
            expected = video[t] + 0.7 * mixed.T.reshape(12, 4, 4)
            torch.testing.assert_close(out[t], expected, atol=1e-5, rtol=1e-5)


def test_smga_treats_each_video_on_its_own():
    torch.manual_seed(0)
    smga = randomise_norms(SMGA(8, reduction=2, gate_init=0.5))
    videos = torch.randn(3, 4, 8, 3, 3)
    changed = videos.clone()
    changed[1] = torch.randn(4, 8, 3, 3)
    with torch.no_grad():
        a, b = smga(videos), smga(changed)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]])
    assert not torch.allclose(a[1], b[1])


def reference_cmga(cmga: CMGA, support: torch.Tensor, query: torch.Tensor):
    """C-MGA by explicit loops over episodes, queries and frames."""
    att = cmga.attention
    g1, g2 = cmga.self_gate.item(), cmga.cross_gate.item()
    batch, n_support, frames, channels, h, w = support.shape
    new_support, new_query = torch.empty_like(support), torch.empty_like(query)
    for b in range(batch):
        s_fwd, s_bwd = (att.norm(t) for t in att.motion(support[b]))  # (N_s, T, hw, c)
        q_fwd, q_bwd = (att.norm(t) for t in att.motion(query[b]))
        s_vals = att.values(support[b].flatten(0, 1)).view(n_support, frames, channels, h, w)
        new_support[b] = support[b] + g1 * s_vals
        for i in range(query.shape[1]):
            for t in range(frames):
                values = torch.cat([s_vals[j, t].reshape(channels, h * w).T for j in range(n_support)])
                cross = torch.zeros(h * w, channels)
                for q_tok, s_tok in ((q_fwd, s_fwd), (q_bwd, s_bwd)):
                    keys = torch.cat([s_tok[j, t] for j in range(n_support)])
                    weights = torch.softmax(q_tok[i, t] @ keys.T / math.sqrt(keys.shape[-1]), dim=-1)
                    cross += 0.5 * weights @ values
                own = att.values(query[b, i, t : t + 1])[0]
                new_query[b, i, t] = query[b, i, t] + g1 * own + g2 * cross.T.reshape(channels, h, w)
    return new_support, new_query


def test_cmga_matches_a_loop_reference():
    torch.manual_seed(0)
    cmga = randomise_norms(CMGA(8, reduction=2, gate_init=0.6))
    with torch.no_grad():
        cmga.cross_gate.fill_(-0.9)  # distinct gates: the test tells the two branches apart
    support, query = torch.randn(2, 3, 4, 8, 2, 3), torch.randn(2, 2, 4, 8, 2, 3)
    with torch.no_grad():
        got = cmga(support, query)
        expected = reference_cmga(cmga, support, query)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)


def test_cmga_is_transduction_free():
    torch.manual_seed(0)
    cmga = randomise_norms(CMGA(8, reduction=2, gate_init=0.5))
    support, query = torch.randn(1, 4, 4, 8, 3, 3), torch.randn(1, 3, 4, 8, 3, 3)
    other_queries = query.clone()
    other_queries[:, 1] = torch.randn(4, 8, 3, 3)
    with torch.no_grad():
        s1, q1 = cmga(support, query)
        s2, q2 = cmga(support, other_queries)
        s3, q3 = cmga(support, query[:, :1])  # fewer queries
        s4, q4 = cmga(support[:, [2, 0, 3, 1]], query)  # supports reordered
        changed_support = support.clone()
        changed_support[:, 0] += 1.0
        _, q5 = cmga(changed_support, query)
    torch.testing.assert_close(q1[:, [0, 2]], q2[:, [0, 2]])  # one query's change stays with it
    torch.testing.assert_close(q3, q1[:, :1])
    torch.testing.assert_close(s1, s2)  # supports never see the queries
    torch.testing.assert_close(s1, s3)
    torch.testing.assert_close(q4, q1, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(q5, q1)  # ...but queries do see the supports


def test_cmga_rejects_mismatched_episodes():
    cmga = CMGA(8)
    with pytest.raises(ValueError, match="equal B, T, C, h, w"):
        cmga(torch.randn(1, 2, 4, 8, 3, 3), torch.randn(1, 2, 3, 8, 3, 3))
