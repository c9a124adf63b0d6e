"""s3dlio.compat.reference: the reference s3dlio release's functions (put_bytes, get, get_range,
get_many, list, exists, stat, mkdir, delete, MultipartUploadWriter) as its clients (the DLIO
benchmark, mlcommons/storage) call them, against the local S3 server and file://, with s3dlio's
safe semantics where the reference's were unsafe."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import pytest

import s3dlio
import s3dlio.compat.reference as ref
from helpers import MiB, require
from s3dlio.exceptions import InvalidConfigError, InvalidUriError, NotFoundError, RangeError, StorageIOError


@pytest.fixture(params=["s3", "file"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty prefix ending in ``/``: ``s3://bucket/`` or ``file:///tmp/.../``."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/"
    d = tmp_path / "root"
    d.mkdir()
    return "file://" + str(d) + "/"


@pytest.fixture
def tree(root: str) -> str:
    """``data/a``, ``data/ab`` (sharing the prefix ``data/a``), ``data/sub/c`` and ``data2/x``."""
    for key, value in {"data/a": b"A", "data/ab": b"AB", "data/sub/c": b"C", "data2/x": b"X"}.items():
        ref.put_bytes(root + key, value)
    return root


def test_put_bytes_and_get_round_trip_every_buffer_kind(root: str) -> None:
    """put_bytes takes bytes, bytearray, memoryview, numpy arrays and s3dlio Buffers and returns
    None; get returns a zero-copy s3dlio.Buffer (buffer protocol, len, bytes()) of exactly them."""
    arr = np.arange(1000, dtype=np.uint32)
    cases = {
        "b": b"bytes",
        "ba": bytearray(b"bytearray"),
        "mv": memoryview(b"..memoryview..")[2:-2],
        "np": arr,
        "empty": b"",
    }
    for name, data in cases.items():
        assert ref.put_bytes(root + name, data) is None
    ref.put_bytes(root + "buf", ref.get(root + "b"))
    for name, data in cases.items():
        buf = ref.get(root + name)
        assert isinstance(buf, s3dlio.Buffer)
        assert len(buf) == memoryview(data).nbytes
        assert bytes(buf) == bytes(memoryview(data))
    assert bytes(ref.get(root + "buf")) == b"bytes"
    assert np.array_equal(np.frombuffer(ref.get(root + "np"), dtype=np.uint32), arr)


def test_get_range_as_the_clients_call_it(root: str) -> None:
    """get_range(uri, offset, length) (positional or keyword, as DLIO passes them) returns exactly
    those bytes; length=None reads to the end; a range outside the object is a RangeError naming
    the URI, never short data."""
    data = os.urandom(10_000)
    ref.put_bytes(root + "r", data)
    assert bytes(ref.get_range(root + "r", 100, 50)) == data[100:150]
    buf = ref.get_range(root + "r", offset=9_990, length=10)
    assert isinstance(buf, s3dlio.Buffer) and bytes(buf) == data[9_990:]
    assert bytes(ref.get_range(root + "r", 9_000)) == data[9_000:]
    with pytest.raises(RangeError, match="r") as ei:
        ref.get_range(root + "r", 9_995, 10)
    assert root + "r" in str(ei.value)


def test_get_many_returns_uri_buffer_pairs_in_input_order(root: str) -> None:
    """get_many(uris, max_in_flight=) returns [(uri, Buffer), ...] in input order (repeats kept),
    as mlcommons/storage unpacks it; [] for no URIs; a single string is refused."""
    uris = [f"{root}obj{i:02d}" for i in range(20)]
    for i, u in enumerate(uris):
        ref.put_bytes(u, bytes([i]) * (i + 1))
    order = [*reversed(uris), uris[3]]
    got = ref.get_many(order, max_in_flight=3)
    assert [u for u, _ in got] == order
    for u, buf in got:
        i = int(u[-2:])
        assert isinstance(buf, s3dlio.Buffer) and bytes(buf) == bytes([i]) * (i + 1)
    assert ref.get_many(iter(uris[:2])) == [(u, ref.get(u)) for u in uris[:2]]
    assert ref.get_many([]) == []
    with pytest.raises(InvalidConfigError):
        ref.get_many(uris[0])


def test_missing_objects_raise_file_not_found_naming_the_uri(root: str) -> None:
    """get, get_range, get_many and stat of a missing object raise NotFoundError (a
    FileNotFoundError, not the reference's RuntimeError) with the URI in the message."""
    ref.put_bytes(root + "here", b"1")
    missing = root + "missing/obj"
    calls = [
        lambda: ref.get(missing),
        lambda: ref.get_range(missing, 0, 1),
        lambda: ref.get_many([root + "here", missing]),
        lambda: ref.stat(missing),
    ]
    for call in calls:
        with pytest.raises(FileNotFoundError) as ei:
            call()
        assert isinstance(ei.value, NotFoundError)
        assert missing in str(ei.value)


def test_list_returns_uri_strings_with_prefix_and_directory_semantics(tree: str) -> None:
    """list returns sorted URI strings. ``data/`` lists a directory; ``data`` is a string prefix
    (data2 too), as in the reference; recursive=False (the default) gives sub-prefixes once,
    ending in ``/``; ``data/a`` matches the keys sharing that prefix (a, ab)."""
    r = tree
    assert ref.list(r + "data/", recursive=True) == [r + "data/a", r + "data/ab", r + "data/sub/c"]
    assert ref.list(r + "data", recursive=True) == [
        r + "data/a",
        r + "data/ab",
        r + "data/sub/c",
        r + "data2/x",
    ]
    assert ref.list(r + "data/") == [r + "data/a", r + "data/ab", r + "data/sub/"]
    assert ref.list(r + "data/", recursive=False) == ref.list(r + "data/")
    assert ref.list(r, recursive=False) == [r + "data/", r + "data2/"]
    assert ref.list(r + "data/a", recursive=True) == [r + "data/a", r + "data/ab"]
    assert ref.list(r + "nothing/", recursive=True) == []


def test_list_pattern_is_a_regex_searched_in_the_full_uri(tree: str) -> None:
    """pattern is a regular expression searched anywhere in each full URI (the reference's
    semantics); an invalid one is an InvalidConfigError (a ValueError) naming the URI."""
    r = tree
    assert ref.list(r, recursive=True, pattern=r"/a[b]?$") == [r + "data/a", r + "data/ab"]
    assert ref.list(r, recursive=True, pattern="sub") == [r + "data/sub/c"]
    assert ref.list(r, recursive=True, pattern=r"^(s3|file)://") == ref.list(r, recursive=True)
    assert ref.list(r + "data/", pattern=r"/$") == [r + "data/sub/"]
    with pytest.raises(InvalidConfigError) as ei:
        ref.list(r, pattern="(unclosed")
    assert isinstance(ei.value, ValueError) and r in str(ei.value)


def test_list_never_returns_folder_markers_as_objects(bucket: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """Folder markers (zero-byte ``dir/`` keys, as the AWS console makes them) are not objects: a
    recursive listing skips them; a one-level listing shows a marked empty directory once, as a
    sub-prefix, and never the listed directory itself."""
    r = f"s3://{bucket}/"
    ref.put_bytes(r + "dm/a.bin", b"a")
    for marker in ("dm/", "dm/empty/"):
        boto3_client.put_object(Bucket=bucket, Key=marker, Body=b"")
    assert ref.list(r + "dm/", recursive=True) == [r + "dm/a.bin"]
    assert ref.list(r + "dm/") == [r + "dm/a.bin", r + "dm/empty/"]


def test_exists_answers_for_objects_and_raises_other_errors(
    root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exists is True for an object and False for a missing one or a prefix (a URI ending in
    ``/``); a failure that is not not-found is raised, never answered False as the reference did."""
    ref.put_bytes(root + "data/a", b"1")
    assert ref.exists(root + "data/a") is True
    assert ref.exists(root + "data/ab") is False
    assert ref.exists(root + "data/") is False
    if root.startswith("s3://"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
        with pytest.raises(StorageIOError) as ei:
            ref.exists(root + "data/a")
        assert isinstance(ei.value, OSError) and root + "data/a" in str(ei.value)
    else:
        with pytest.raises(InvalidUriError):
            ref.exists("nosuchscheme://x/y")


def test_stat_returns_the_reference_dict(root: str) -> None:
    """stat returns the reference's dict: every key of it, the size, an ETag on S3, last_modified
    as an ISO 8601 UTC string close to now, and None for the headers s3dlio does not keep."""
    before = time.time()
    ref.put_bytes(root + "s", b"x" * 1234)
    d = ref.stat(root + "s")
    assert list(d) == list(ref._STAT_KEYS)
    assert d["size"] == 1234
    assert d["last_modified"].endswith("Z")
    when = dt.datetime.fromisoformat(d["last_modified"]).timestamp()
    assert before - 5 <= when <= time.time() + 5
    if root.startswith("s3://"):
        assert isinstance(d["etag"], str) and d["etag"]
    assert d["metadata"] == {}
    assert d["content_type"] is None and d["version_id"] is None
    with pytest.raises(InvalidUriError):
        ref.stat(root + "dir/")


def test_mkdir(root: str, tmp_path: Path) -> None:
    """file://: mkdir creates the directory and its parents, and again is fine. Object stores:
    nothing is written (no marker), but a missing bucket is an error raised by mkdir."""
    ref.mkdir(root + "d1/d2/d3")
    ref.mkdir(root + "d1/d2/d3/")
    if root.startswith("file://"):
        assert os.path.isdir(root.removeprefix("file://") + "d1/d2/d3")
    else:
        assert ref.list(root, recursive=True) == []
        with pytest.raises(NotFoundError):
            ref.mkdir(f"s3://no-such-bucket-{os.getpid()}-zz/dir/")


def test_delete_is_exact_or_boundary_safe(root: str) -> None:
    """delete(uri) deletes exactly that object (obj_1, never obj_10); recursive=True deletes the
    prefix as a directory (data and data/..., never data2 or data_v2, unlike the reference's
    string-prefix delete); a trailing ``/`` deletes the objects directly under it; a missing
    object is no error; a pattern is refused."""
    keys = [
        "obj_1",
        "obj_10",
        "data/a",
        "data/ab",
        "data/sub/c",
        "data2/x",
        "data_v2",
        "flat/f",
        "flat/sub/g",
    ]
    if root.startswith("s3://"):
        keys.append("data")  # an object and a prefix of the same name (a file cannot be both)
    for k in keys:
        ref.put_bytes(root + k, b"x")

    def left() -> list[str]:
        return [u.removeprefix(root) for u in ref.list(root, recursive=True)]

    assert ref.delete(root + "obj_1") is None
    assert "obj_1" not in left() and "obj_10" in left()
    ref.delete(root + "data", recursive=True)
    assert left() == ["data2/x", "data_v2", "flat/f", "flat/sub/g", "obj_10"]
    ref.delete(root + "flat/")
    assert left() == ["data2/x", "data_v2", "flat/sub/g", "obj_10"]
    ref.delete(root + "never-there")
    for pattern in ("obj_*", "obj_?0"):
        with pytest.raises(InvalidConfigError, match="pattern"):
            ref.delete(root + pattern)
    assert left() == ["data2/x", "data_v2", "flat/sub/g", "obj_10"]


def test_multipart_writer_round_trip_above_part_size(root: str) -> None:
    """from_uri(uri, part_size=, max_in_flight=) with 11 MiB written in uneven chunks (a numpy
    array and a memoryview among them) publishes exactly those bytes on close(), which returns
    the reference's dict (3 parts of 5 MiB on S3); close() again returns the same dict."""
    data = os.urandom(11 * MiB)
    w = ref.MultipartUploadWriter.from_uri(root + "big.bin", part_size=5 * MiB, max_in_flight=2)
    assert w.uri == root + "big.bin"
    view = memoryview(data)
    assert w.write(view[: 3 * MiB + 7]) == 3 * MiB + 7
    assert w.write(np.frombuffer(view[3 * MiB + 7 : 9 * MiB], dtype=np.uint8)) == 6 * MiB - 7
    assert w.write(data[9 * MiB :]) == 2 * MiB
    assert not ref.exists(root + "big.bin")  # nothing is published before close()
    info = w.close()
    assert info["total_bytes"] == len(data)
    assert info["started_at"] <= info["completed_at"] <= time.time()
    if root.startswith("s3://"):
        assert info["parts"] == 3
    assert w.close() == info and w.closed
    assert bytes(ref.get(root + "big.bin")) == data
    with pytest.raises(ValueError):
        w.write(b"late")


def test_multipart_writer_reserve_commit_and_bucket_key_constructor(root: str) -> None:
    """reserve(n) hands out a writable memoryview; commit(k) writes its first k bytes; the
    reference's MultipartUploadWriter(bucket, key) constructor writes s3://bucket/key."""
    with ref.MultipartUploadWriter.from_uri(root + "rc") as w:
        mv = w.reserve(10)
        mv[:] = b"0123456789"
        with pytest.raises(InvalidConfigError):
            w.reserve(1)  # one reservation at a time
        w.commit(4)
        with pytest.raises(InvalidConfigError):
            w.commit(1)  # nothing reserved any more
        w.write(b"-tail")
        w.flush()
    assert bytes(ref.get(root + "rc")) == b"0123-tail"
    if root.startswith("s3://"):
        bucket = root.removeprefix("s3://").rstrip("/")
        w2 = ref.MultipartUploadWriter(bucket, "by/bucket-key")
        w2.write(b"hello")
        assert w2.close()["total_bytes"] == 5
        assert bytes(ref.get(root + "by/bucket-key")) == b"hello"
    with pytest.raises(InvalidConfigError, match="content_type"):
        ref.MultipartUploadWriter.from_uri(root + "ct", content_type="application/x-npz")


def test_multipart_writer_abort_and_failed_with_block_leave_nothing(root: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """abort() after parts were sent publishes nothing and leaves no multipart upload open; a
    ``with`` block that raises aborts (the reference completed the upload) and the previous
    version of the object stays; close() after abort() raises."""
    w = ref.MultipartUploadWriter.from_uri(root + "gone", part_size=5 * MiB, abort_on_drop=True)
    w.write(os.urandom(6 * MiB))
    w.abort()
    w.abort()  # idempotent
    assert not ref.exists(root + "gone")
    with pytest.raises(ValueError):
        w.close()
    ref.put_bytes(root + "kept", b"old version")

    def fail_inside_with() -> None:
        with ref.MultipartUploadWriter.from_uri(root + "kept") as w3:
            w3.write(b"new, never published")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside_with()
    assert bytes(ref.get(root + "kept")) == b"old version"
    assert ref.list(root, recursive=True) == [root + "kept"]
    if root.startswith("s3://"):
        bucket = root.removeprefix("s3://").rstrip("/")
        assert boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_create_bucket_takes_a_bare_name_and_an_owned_bucket_is_fine(s3_server) -> None:  # type: ignore[no-untyped-def]
    """create_bucket("name") (a bare name, as the reference took) makes an S3 bucket; creating a
    bucket you already own again is no error; delete_bucket removes it."""
    name = f"compat-{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    ref.create_bucket(name)
    try:
        ref.create_bucket(name)
        ref.put_bytes(f"s3://{name}/k", b"v")
        assert ref.list(f"s3://{name}/", recursive=True) == [f"s3://{name}/k"]
        ref.delete(f"s3://{name}/k")
    finally:
        ref.delete_bucket(name)
    with pytest.raises(NotFoundError):
        ref.list(f"s3://{name}/")


# -------------------------------------------------------------------------------------------------
# docs/migrating.md
# -------------------------------------------------------------------------------------------------

MIGRATING = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"


def migrating_block(after: str) -> str:
    """The first ```python block of docs/migrating.md after the line ``after``."""
    text = MIGRATING.read_text()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start : text.index("```", start)]


def test_docs_reference_switch_block_runs(bucket: str) -> None:
    """The reference s3dlio's one-line-switch example runs as written (with the reader's
    ``payload`` and ``uris``), and each call returns what its comment says."""
    block = migrating_block("## From the reference s3dlio").replace("s3://my-bucket", f"s3://{bucket}")
    ref.put_bytes(f"s3://{bucket}/train/a", b"a")
    payload = os.urandom(100_000)
    ns: dict[str, object] = {"payload": payload, "uris": [f"s3://{bucket}/train/a"]}
    exec(compile(block, "docs/migrating.md", "exec"), ns)  # noqa: S102 - the docs' own example
    assert bytes(ns["data"]) == payload and bytes(ns["part"]) == payload[:4096]  # type: ignore[call-overload]
    assert [(u, bytes(b)) for u, b in ns["pairs"]] == [(f"s3://{bucket}/train/a", b"a")]  # type: ignore[attr-defined]
    assert ns["uris"] == [f"s3://{bucket}/train/a"]
    assert ns["info"]["size"] == len(payload)  # type: ignore[index]
    assert bytes(ref.get(f"s3://{bucket}/big.bin")) == payload


def test_docs_putting_it_together_block_runs(
    bucket: str, s3_server, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """The end-to-end example of docs/migrating.md runs against the local server (its bucket and
    endpoint substituted): a batch, a checkpoint round trip, the error's fields, the delete."""
    require("torch")
    block = (
        migrating_block("## Putting it together")
        .replace("s3://my-bucket", f"s3://{bucket}")
        .replace("http://127.0.0.1:8333", s3_server.endpoint)
    )
    ns: dict[str, object] = {}
    exec(compile(block, "docs/migrating.md", "exec"), ns)  # noqa: S102 - the docs' own example
    assert bytes(ns["head"]) == b"\x00" * 16  # type: ignore[call-overload]
    assert ns["names"] == [f"s3://{bucket}/train/0000.bin"]
    assert ns["state"] == {"step": 1}
    assert f"s3://{bucket}/missing 404" in capsys.readouterr().out
    assert ref.list(f"s3://{bucket}/", recursive=True) == [f"s3://{bucket}/ckpt/step-1.pt"]
