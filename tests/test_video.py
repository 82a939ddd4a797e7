import numpy as np
import pytest
from helpers import decoded_index

from fsar.data.video import DecordDecoder, PyAVDecoder, VideoDecodeError, load_clip


@pytest.mark.parametrize("decoder", [DecordDecoder(), PyAVDecoder()], ids=["decord", "pyav"])
def test_decoders_return_exactly_the_requested_frames(counter_video, decoder):
    path = str(counter_video(30))
    assert decoder.num_frames(path) == 30
    wanted = [0, 3, 3, 17, 29]
    frames = decoder.read(path, wanted)
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert [decoded_index(f, 30) for f in frames] == wanted


def test_decord_and_pyav_agree(counter_video):
    path = str(counter_video(24))
    idx = list(range(0, 24, 3))
    a = DecordDecoder().read(path, idx).astype(int)
    b = PyAVDecoder().read(path, idx).astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_load_clip_eval_sampling(counter_video):
    path = counter_video(40)
    clip = load_clip(path, num_segments=8, mode="eval")
    assert clip.num_frames == 40 and clip.backend == "decord"
    assert clip.indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert [decoded_index(f, 40) for f in clip.frames] == clip.indices.tolist()


def test_fallback_backend_samples_the_same_train_indices(counter_video):
    path = counter_video(40)
    a = load_clip(path, num_segments=8, mode="train", rng=np.random.default_rng(5), backend="decord")
    b = load_clip(path, num_segments=8, mode="train", rng=np.random.default_rng(5), backend="pyav")
    assert np.array_equal(a.indices, b.indices)


def test_short_video_is_stretched_or_refused(counter_video):
    path = counter_video(4)
    clip = load_clip(path, num_segments=8)
    assert clip.indices.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [decoded_index(f, 4) for f in clip.frames] == clip.indices.tolist()
    with pytest.raises(VideoDecodeError, match="4 frames but 8"):
        load_clip(path, num_segments=8, short_video="error")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"this is not a video\n" * 10, "cannot be decoded")],
    ids=["zero-bytes", "text-file"],
)
def test_bad_files_raise_a_clear_error(tmp_path, content, message):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=message) as info:
        load_clip(bad, num_segments=4)
    assert str(bad) in str(info.value)


def test_truncated_and_missing_files(counter_video, tmp_path):
    good = counter_video(30)
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match="decord: .*pyav: "):
        load_clip(cut, num_segments=4)
    with pytest.raises(VideoDecodeError, match="file not found"):
        load_clip(tmp_path / "nope.mp4", num_segments=4)


def test_a_video_on_object_storage_decodes_like_the_local_file(counter_video, s3):
    from fsar import storage

    path = counter_video(40)
    uri = f"{s3}/videos/counter.mp4"
    storage.write_bytes(uri, path.read_bytes())
    for backend in ("decord", "pyav"):
        remote, local = load_clip(uri, num_segments=8, backend=backend), load_clip(path, num_segments=8, backend=backend)
        assert np.array_equal(remote.indices, local.indices) and np.array_equal(remote.frames, local.frames)
    with pytest.raises(VideoDecodeError, match="does not exist.*manifest's path or the bucket"):
        load_clip(f"{s3}/videos/absent.mp4", num_segments=8)
    storage.write_bytes(f"{s3}/videos/empty.mp4", b"")
    with pytest.raises(VideoDecodeError, match="empty"):
        load_clip(f"{s3}/videos/empty.mp4", num_segments=8)
