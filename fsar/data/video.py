"""Decode the sampled frames of one video: decord first, PyAV as fallback, one interface.

Only the requested frames are converted to arrays: decord seeks to them (``get_batch``); PyAV demuxes
sequentially, converts only the wanted frames and stops after the last one.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from fsar import storage
from fsar.data.sampling import SampleMode, ShortVideoError, ShortVideoPolicy, segment_indices

Backend = Literal["auto", "decord", "pyav"]
SampleFn = Callable[[int], np.ndarray]
Source = str | bytes  # a local path, or the bytes of a video fetched from object storage


def _openable(source: Source) -> str | io.BytesIO:
    """What PyAV opens: the path itself, or a fresh in-memory file over fetched bytes."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


class VideoDecodeError(RuntimeError):
    """A video could not be read; the message names the file and what each backend said."""


class VideoDecoder(Protocol):
    """What a decoding backend provides."""

    name: str

    def num_frames(self, path: Source) -> int:
        """Number of frames in the video."""
        ...

    def read(self, path: Source, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (non-decreasing, may repeat) as ``(len(indices), H, W, 3)`` uint8 RGB."""
        ...

    def read_sampled(self, path: Source, sample: SampleFn) -> tuple[np.ndarray, np.ndarray, int]:
        """Frames picked by ``sample(num_frames)``, the indices, and the frame count."""
        ...


class DecordDecoder:
    """Frame-accurate random access through decord's VideoReader (one thread: workers parallelise)."""

    name = "decord"

    def _reader(self, path: Source):  # decord imported lazily: it is optional at import time of fsar
        import decord

        if isinstance(path, bytes):
            # decord 0.6 cannot read from memory (its FFI refuses the bytes), so a temporary file, unlinked as
            # soon as FFmpeg holds it open.
            with tempfile.NamedTemporaryFile(suffix=".video") as f:
                f.write(path)
                f.flush()
                return decord.VideoReader(f.name, num_threads=1)
        return decord.VideoReader(path, num_threads=1)

    def num_frames(self, path: Source) -> int:
        return len(self._reader(path))

    def read(self, path: Source, indices: Sequence[int]) -> np.ndarray:
        reader = self._reader(path)
        return self._read_from(reader, indices)

    @staticmethod
    def _read_from(reader, indices: Sequence[int]) -> np.ndarray:
        wanted = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(wanted, return_inverse=True)
        frames = reader.get_batch(unique.tolist()).asnumpy()
        return frames[inverse]

    def read_sampled(self, path: Source, sample: SampleFn) -> tuple[np.ndarray, np.ndarray, int]:
        """Count frames and read the ones ``sample(num_frames)`` picks, opening the file once."""
        reader = self._reader(path)
        n = len(reader)
        indices = sample(n)
        return self._read_from(reader, indices), indices, n


class PyAVDecoder:
    """Sequential decode with PyAV; converts only the wanted frames and stops after the last."""

    name = "pyav"

    def num_frames(self, path: Source) -> int:
        import av

        with av.open(_openable(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames)
            # Some containers carry no frame count: count packets without decoding them.
            return sum(1 for p in container.demux(stream) if p.size > 0)

    def read(self, path: Source, indices: Sequence[int]) -> np.ndarray:
        import av

        wanted = np.asarray(indices, dtype=np.int64)
        if wanted.size == 0:
            raise ValueError("no frame indices requested")
        unique = np.unique(wanted)
        got: dict[int, np.ndarray] = {}
        last = int(unique[-1])
        wanted_set = set(unique.tolist())
        with av.open(_openable(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted_set:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        missing = [int(i) for i in unique if int(i) not in got]
        if missing:
            raise VideoDecodeError(f"frames {missing[:5]} not found (video has {len(got)} decodable)")
        return np.stack([got[int(i)] for i in wanted])

    def read_sampled(self, path: Source, sample: SampleFn) -> tuple[np.ndarray, np.ndarray, int]:
        """Count frames and read the ones ``sample(num_frames)`` picks."""
        n = self.num_frames(path)
        indices = sample(n)
        return self.read(path, indices), indices, n


_DECODERS: dict[str, VideoDecoder] = {"decord": DecordDecoder(), "pyav": PyAVDecoder()}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _fetch(uri: str) -> bytes:
    """A video on object storage, read whole: both decoders need to seek, and a clip of a few frames is
    worth one GET of a few MB rather than many ranged reads."""
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise VideoDecodeError(f"video {uri}: {exc} — check the manifest's path or the bucket") from exc
    if not data:
        raise VideoDecodeError(f"video {uri}: object is empty (0 bytes) — re-upload or remove it")
    return data


def _precheck(path: str) -> None:
    """Catch the cases with an obvious message before a backend produces a cryptic one."""
    if "://" in path:
        return
    if not os.path.exists(path):
        raise VideoDecodeError(f"video {path}: file not found — check the manifest's path or the video root")
    if os.path.isdir(path):
        raise VideoDecodeError(f"video {path}: is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"video {path}: file is empty (0 bytes) — re-download or remove it")


@dataclass(frozen=True)
class Clip:
    """Decoded frames of one video: ``frames`` (T, H, W, 3) uint8, the source ``indices`` (T,), the video's
    frame count and the backend that decoded it."""

    frames: np.ndarray
    indices: np.ndarray
    num_frames: int
    backend: str


def _source_of(path: str | Path | bytes) -> tuple[Source, str]:
    """What a decoder opens (a checked local path, or bytes: fetched from object storage or received in memory)
    and the name errors give it."""
    if isinstance(path, bytes):  # a video received in memory (an upload)
        return path, "<uploaded video>"
    path = str(path)
    if storage.is_uri(path):
        return _fetch(path), path
    _precheck(path)
    return path, path


def load_clip(
    path: str | Path | bytes,
    *,
    num_segments: int,
    mode: SampleMode = "eval",
    rng: np.random.Generator | None = None,
    short_video: ShortVideoPolicy = "repeat",
    backend: Backend = "auto",
) -> Clip:
    """Decode ``num_segments`` segment-sampled frames of ``path``.

    ``backend="auto"`` tries decord and falls back to PyAV; a video neither can read raises
    VideoDecodeError naming the file and both reasons.
    """
    source, path = _source_of(path)
    names = ["decord", "pyav"] if backend == "auto" else [backend]
    reasons = []

    def sample(n: int) -> np.ndarray:
        return segment_indices(n, num_segments, mode=mode, rng=rng, short_video=short_video)

    state = rng.bit_generator.state if rng is not None else None
    for name in names:
        decoder = _DECODERS[name]
        try:
            if state is not None:  # a fallback must sample the same indices the first try drew
                rng.bit_generator.state = state
            frames, indices, n = decoder.read_sampled(source, sample)
            if frames.ndim != 4 or frames.shape[0] != num_segments or frames.shape[-1] != 3:
                raise VideoDecodeError(f"unexpected decoded shape {frames.shape}")
            return Clip(frames=frames, indices=indices, num_frames=n, backend=name)
        except ShortVideoError as exc:  # a property of the video, not of the backend: no fallback
            raise VideoDecodeError(f"video {path}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 — any other backend failure means "try the next one"
            reasons.append(f"{name}: {_describe(exc)}")
    raise VideoDecodeError(f"video {path}: cannot be decoded ({'; '.join(reasons)}) — the file is corrupt or "
                           "not a video; re-encode or remove it")


@dataclass(frozen=True)
class Window:
    """One window of a long video: its sampled ``frames`` (T, H, W, 3) uint8, their ``indices`` and its span."""

    frames: np.ndarray
    indices: np.ndarray
    start_s: float
    end_s: float


def window_spans(num_frames: int, fps: float, window_s: float, stride_s: float) -> list[tuple[int, int]]:
    """Frame ranges ``[start, stop)`` of ``window_s``-second windows every ``stride_s`` seconds, the last one
    ending at the video's end (so its tail is covered); a video shorter than a window is one window."""
    if window_s <= 0 or stride_s <= 0:
        raise ValueError(f"window and stride must be positive seconds, got {window_s} and {stride_s}")
    length = max(1, round(window_s * fps))
    step = max(1, round(stride_s * fps))
    if num_frames <= length:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - length + 1, step))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return [(s, s + length) for s in starts]


def _frame_rate(decoder: VideoDecoder, source: Source) -> tuple[int, float]:
    if decoder.name == "decord":
        reader = DecordDecoder()._reader(source)
        return len(reader), float(reader.get_avg_fps())
    import av

    with av.open(_openable(source)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
    return decoder.num_frames(source), float(rate) if rate else 0.0


def _read_windows(decoder: VideoDecoder, source: Source, spans: list[tuple[int, int]], picks: list[np.ndarray],
                  fps: float) -> list[Window]:
    wanted = np.unique(np.concatenate(picks))
    frames = decoder.read(source, wanted)
    where = {int(i): k for k, i in enumerate(wanted)}
    return [Window(frames[[where[int(i)] for i in idx]], idx, start / fps, stop / fps)
            for (start, stop), idx in zip(spans, picks, strict=True)]


def iter_windows(path: str | Path | bytes, *, num_segments: int, window_s: float, stride_s: float,
                 backend: Backend = "auto", short_video: ShortVideoPolicy = "repeat",
                 windows_per_read: int = 32) -> Iterator[list[Window]]:
    """Decode ``num_segments`` segment-centre frames of every window of a long video (``window_spans``), in groups
    of ``windows_per_read`` windows, each needed frame of a group read once: memory follows a group, not the
    video. The first group picks the backend as :func:`load_clip` does; VideoDecodeError names the file."""
    source, path = _source_of(path)
    reasons = []
    for name in (["decord", "pyav"] if backend == "auto" else [backend]):
        decoder = _DECODERS[name]
        try:
            n, fps = _frame_rate(decoder, source)
            if fps <= 0:
                raise VideoDecodeError("the video declares no frame rate, so windows in seconds have no frames")
            spans = window_spans(n, fps, window_s, stride_s)
            picks = [start + segment_indices(stop - start, num_segments, mode="eval", short_video=short_video)
                     for start, stop in spans]
            first = _read_windows(decoder, source, spans[:windows_per_read], picks[:windows_per_read], fps)
        except ShortVideoError as exc:
            raise VideoDecodeError(f"video {path}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 — any other backend failure means "try the next one"
            reasons.append(f"{name}: {_describe(exc)}")
            continue
        yield first
        for start in range(windows_per_read, len(spans), windows_per_read):
            part = slice(start, start + windows_per_read)
            try:
                group = _read_windows(decoder, source, spans[part], picks[part], fps)
            except Exception as exc:  # noqa: BLE001 — a video that breaks midway is named, with how far it got
                raise VideoDecodeError(f"video {path}: {name} failed after {start} windows: {_describe(exc)}") from exc
            yield group
        return
    raise VideoDecodeError(f"video {path}: cannot be decoded ({'; '.join(reasons)}) — the file is corrupt or "
                           "not a video; re-encode or remove it")


def load_windows(path: str | Path | bytes, *, num_segments: int, window_s: float, stride_s: float,
                 backend: Backend = "auto", short_video: ShortVideoPolicy = "repeat") -> list[Window]:
    """Every window of :func:`iter_windows` at once (a few windows: a picture, a test)."""
    return [w for group in iter_windows(path, num_segments=num_segments, window_s=window_s, stride_s=stride_s,
                                        backend=backend, short_video=short_video) for w in group]
