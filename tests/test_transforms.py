import numpy as np
import pytest
import torch

from fsar.data.transforms import FramePreprocess, centre_square, pixels_from_squares


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


def test_centre_square_is_the_eval_crop_by_slicing():
    frames = np.random.default_rng(0).integers(0, 256, (3, 30, 47, 3), dtype=np.uint8)
    square = centre_square(frames)
    assert square.shape == (3, 30, 30, 3) and square.dtype == np.uint8 and square.flags.c_contiguous
    np.testing.assert_array_equal(square, frames[:, :, 8:38])
    pre = FramePreprocess(size=30)  # no resize at this size: the eval crop alone, then normalisation
    assert torch.equal(pre(frames), pre(square))


def test_pixels_from_squares_equals_frame_preprocess_on_mixed_sizes():
    """Clips of two native sizes (one enlarged to 32, one reduced), interleaved A, B, A in one batch, plus
    one already at 32 px: each comes back in input order as FramePreprocess makes it from the full frames.
    Same float32 operations, so only a different kernel's rounding order may show (well below 1e-5)."""
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, shape, dtype=np.uint8)
             for shape in ((3, 24, 40, 3), (2, 50, 45, 3), (4, 24, 30, 3), (1, 36, 32, 3))]
    pre = FramePreprocess(size=32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    out = pixels_from_squares([torch.from_numpy(centre_square(c)) for c in clips], pre)
    want = torch.cat([pre(c) for c in clips])
    assert out.shape == (10, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def test_pixels_from_squares_rejects_frames_that_are_not_uint8_squares():
    pre = FramePreprocess(size=16)
    with pytest.raises(ValueError, match="square"):
        pixels_from_squares([torch.zeros((2, 16, 20, 3), dtype=torch.uint8)], pre)
    with pytest.raises(ValueError, match="uint8"):
        pixels_from_squares([torch.zeros((2, 16, 16, 3))], pre)
