import numpy as np
import pytest

from fsar.data.sampling import ShortVideoError, segment_indices


def test_eval_is_deterministic_and_centred():
    a = segment_indices(80, 8, mode="eval")
    assert np.array_equal(a, segment_indices(80, 8, mode="eval"))
    assert a.tolist() == [5, 15, 25, 35, 45, 55, 65, 75]


@pytest.mark.parametrize("n", [8, 9, 31, 32, 100, 997])
def test_train_offsets_stay_inside_their_segment(n):
    rng = np.random.default_rng(0)
    bounds = np.arange(9) * n / 8
    for _ in range(200):
        idx = segment_indices(n, 8, mode="train", rng=rng)
        assert np.all(idx >= np.floor(bounds[:-1])) and np.all(idx < np.ceil(bounds[1:]))
        assert np.all(np.diff(idx) >= 0) and idx.max() < n


def test_train_draws_vary_with_rng_and_repeat_with_seed():
    draws = {tuple(segment_indices(100, 8, mode="train", rng=np.random.default_rng(s))) for s in range(20)}
    assert len(draws) > 10
    assert np.array_equal(
        segment_indices(100, 8, mode="train", rng=np.random.default_rng(3)),
        segment_indices(100, 8, mode="train", rng=np.random.default_rng(3)),
    )


def test_short_video_repeats_frames_in_order():
    idx = segment_indices(3, 8, mode="eval")
    assert idx.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    train = segment_indices(5, 8, mode="train", rng=np.random.default_rng(1))
    assert set(train.tolist()) <= set(range(5)) and np.all(np.diff(train) >= 0)


def test_short_video_error_policy_and_empty_video():
    with pytest.raises(ShortVideoError, match="3 frames but 8"):
        segment_indices(3, 8, short_video="error")
    with pytest.raises(ShortVideoError, match="no frames"):
        segment_indices(0, 8)
    with pytest.raises(ValueError, match="rng"):
        segment_indices(10, 4, mode="train")
