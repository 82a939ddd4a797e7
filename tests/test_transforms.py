import numpy as np
import pytest
import torch

from fsar.data.transforms import FramePreprocess


def test_eval_resizes_shorter_side_crops_centre_and_normalises():
    frames = np.zeros((2, 60, 100, 3), dtype=np.uint8)
    frames[:, :, 20:80] = 255  # the centre 60×60 square is white, the sides black
    pre = FramePreprocess(size=30, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = pre(frames)
    assert out.shape == (2, 3, 30, 30) and out.dtype == torch.float32
    assert torch.allclose(out, torch.ones_like(out), atol=1e-4)  # white → (1-0.5)/0.5


def test_train_crop_is_shared_by_all_frames_and_seeded():
    rng_frames = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    clip = np.repeat(rng_frames, 4, axis=0)
    pre = FramePreprocess(size=32)
    a = pre(clip, train=True, rng=np.random.default_rng(1))
    b = pre(clip, train=True, rng=np.random.default_rng(1))
    assert torch.equal(a, b)
    assert all(torch.equal(a[0], a[t]) for t in range(4))  # same region in every frame
    crops = {pre(clip, train=True, rng=np.random.default_rng(s)).sum().item() for s in range(8)}
    assert len(crops) > 1


def test_bad_shape_and_missing_rng():
    pre = FramePreprocess(size=16)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        pre(np.zeros((4, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError, match="rng"):
        pre(np.zeros((1, 16, 16, 3), dtype=np.uint8), train=True)
