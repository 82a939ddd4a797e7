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


def test_window_spans_cover_the_video_and_end_at_its_end():
    from fsar.data.video import window_spans

    assert window_spans(100, 10.0, 3.0, 2.0) == [(0, 30), (20, 50), (40, 70), (60, 90), (70, 100)]
    assert window_spans(25, 10.0, 3.0, 1.0) == [(0, 25)]  # shorter than a window: the whole video
    with pytest.raises(ValueError, match="positive seconds"):
        window_spans(100, 10.0, 0.0, 1.0)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_windows_of_a_long_video_hold_their_own_frames(counter_video, backend):
    """A 4 s video at 10 fps, 2 s windows every 1.5 s: each window's frames are its segment centres, in seconds
    as the container's frame rate says."""
    from fsar.data.video import load_windows

    path = counter_video(40, fps=10)
    windows = load_windows(path, num_segments=4, window_s=2.0, stride_s=1.5, backend=backend)
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 2.0), (1.5, 3.5), (2.0, 4.0)]
    for w in windows:
        start = round(w.start_s * 10)
        assert w.indices.tolist() == [start + 2, start + 7, start + 12, start + 17]
        assert [decoded_index(f, 40) for f in w.frames] == w.indices.tolist()
    with open(path, "rb") as f:  # the same from bytes in memory (an upload)
        again = load_windows(f.read(), num_segments=4, window_s=2.0, stride_s=1.5, backend=backend)
    assert [w.indices.tolist() for w in again] == [w.indices.tolist() for w in windows]


def test_a_broken_upload_is_named_as_such():
    from fsar.data.video import load_windows

    with pytest.raises(VideoDecodeError, match="<uploaded video>: cannot be decoded"):
        load_clip(b"not a video at all", num_segments=4)
    with pytest.raises(VideoDecodeError, match="<uploaded video>"):
        load_windows(b"\x00" * 100, num_segments=4, window_s=1.0, stride_s=1.0)


def test_windows_come_in_groups_that_together_are_every_window(counter_video):
    from fsar.data.video import iter_windows, load_windows

    path = counter_video(40, fps=10)
    groups = list(iter_windows(path, num_segments=4, window_s=1.0, stride_s=0.5, windows_per_read=3))
    assert [len(g) for g in groups] == [3, 3, 1]
    every = load_windows(path, num_segments=4, window_s=1.0, stride_s=0.5)
    assert [w.indices.tolist() for g in groups for w in g] == [w.indices.tolist() for w in every]
