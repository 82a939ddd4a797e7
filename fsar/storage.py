"""Where files live: a local path or a URI (``s3://``, ``gs://``, ``hdfs://``, anything ``pyarrow.fs`` or fsspec
opens), behind one small set of functions.

A location is a :class:`~pathlib.Path` for local files and a ``str`` for a URI, so local code keeps its
``Path`` arithmetic and ``join`` works on both. Credentials and endpoints come from each client's own
standard settings (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, or an instance role), never from an fsar setting.

Writes are atomic on both: locally a temporary file renamed onto the name; on an object store one upload
of bytes buffered in memory, which readers see whole or not at all (an object store has no rename to build
on, and needs none).
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.fs as pafs

from fsar.atomic import atomic_path

Location = Path | str


class StorageError(OSError):
    """A location cannot be opened: an unknown scheme, a missing client library, or no such file."""


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names a file system by scheme (``s3://bucket/key``) rather than a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def as_location(location: str | Path) -> Location:
    """A URI stays a ``str`` (without a trailing ``/``); anything else becomes a ``Path`` (``file://`` URIs
    included)."""
    if is_uri(location):
        return str(location).rstrip("/")
    text = str(location)
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


def join(location: str | Path, *parts: str) -> Location:
    """``location / part / ...`` for either kind."""
    base = as_location(location)
    return posixpath.join(base, *parts) if isinstance(base, str) else base.joinpath(*parts)


def absolute(location: str | Path) -> Location:
    """A URI as it is; a local path resolved (what a job records, and what workers on other nodes can open)."""
    loc = as_location(location)
    return loc if isinstance(loc, str) else loc.resolve()


def name(location: str | Path) -> str:
    """The last component: a file or folder name."""
    return posixpath.basename(str(location).rstrip("/"))


def parent(location: str | Path) -> Location:
    base = as_location(location)
    return posixpath.dirname(base) if isinstance(base, str) else base.parent


# S3-compatible servers that predate the AWS SDKs' default upload checksums (on since 2025) store the
# aws-chunked bodies those send as they are: every object lands corrupt. Where an endpoint other than AWS is set
# and the user chose nothing, checksums are sent only when an operation requires them.
CHECKSUM_SETTINGS = ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")


def s3_compatible_defaults() -> dict[str, str]:
    """Set ``CHECKSUM_SETTINGS`` to ``when_required`` when ``AWS_ENDPOINT_URL`` (or ``_S3``) names a server other
    than AWS and the user set neither; returns what was set. Called before any S3 client is made, in every
    process (the SDK reads them when it starts)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if not endpoint or "amazonaws.com" in endpoint or any(k in os.environ for k in CHECKSUM_SETTINGS):
        return {}
    chosen = dict.fromkeys(CHECKSUM_SETTINGS, "when_required")
    os.environ.update(chosen)
    return chosen


# One policy for object-store calls: transient errors (a reset connection, a 503 "slow down", a server away for a
# few seconds) are retried with exponential backoff, by the clients (the same number of attempts) and around
# fsar's own calls; after that the job fails naming the URI.
RETRY_ATTEMPTS = int(os.environ.get("FSAR_STORAGE_RETRIES", "6"))  # 0.5 + 1 + 2 + 4 + 8 s between them: ~15 s
RETRY_FIRST_WAIT_S = 0.5
RETRY_TIME_LIMIT_S = RETRY_FIRST_WAIT_S * (2 ** (RETRY_ATTEMPTS - 1) - 1)


@functools.lru_cache(maxsize=32)
def _filesystem_for(scheme_and_host: str) -> pafs.FileSystem:
    if scheme_and_host.startswith("s3://"):
        s3_compatible_defaults()
    try:
        return _with_client_retries(pafs.FileSystem.from_uri(scheme_and_host)[0])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_error:
        try:
            import fsspec
        except ImportError as exc:
            raise StorageError(f"cannot open {scheme_and_host}: pyarrow does not know the scheme ({arrow_error}) and "
                               "fsspec is not installed") from exc
        protocol = scheme_and_host.split("://", 1)[0]
        try:
            fs = fsspec.filesystem(protocol, **_fsspec_retry_options(protocol))
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open {scheme_and_host}: {exc}; install the client for {protocol}:// "
                               "(for example `pip install gcsfs` or `adlfs`)") from exc
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _with_client_retries(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The same file system with its client's own retries set to fsar's policy: the S3 client retries each
    request (Arrow's reads and writes inside Ray Data included) before fsar's own retries see an error."""
    if isinstance(fs, pafs.S3FileSystem):
        # Everything the URI and environment resolved (region, endpoint, scheme, credentials) is kept: Arrow's
        # pickled form carries all the constructor's settings but the retry strategy.
        settings = fs.__reduce__()[1][0]
        return pafs.S3FileSystem(**settings,
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=RETRY_ATTEMPTS))
    if isinstance(fs, getattr(pafs, "GcsFileSystem", ())):
        import datetime

        return pafs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=RETRY_TIME_LIMIT_S))
    return fs


def _fsspec_retry_options(protocol: str) -> dict[str, Any]:
    """``retries=`` for an fsspec file system whose constructor takes it (gcsfs, adlfs and others), unless the
    user's fsspec configuration already sets it."""
    import inspect

    import fsspec

    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return {}
    configured = fsspec.config.conf.get(protocol, {})
    if "retries" in inspect.signature(cls.__init__).parameters and "retries" not in configured:
        return {"retries": RETRY_ATTEMPTS}
    return {}


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The file system holding ``location`` and the path on it (``bucket/key`` for an object store).

    One client per scheme and bucket is kept for the process: an S3 client costs a connection pool."""
    loc = as_location(location)
    if isinstance(loc, Path):
        return pafs.LocalFileSystem(), str(loc.absolute())
    scheme, rest = loc.split("://", 1)
    host = rest.split("/", 1)[0]
    fs = _filesystem_for(f"{scheme}://{host}")
    if isinstance(fs, pafs.PyFileSystem):
        return fs, loc.split("://", 1)[1]
    return fs, pafs.FileSystem.from_uri(loc)[1] if scheme in ("hdfs", "viewfs") else rest




def _permanent(exc: OSError) -> bool:
    """Errors a retry cannot fix: a missing object or folder, a refused permission."""
    text = str(exc).lower()
    return isinstance(exc, (FileNotFoundError, NotADirectoryError, PermissionError)) or any(
        s in text for s in ("not found", "does not exist", "no such", "access denied", "forbidden"))


def retrying(location: str | Path, call: Any, what: str) -> Any:
    """``call()``, retried on transient errors when ``location`` is a URI (local disks do not heal by waiting)."""
    import time

    if not is_uri(location):
        return call()
    wait, started = RETRY_FIRST_WAIT_S, time.monotonic()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except OSError as exc:
            if _permanent(exc) or isinstance(exc, StorageError):
                raise
            if attempt == RETRY_ATTEMPTS:
                raise StorageError(
                    f"cannot {what} {location}: still failing after {attempt} attempts over "
                    f"{time.monotonic() - started:.0f} s ({str(exc)[:160]}); the object store is unreachable or "
                    "refusing: rerun the same command once it is back (finished work is kept)") from exc
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def _info(location: str | Path) -> pafs.FileInfo:
    fs, path = filesystem(location)
    try:
        return retrying(location, lambda: fs.get_file_info(path), "reach")
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot reach {location}: {exc}") from exc


def exists(location: str | Path) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | Path) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    """A folder; on an object store, a prefix that holds at least one object."""
    info = _info(location)
    if info.type == pafs.FileType.Directory:
        return True
    if info.type == pafs.FileType.File or not is_uri(location):
        return False
    return bool(list_files(location, recursive=True, limit=1))


def size(location: str | Path) -> int:
    info = _info(location)
    if info.type != pafs.FileType.File:
        raise StorageError(f"{location} is not a file")
    return int(info.size)


def list_files(location: str | Path, pattern: str = "*", *, recursive: bool = False,
               limit: int | None = None) -> list[Location]:
    """Files directly in the folder ``location`` (or below it, ``recursive``) whose names match the glob
    ``pattern``, sorted; an absent folder has none."""
    fs, path = filesystem(location)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    try:
        infos = retrying(location, lambda: fs.get_file_info(selector), "list")
    except OSError as exc:
        raise StorageError(f"cannot list {location}: {exc}") from exc
    base = as_location(location)
    found = []
    for info in infos:
        if info.type == pafs.FileType.File and fnmatch.fnmatch(info.base_name, pattern):
            relative = posixpath.relpath(info.path, path)
            found.append(join(base, *relative.split("/")))
            if limit is not None and len(found) >= limit:
                break
    return sorted(found, key=str)


def read_bytes(location: str | Path) -> bytes:
    fs, path = filesystem(location)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    try:
        return retrying(location, read, "read")
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise StorageError(f"{location} does not exist") from exc
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise StorageError(f"{location} does not exist") from exc
        raise StorageError(f"cannot read {location}: {exc}") from exc


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode()


@contextmanager
def open_output(location: str | Path) -> Iterator[IO[bytes] | Any]:
    """A binary stream whose bytes appear under ``location`` only if the block succeeds."""
    loc = as_location(location)
    if isinstance(loc, Path):
        with atomic_path(loc) as tmp, tmp.open("wb") as f:
            yield f
        return
    # Buffered, and sent only once the block has succeeded: closing an object-store stream uploads whatever
    # was written, so a failure inside the block must never reach the stream.
    buffer = io.BytesIO()
    yield buffer
    fs, path = filesystem(loc)

    def upload() -> None:  # the whole object again on a retry: an upload that failed left nothing behind
        with fs.open_output_stream(path) as f:
            f.write(buffer.getbuffer())

    retrying(loc, upload, "write")
    stored = size(loc)
    if stored != buffer.getbuffer().nbytes:  # what was written must be what is stored before it counts as done
        raise StorageError(
            f"{loc}: {buffer.getbuffer().nbytes} bytes were written but the store holds {stored}: the server rewrote "
            "the upload (an S3-compatible server that predates the SDK's upload checksums stores their "
            "aws-chunked framing); set AWS_REQUEST_CHECKSUM_CALCULATION=when_required and "
            "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required, then rerun: finished work is kept")


def write_bytes(location: str | Path, data: bytes) -> None:
    with open_output(location) as f:
        f.write(data)


def write_text(location: str | Path, text: str) -> None:
    write_bytes(location, text.encode())


def append_text(location: str | Path, text: str) -> None:
    """Add ``text`` at the end of a small file: an append locally, a rewrite of the whole object on an object
    store (which cannot append). For logs of a few lines per minute, such as a run's metrics."""
    loc = as_location(location)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        with loc.open("a") as f:
            f.write(text)
        return
    write_text(loc, (read_text(loc) if is_file(loc) else "") + text)


def delete(location: str | Path, *, missing_ok: bool = True) -> None:
    """Remove a file, or a folder and everything in it."""
    fs, path = filesystem(location)
    info = _info(location)
    if info.type == pafs.FileType.NotFound:
        if not missing_ok:
            raise StorageError(f"{location} does not exist")
        return
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    else:
        fs.delete_file(path)


@contextmanager
def staged_folder(location: str | Path) -> Iterator[Path]:
    """A local folder standing for ``location``: the folder itself when local; for a URI, a temporary folder
    holding a copy of what is there, copied back when the block succeeds. For folders of a few small files
    written by one process (an evaluation's results), not for stores or run folders that workers write."""
    loc = as_location(location)
    if isinstance(loc, Path):
        created = not loc.exists()
        loc.mkdir(parents=True, exist_ok=True)
        try:
            yield loc
        except BaseException:
            if created and not any(loc.iterdir()):  # a refused job leaves nothing behind, not even its folder
                loc.rmdir()
            raise
        return
    fs, path = filesystem(loc)
    with tempfile.TemporaryDirectory(prefix="fsar-stage-") as local:
        if list_files(loc, recursive=True, limit=1):
            pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield Path(local)
        pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def make_dirs(location: str | Path) -> None:
    """Create a local folder and its parents; an object store has no folders to create."""
    loc = as_location(location)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)
