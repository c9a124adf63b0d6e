"""Typed errors: each failure is an s3dlio.exceptions class that also subclasses the builtin a
Python user already catches, names the URI, never leaks a credential, and never is a panic."""

from __future__ import annotations

import os
import pickle
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import accepts_o_direct
from s3dlio import exceptions as exc
from s3dlio.testing import free_port

WRONG_SECRET = "wrong-secret-ZQ8kX2-must-never-be-printed"


def accepts_o_direct_read(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def full_text(e: BaseException) -> str:
    return str(e) + "\n" + repr(e) + "\n" + "".join(traceback.format_exception(e))


def test_missing_key_is_not_found(bucket: str, tmp_path: Path) -> None:
    """A missing object raises NotFoundError (a FileNotFoundError) naming the URI, on every read."""
    for uri in (f"s3://{bucket}/no/such/key", "file://" + str(tmp_path / "no-such-file")):
        for call in (s3dlio.get, s3dlio.stat, lambda u: s3dlio.get_range(u, 0, 1)):
            with pytest.raises(exc.NotFoundError) as ei:
                call(uri)
            assert isinstance(ei.value, FileNotFoundError)
            assert uri in str(ei.value)
        assert s3dlio.exists(uri) is False


def test_missing_bucket_is_not_found(s3_server: object) -> None:
    """A missing bucket raises NotFoundError for reads and listings, naming the URI."""
    uri = "s3://no-such-bucket-s3dlio-test/key"
    for call in (s3dlio.get, s3dlio.stat, lambda u: s3dlio.list(u.rsplit("/", 1)[0] + "/")):
        with pytest.raises(FileNotFoundError) as ei:
            call(uri)
        assert isinstance(ei.value, exc.NotFoundError)
        assert "no-such-bucket-s3dlio-test" in str(ei.value)


@pytest.mark.parametrize("which", ["wrong-secret", "unknown-key"])
def test_bad_credentials_are_permission_errors(bucket: str, s3_config, which: str) -> None:  # type: ignore[no-untyped-def]
    """Wrong credentials raise AccessDeniedError (a PermissionError) for reads, writes and
    listings, and the secret appears in no message, repr or traceback."""
    s3dlio.put(f"s3://{bucket}/k", b"v")
    kw = {"secret_access_key": WRONG_SECRET, "max_attempts": 1}
    if which == "unknown-key":
        kw["access_key_id"] = "AKIA-NOBODY-S3DLIO"
    cfg = s3_config(**kw)
    assert WRONG_SECRET not in repr(cfg) and WRONG_SECRET not in repr(cfg.native.to_dict())
    calls = {
        "get": lambda: s3dlio.get(f"s3://{bucket}/k", config=cfg),
        "put": lambda: s3dlio.put(f"s3://{bucket}/k2", b"x", config=cfg),
        "list": lambda: s3dlio.list(f"s3://{bucket}/", config=cfg),
        "stat": lambda: s3dlio.stat(f"s3://{bucket}/k", config=cfg),
    }
    for name, call in calls.items():
        with pytest.raises(exc.AccessDeniedError) as ei:
            call()
        assert isinstance(ei.value, PermissionError), name
        assert bucket in str(ei.value), name
        assert WRONG_SECRET not in full_text(ei.value), name
    assert not s3dlio.exists(f"s3://{bucket}/k2")


def test_readonly_identity_cannot_write(bucket: str, s3_server, s3_config) -> None:  # type: ignore[no-untyped-def]
    """The server's read-only identity may read, but put and delete raise PermissionError."""
    s3dlio.put(f"s3://{bucket}/k", b"v")
    ro = s3_config(access_key_id=s3_server.readonly_key, secret_access_key=s3_server.readonly_secret)
    assert bytes(s3dlio.get(f"s3://{bucket}/k", config=ro)) == b"v"
    with pytest.raises(PermissionError) as ei:
        s3dlio.put(f"s3://{bucket}/new", b"x", config=ro)
    assert isinstance(ei.value, exc.AccessDeniedError)
    assert s3_server.readonly_secret not in full_text(ei.value)
    with pytest.raises(PermissionError):
        s3dlio.delete(f"s3://{bucket}/k", config=ro)
    assert s3dlio.exists(f"s3://{bucket}/k")


def test_secret_from_environment_never_leaks(bucket: str, s3_server) -> None:  # type: ignore[no-untyped-def]
    """Errors raised with the default (environment) credentials never contain the secret key."""
    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.get(f"s3://{bucket}/missing")
    assert s3_server.secret_key not in full_text(ei.value)


BAD_URIS = ["bucket/key", "s3://", "s3:///key", "ftp://x/y", "", "://x", "s3//bucket/key", "gs:/b/k"]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_bad_uris_are_invalid_uri_errors(uri: str) -> None:
    """Unparseable or unsupported URIs raise InvalidUriError (a ValueError) for every operation;
    never a pyo3 PanicException."""
    calls = [
        lambda: s3dlio.get(uri),
        lambda: s3dlio.get_range(uri, 0, 1),
        lambda: s3dlio.stat(uri),
        lambda: s3dlio.exists(uri),
        lambda: s3dlio.put(uri, b"x"),
        lambda: s3dlio.delete(uri),
        lambda: s3dlio.list(uri),
        lambda: s3dlio.get_many([uri]),
    ]
    for call in calls:
        with pytest.raises(exc.InvalidUriError) as ei:
            call()
        assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://Bad_Bucket!/k",
        "s3://b/" + "k" * 3000,
        "s3://bucket/with\x00nul",
        "file://",
        "direct://",
        "s3://bucket",
    ],
)
def test_odd_uris_raise_typed_errors_not_panics(s3_server: object, uri: str) -> None:
    """Strange but typeable URIs end in an s3dlio error (never a panic, never success)."""
    for call in (s3dlio.get, s3dlio.stat):
        with pytest.raises(exc.S3dlioError):
            call(uri)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"part_size": 1},
        {"connect_timeout": -1},
        {"read_timeout": float("nan")},
        {"max_attempts": 0},
        {"max_concurrency": 0},
        {"operation_timeout": -5.0},
        {"endpoint_url": "not a url"},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_bad_options_fail_at_construction(kwargs: dict[str, object]) -> None:
    """A bad option value raises InvalidConfigError (a ValueError) when the config is built."""
    with pytest.raises(exc.InvalidConfigError) as ei:
        s3dlio.StorageConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(ei.value, ValueError)
    assert next(iter(kwargs)) in str(ei.value)


def test_unknown_or_mistyped_options_are_refused() -> None:
    """Unknown keys and wrong types are errors at construction, not warnings or later failures."""
    with pytest.raises(TypeError):
        s3dlio.StorageConfig(bogus_option=1)  # type: ignore[call-arg]
    with pytest.raises((TypeError, ValueError)):
        s3dlio._core.Config(bogus_option=1)
    with pytest.raises((TypeError, ValueError)):
        s3dlio.StorageConfig(max_attempts="three")  # type: ignore[arg-type]
    with pytest.raises(exc.InvalidConfigError):
        s3dlio.get("s3://b/k", config={"max_attempts": 1})  # type: ignore[arg-type]
    with pytest.raises(exc.InvalidConfigError):
        s3dlio.get_many("s3://b/k")


def test_blackholed_server_times_out(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """A server that accepts but never answers yields StorageTimeoutError (a TimeoutError)."""
    s3dlio.put(f"s3://{bucket}/k", b"v")
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, connect_timeout=0.5, read_timeout=0.5, max_attempts=1)
    t0 = time.monotonic()
    with pytest.raises(exc.StorageTimeoutError) as ei:
        s3dlio.get(f"s3://{bucket}/k", config=cfg)
    assert isinstance(ei.value, TimeoutError)
    assert time.monotonic() - t0 < 10
    assert f"s3://{bucket}/k" in str(ei.value)


def test_operation_timeout_bounds_retries(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """operation_timeout ends an operation whose attempts would otherwise take far longer."""
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=30, max_attempts=5, operation_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(exc.StorageTimeoutError):
        s3dlio.get(f"s3://{bucket}/k", config=cfg)
    assert time.monotonic() - t0 < 10


def test_stalled_body_times_out(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """A response that stops mid-body hits the read timeout (TimeoutError), never short data."""
    s3dlio.put(f"s3://{bucket}/big", bytes(4 * 1024 * 1024))
    proxy.set_mode("stall_body", stall_after=64 * 1024)
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=0.5, max_attempts=1)
    with pytest.raises(TimeoutError):
        s3dlio.get(f"s3://{bucket}/big", config=cfg)


def test_persistent_503_is_throttled(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """503 SlowDown on every attempt raises ThrottledError after exactly max_attempts requests."""
    s3dlio.put(f"s3://{bucket}/k", b"v")
    proxy.set_mode("http503")
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=2)
    with pytest.raises(exc.ThrottledError) as ei:
        s3dlio.get(f"s3://{bucket}/k", config=cfg)
    assert isinstance(ei.value, ConnectionError)
    assert proxy.faults_injected == 2


def test_persistent_500_is_storage_io_error(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """HTTP 500 on every attempt raises StorageIOError (an OSError) after max_attempts requests."""
    proxy.set_mode("http500")
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=3)
    with pytest.raises(exc.StorageIOError) as ei:
        s3dlio.get(f"s3://{bucket}/k", config=cfg)
    assert isinstance(ei.value, OSError)
    assert proxy.faults_injected == 3


@pytest.mark.parametrize("mode", ["http503", "http500", "reset"])
def test_transient_faults_are_retried(bucket: str, s3_config, proxy: FaultProxy, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Two 503s, 500s or connection resets followed by success: the get succeeds (max_attempts=5)."""
    s3dlio.put(f"s3://{bucket}/k", b"payload")
    proxy.set_mode(mode, count=2)
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=5)
    assert bytes(s3dlio.get(f"s3://{bucket}/k", config=cfg)) == b"payload"
    assert proxy.faults_injected == 2


def test_connection_refused_is_storage_io_error(s3_config) -> None:  # type: ignore[no-untyped-def]
    """Nothing listening on the endpoint port: StorageIOError (an OSError), quickly."""
    cfg = s3_config(endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, connect_timeout=2)
    with pytest.raises(exc.StorageIOError) as ei:
        s3dlio.get("s3://bucket/key", config=cfg)
    assert isinstance(ei.value, OSError)
    assert not isinstance(ei.value, FileNotFoundError)
    assert "s3://bucket/key" in str(ei.value)


def test_direct_io_refused_by_the_filesystem_is_a_clear_error() -> None:
    """A file whose filesystem refuses O_DIRECT (procfs) raises DirectIOUnsupported mentioning
    O_DIRECT, instead of silently falling back to buffered reads."""
    if not os.path.exists("/proc/version") or accepts_o_direct_read("/proc/version"):
        pytest.skip("/proc/version accepts O_DIRECT here")
    with pytest.raises(exc.DirectIOUnsupported) as ei:
        s3dlio.get("direct:///proc/version")
    assert isinstance(ei.value, OSError)
    assert "O_DIRECT" in str(ei.value) and "direct:///proc/version" in str(ei.value)


def test_direct_io_on_tmpfs(tmpfs_dir: str) -> None:
    """direct:// on tmpfs: where the kernel refuses O_DIRECT there (before Linux 6.6) put and get
    raise DirectIOUnsupported mentioning O_DIRECT and write nothing; where the kernel accepts it,
    s3dlio either refuses tmpfs the same way or reads and writes correctly."""
    Path(tmpfs_dir, "existing").write_bytes(b"x" * 8192)
    calls = {
        "put": lambda: s3dlio.put(f"direct://{tmpfs_dir}/new", b"y" * 5000),
        "get": lambda: s3dlio.get(f"direct://{tmpfs_dir}/existing"),
    }
    kernel_refuses = not accepts_o_direct(tmpfs_dir)
    for name, call in calls.items():
        refused: exc.DirectIOUnsupported | None = None
        result = None
        try:
            result = call()
        except exc.DirectIOUnsupported as e:
            refused = e
        if refused is not None:
            assert isinstance(refused, OSError)
            assert "O_DIRECT" in str(refused), name
            assert name != "put" or not Path(tmpfs_dir, "new").exists()
        else:
            assert not kernel_refuses, f"direct:// {name} on tmpfs silently fell back to buffered I/O"
            if name == "get":
                assert bytes(result) == b"x" * 8192  # type: ignore[arg-type]
            else:
                assert Path(tmpfs_dir, "new").read_bytes() == b"y" * 5000
    assert bytes(s3dlio.get(f"file://{tmpfs_dir}/existing")) == b"x" * 8192  # file:// always works there


@pytest.fixture
def ramfs_dir(tmp_path: Path) -> Iterator[str]:
    """A fresh ramfs mount (which refuses O_DIRECT on every kernel); needs root and mount rights."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount ramfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_direct_io_on_ramfs_is_refused_and_writes_nothing(ramfs_dir: str) -> None:
    """On ramfs the kernel refuses O_DIRECT: get and put raise DirectIOUnsupported (an OSError)
    naming the URI and O_DIRECT, put leaves neither the target nor a temporary file behind, and
    file:// on the same directory works (no silent fallback in either direction)."""
    Path(ramfs_dir, "existing").write_bytes(b"x" * 8192)
    uri_get, uri_put = f"direct://{ramfs_dir}/existing", f"direct://{ramfs_dir}/new"
    with pytest.raises(exc.DirectIOUnsupported) as ei:
        s3dlio.get(uri_get)
    assert isinstance(ei.value, OSError) and "O_DIRECT" in str(ei.value) and uri_get in str(ei.value)
    with pytest.raises(exc.DirectIOUnsupported):
        s3dlio.put(uri_put, b"y" * 5000)
    assert sorted(os.listdir(ramfs_dir)) == ["existing"]
    assert bytes(s3dlio.get(f"file://{ramfs_dir}/existing")) == b"x" * 8192


EXCEPTION_CLASSES = [getattr(exc, n) for n in exc.__all__]


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES)
def test_exceptions_pickle(cls: type[exc.S3dlioError]) -> None:
    """Every exception class survives pickling (multiprocessing workers) with its message and
    every structured field: uri, status, code, request_id (and with them all None)."""
    e = cls("not found: s3://b/k: NoSuchKey", uri="s3://b/k", status=404, code="NoSuchKey", request_id="RQ1")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(e, protocol=protocol))
        assert type(back) is cls and str(back) == str(e)
        assert (back.uri, back.status, back.code, back.request_id) == ("s3://b/k", 404, "NoSuchKey", "RQ1")
    bare = pickle.loads(pickle.dumps(cls("bad argument")))
    assert type(bare) is cls and str(bare) == "bad argument"
    assert (bare.uri, bare.status, bare.code, bare.request_id) == (None, None, None, None)


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES)
def test_exception_fields_positional_and_keyword(cls: type[exc.S3dlioError]) -> None:
    """Every class takes (message, uri, status, code, request_id) positionally, as the extension
    calls it, or by keyword; omitted fields are None; str() is the message alone."""
    pos = cls("m", "s3://b/k", 503, "SlowDown", "RQ2")
    kw = cls("m", uri="s3://b/k", status=503, code="SlowDown", request_id="RQ2")
    for e in (pos, kw):
        assert isinstance(e, exc.S3dlioError) and str(e) == "m"
        assert (e.uri, e.status, e.code, e.request_id) == ("s3://b/k", 503, "SlowDown", "RQ2")
    only_uri = cls("m", "file:///x")
    assert (only_uri.uri, only_uri.status, only_uri.code, only_uri.request_id) == (
        "file:///x",
        None,
        None,
        None,
    )
    assert (exc.S3dlioError.status, exc.S3dlioError.code, exc.S3dlioError.request_id) == (None, None, None)


def test_local_errors_have_no_server_fields(tmp_path: Path) -> None:
    """A missing local file raises NotFoundError with its uri, and no HTTP status, S3 code or
    request id (there was no server)."""
    uri = "file://" + str(tmp_path / "missing")
    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.get(uri)
    e = ei.value
    assert e.uri == uri
    assert (e.status, e.code, e.request_id) == (None, None, None)


# The Rust glue (rust/s3dlio-py/src/errors.rs) must fill status, code and request_id from the
# server's answer: FAILS ON THE BASELINE (the fields stay None), passes once the lead's core change
# calls the class with (message, uri, status, code, request_id).
def test_s3_errors_carry_status_code_and_request_id(bucket: str) -> None:
    """A missing key raises NotFoundError with status 404, code "NoSuchKey" and the server's
    request id; a missing bucket gives code "NoSuchBucket". The fields survive pickling."""
    uri = f"s3://{bucket}/no/such/key"
    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.get(uri)
    e = ei.value
    assert e.uri == uri
    assert e.status == 404, (e.status, str(e))
    assert e.code == "NoSuchKey", (e.code, str(e))
    assert isinstance(e.request_id, str) and e.request_id, e.request_id
    back = pickle.loads(pickle.dumps(e))
    assert (back.status, back.code, back.request_id) == (404, "NoSuchKey", e.request_id)

    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.stat(f"s3://{bucket}-no-such-bucket/k")
    # A HEAD answer has no body, so a server may give no code for it; a GET names the bucket.
    with pytest.raises(exc.NotFoundError) as gi:
        s3dlio.get(f"s3://{bucket}-no-such-bucket/k")
    assert ei.value.status == 404 and gi.value.status == 404
    assert gi.value.code == "NoSuchBucket", (gi.value.code, str(gi.value))


def test_raised_exception_pickles(bucket: str) -> None:
    """An exception raised by the extension is a picklable instance of the public class."""
    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.get(f"s3://{bucket}/missing")
    back = pickle.loads(pickle.dumps(ei.value))
    assert type(back) is exc.NotFoundError and str(back) == str(ei.value)
    assert back.uri == ei.value.uri == f"s3://{bucket}/missing"
