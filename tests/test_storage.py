"""fsar.storage: the same calls on a local folder and on an S3 bucket (a moto server on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from fsar import storage


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path) -> storage.Location:
    if request.param == "local":
        return tmp_path / "root"
    return request.getfixturevalue("s3") + "/root"


def test_locations_keep_their_kind():
    assert storage.as_location("s3://b/x/") == "s3://b/x"
    assert storage.as_location("file:///tmp/x") == Path("/tmp/x")
    assert storage.join("s3://b/x", "y", "z.parquet") == "s3://b/x/y/z.parquet"
    assert storage.join(Path("/tmp"), "y") == Path("/tmp/y")
    assert storage.name("s3://b/x/y.json") == "y.json" and storage.parent("s3://b/x/y.json") == "s3://b/x"
    assert storage.is_uri("gs://b/k") and not storage.is_uri("/tmp/x") and not storage.is_uri("file:///tmp/x")


def test_write_read_list_delete(base):
    storage.make_dirs(base)
    storage.write_text(storage.join(base, "a.json"), "{}")
    storage.write_bytes(storage.join(base, "sub", "b.parquet"), b"xyz")
    storage.write_bytes(storage.join(base, "c.parquet"), b"")
    assert storage.read_text(storage.join(base, "a.json")) == "{}"
    assert storage.size(storage.join(base, "sub", "b.parquet")) == 3
    assert [storage.name(p) for p in storage.list_files(base, "*.parquet")] == ["c.parquet"]
    assert sorted(storage.name(p) for p in storage.list_files(base, "*.parquet", recursive=True)) == ["b.parquet", "c.parquet"]
    assert storage.is_dir(storage.join(base, "sub")) and not storage.is_file(storage.join(base, "sub"))
    assert storage.list_files(storage.join(base, "absent")) == []
    storage.delete(storage.join(base, "sub"))
    assert not storage.exists(storage.join(base, "sub", "b.parquet"))
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_bytes(storage.join(base, "sub", "b.parquet"))


def test_a_failed_write_leaves_nothing(base):
    target = storage.join(base, "out.bin")
    storage.write_bytes(target, b"old")
    with pytest.raises(RuntimeError), storage.open_output(target) as f:
        f.write(b"half")
        raise RuntimeError("killed mid-write")
    assert storage.read_bytes(target) == b"old"


def test_an_unknown_scheme_says_what_to_install():
    with pytest.raises(storage.StorageError, match="nosuchscheme"):
        storage.read_bytes("nosuchscheme://bucket/key")


def test_checksums_only_when_required_on_a_server_other_than_aws_unless_the_user_chose(monkeypatch):
    for key in storage.CHECKSUM_SETTINGS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")
    assert storage.s3_compatible_defaults() == {}  # AWS itself: the SDK's defaults
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert storage.s3_compatible_defaults() == dict.fromkeys(storage.CHECKSUM_SETTINGS, "when_required")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    monkeypatch.delenv("AWS_RESPONSE_CHECKSUM_VALIDATION")
    assert storage.s3_compatible_defaults() == {}  # the user's choice stands


def test_an_upload_the_server_rewrote_is_caught_before_it_counts(s3, monkeypatch):
    target = f"{s3}/part.parquet"
    storage.write_bytes(target, b"0123456789")  # a faithful server: the size read back matches
    real_size = storage.size
    monkeypatch.setattr(storage, "size", lambda loc: real_size(loc) + 8)  # a server that stored chunk framing
    with pytest.raises(storage.StorageError, match="10 bytes were written but the store holds 18.*"
                                                   "AWS_REQUEST_CHECKSUM_CALCULATION=when_required"):
        storage.write_bytes(target, b"0123456789")


class FlakyFiles:
    """A file system that fails its first ``failures`` calls the way an S3 client does when the server is away."""

    def __init__(self, fs, failures: int) -> None:
        self.fs, self.failures, self.calls = fs, failures, 0

    def get_file_info(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect")
        return self.fs.get_file_info(*args, **kwargs)


def test_transient_errors_are_retried_and_a_store_that_stays_away_is_named(s3, monkeypatch):
    target = f"{s3}/x.json"
    storage.write_text(target, "{}")
    real = storage.filesystem
    monkeypatch.setattr(storage, "RETRY_FIRST_WAIT_S", 0.01)
    flaky = {}

    def filesystem(location):
        fs, path = real(location)
        flaky.setdefault("fs", FlakyFiles(fs, failures=3))
        return flaky["fs"], path

    monkeypatch.setattr(storage, "filesystem", filesystem)
    assert storage.is_file(target) and flaky["fs"].calls == 4  # three failures, then through
    flaky["fs"] = FlakyFiles(real(target)[0], failures=100)
    with pytest.raises(storage.StorageError, match=f"cannot reach {target}: still failing after 6 attempts.*"
                                                   "rerun the same command once it is back"):
        storage.is_file(target)
    with pytest.raises(storage.StorageError, match="cannot reach /nowhere"):  # a local path is not retried
        monkeypatch.setattr(storage, "filesystem", lambda loc: (FlakyFiles(real(loc)[0], 100), str(loc)))
        storage.is_file("/nowhere/x")


def test_a_server_that_pauses_mid_job_is_ridden_through(s3, s3_server):
    """The moto server stopped (SIGSTOP) for 2 s while objects are written and read back."""
    import threading
    import time

    from helpers import pause_s3_server

    results = []

    def work():
        for i in range(6):
            storage.write_bytes(f"{s3}/part-{i}", bytes([i]) * 1000)
            results.append(storage.read_bytes(f"{s3}/part-{i}") == bytes([i]) * 1000)
            time.sleep(0.3)

    worker = threading.Thread(target=work)
    worker.start()
    pause_s3_server(2, after=0.5)
    worker.join(timeout=120)
    assert not worker.is_alive() and results == [True] * 6


def test_clients_retry_by_the_same_policy(s3, monkeypatch):
    """S3 goes through Arrow's client (rebuilt with fsar's attempts, and still reaching the server); an fsspec
    file system whose constructor takes ``retries`` gets fsar's count unless the user's fsspec config sets it."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    storage.write_text(f"{s3}/retry.txt", "ok")
    assert storage.read_text(f"{s3}/retry.txt") == "ok"
    assert isinstance(storage.filesystem(s3)[0], pafs.S3FileSystem)

    class RetryingMemory(MemoryFileSystem):
        protocol = "fsarretry"
        made_with: dict = {}

        def __init__(self, *args, retries: int = 1, **kwargs):
            RetryingMemory.made_with = {"retries": retries}
            super().__init__(*args, **kwargs)

    fsspec.register_implementation("fsarretry", RetryingMemory, clobber=True)
    assert storage._fsspec_retry_options("fsarretry") == {"retries": storage.RETRY_ATTEMPTS}
    assert storage._fsspec_retry_options("memory") == {}  # takes no such argument
    monkeypatch.setitem(fsspec.config.conf, "fsarretry", {"retries": 2})
    assert storage._fsspec_retry_options("fsarretry") == {}  # the user's choice stands
