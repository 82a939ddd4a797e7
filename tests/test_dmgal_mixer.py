"""DMGAL's time-then-channel MLP mixer, against an einsum computation of the same two residual MLPs."""

from __future__ import annotations

import pytest
import torch

from fsar.methods.dmgal.mixer import TimeChannelMixer


def mlp(x: torch.Tensor, first: torch.nn.Linear, second: torch.nn.Linear, spec: str, axis: int) -> torch.Tensor:
    """Two-layer ReLU MLP along dimension ``axis`` of ``x``, written as einsums with the weight matrices."""
    bias_shape = [-1 if i == axis else 1 for i in range(x.dim())]
    hidden = torch.relu(torch.einsum(spec, x, first.weight) + first.bias.view(bias_shape))
    return torch.einsum(spec, hidden, second.weight) + second.bias.view(bias_shape)


def test_mixer_matches_an_independent_computation():
    torch.manual_seed(0)
    mixer = TimeChannelMixer(6, 4)
    maps = torch.randn(2, 3, 4, 6, 2, 3)  # (episodes, videos, T, C, h, w)
    with torch.no_grad():
        out = mixer(maps)
        # Time MLP: out[t] = sum_s W[t, s] x[s], per (video, channel, position).
        time_first, _, time_second = mixer.time
        x = maps + mlp(maps, time_first, time_second, "abschw,ts->abtchw", axis=2)
        chan_first, _, chan_second = mixer.channel
        expected = x + mlp(x, chan_first, chan_second, "abtchw,dc->abtdhw", axis=3)
    assert out.shape == maps.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_mixer_mixes_frames_within_a_video_only():
    torch.manual_seed(0)
    mixer = TimeChannelMixer(5, 3)
    videos = torch.randn(4, 3, 5, 2, 2)
    changed = videos.clone()
    changed[2, 0] += 1.0  # one frame of one video
    with torch.no_grad():
        a, b = mixer(videos), mixer(changed)
    torch.testing.assert_close(a[[0, 1, 3]], b[[0, 1, 3]])
    assert not torch.allclose(a[2, 1], b[2, 1])  # other frames of that video do change


def test_mixer_needs_its_clip_length():
    mixer = TimeChannelMixer(5, 8)
    with pytest.raises(ValueError, match="num_frames"):
        mixer(torch.randn(2, 4, 5, 2, 2))
    with pytest.raises(ValueError):
        TimeChannelMixer(5, 0)
