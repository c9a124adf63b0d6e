"""Every operation on every backend (s3://, file://, direct://), through the public sync API.

The ``root`` fixture (conftest) is a fresh, empty prefix ending in ``/`` on each backend.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

import s3dlio
from helpers import rel
from s3dlio.exceptions import NotFoundError, RangeError

N = 100_003  # deliberately not a multiple of 512/4096 (direct:// alignment)


@pytest.fixture
def obj(root: str) -> tuple[str, bytes]:
    data = os.urandom(N)
    uri = root + "data/obj.bin"
    s3dlio.put(uri, data)
    return uri, data


def test_put_get_roundtrip(obj: tuple[str, bytes]) -> None:
    """get returns exactly what put wrote, as an s3dlio.Buffer of the right length."""
    uri, data = obj
    buf = s3dlio.get(uri)
    assert isinstance(buf, s3dlio.Buffer)
    assert len(buf) == N
    assert bytes(buf) == data


def test_put_overwrites_and_empty_object(root: str) -> None:
    """A second put replaces the object; a zero-byte object round-trips as an empty buffer."""
    uri = root + "over"
    s3dlio.put(uri, b"first version, longer")
    s3dlio.put(uri, b"second")
    assert bytes(s3dlio.get(uri)) == b"second"
    s3dlio.put(root + "empty", b"")
    assert len(s3dlio.get(root + "empty")) == 0
    assert s3dlio.stat(root + "empty").size == 0


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (N - 1, 1), (4097, 5000), (N - 10, None), (0, N), (0, None), (123, N - 123)],
    ids=["first-byte", "last-byte", "middle", "to-end", "whole", "whole-open", "exact-tail"],
)
def test_get_range(obj: tuple[str, bytes], offset: int, length: int | None) -> None:
    """Ranges inside the object return exactly those bytes (length=None reads to the end)."""
    uri, data = obj
    buf = s3dlio.get_range(uri, offset, length)
    end = N if length is None else offset + length
    assert bytes(buf) == data[offset:end]


@pytest.mark.parametrize(
    ("offset", "length"),
    [(N - 1, 2), (0, N + 1), (N + 5, 1), (N + 5, None), (10 * N, 10)],
    ids=["one-past-end", "whole-plus-one", "offset-beyond", "offset-beyond-open", "far-beyond"],
)
def test_get_range_outside_object_is_range_error(
    obj: tuple[str, bytes], offset: int, length: int | None
) -> None:
    """A range that is not entirely inside the object raises RangeError (a ValueError) naming the
    URI; s3dlio never returns short or padded data."""
    uri, _ = obj
    with pytest.raises(RangeError) as ei:
        s3dlio.get_range(uri, offset, length)
    assert isinstance(ei.value, ValueError)
    assert uri in str(ei.value)


def test_get_range_negative_is_rejected(obj: tuple[str, bytes]) -> None:
    """Negative offsets or lengths are refused with a Python exception, never a panic."""
    uri, _ = obj
    for offset, length in ((-1, 10), (0, -1)):
        with pytest.raises((ValueError, OverflowError)):
            s3dlio.get_range(uri, offset, length)


def test_get_many_input_order(root: str) -> None:
    """get_many over more URIs than its concurrency returns results in input order."""
    payloads = {f"{root}many/{i:03d}": f"object {i} ".encode() * (i + 1) for i in range(150)}
    for uri, data in payloads.items():
        s3dlio.put(uri, data)
    uris = list(payloads)
    random.Random(7).shuffle(uris)
    for kw in ({}, {"max_concurrency": 7}):
        bufs = s3dlio.get_many(uris, **kw)
        assert [bytes(b) for b in bufs] == [payloads[u] for u in uris]
    assert s3dlio.get_many([]) == []


def test_get_many_first_failure_names_its_uri(root: str) -> None:
    """A missing object in get_many raises NotFoundError whose message names that URI."""
    uris = [f"{root}gm/{i}" for i in range(80)]
    for u in uris:
        s3dlio.put(u, b"x")
    missing = root + "gm/does-not-exist"
    uris.insert(41, missing)
    with pytest.raises(NotFoundError) as ei:
        s3dlio.get_many(uris, max_concurrency=8)
    assert isinstance(ei.value, FileNotFoundError)
    assert missing in str(ei.value)


def test_put_many_writes_every_object(root: str) -> None:
    """put_many writes each (uri, data) pair, from bytes, numpy arrays and memoryviews alike, with
    any concurrency; an empty list is a no-op."""
    items = [(f"{root}pm/{i:03d}", os.urandom(i * 37 + 1)) for i in range(60)]
    mixed = [(u, np.frombuffer(d, dtype=np.uint8) if i % 3 == 1 else memoryview(d) if i % 3 == 2 else d)
             for i, (u, d) in enumerate(items)]  # fmt: skip
    for kw in ({}, {"max_concurrency": 3}):
        s3dlio.put_many(mixed, **kw)
        assert [bytes(b) for b in s3dlio.get_many([u for u, _ in items])] == [d for _, d in items]
    s3dlio.put_many([])


def test_put_many_bad_input_is_refused(root: str) -> None:
    """Items that are not (uri, data) pairs, a bad URI, a zero concurrency: clear errors, and
    nothing is written."""
    with pytest.raises(TypeError, match=r"\(uri, data\) pairs"):
        s3dlio.put_many([root + "x"])  # type: ignore[list-item]
    with pytest.raises(s3dlio.exceptions.InvalidUriError):
        s3dlio.put_many([(root + "ok", b"1"), ("nope://x", b"2")])
    with pytest.raises(s3dlio.exceptions.InvalidConfigError, match="max_concurrency"):
        s3dlio.put_many([(root + "ok", b"1")], max_concurrency=0)
    assert not s3dlio.exists(root + "ok")


def test_put_many_async(root: str) -> None:
    import asyncio

    items = [(f"{root}pma/{i}", f"v{i}".encode()) for i in range(20)]
    asyncio.run(s3dlio.put_many_async(items, max_concurrency=4))
    assert [bytes(b) for b in s3dlio.get_many([u for u, _ in items])] == [d for _, d in items]


def test_stat_and_exists(obj: tuple[str, bytes]) -> None:
    """stat reports size, last-modified (epoch seconds) and, on S3, an ETag; exists is exact."""
    uri, _ = obj
    info = s3dlio.stat(uri)
    assert isinstance(info, s3dlio.ObjectInfo)
    assert info.size == N
    assert info.is_dir is False
    assert info.uri == uri
    assert isinstance(info.last_modified, float)
    assert abs(info.last_modified - time.time()) < 3600
    if uri.startswith("s3://"):
        assert info.etag and info.etag.strip('"')
    assert s3dlio.exists(uri) is True
    assert s3dlio.exists(uri + ".nope") is False
    assert s3dlio.exists(uri[: -len("obj.bin")] + "obj") is False  # a prefix of a key is not a key


TREE = {"a.bin": 10, "b.txt": 3, "d1/x.bin": 7, "d1/y.txt": 1, "d2/z/w.bin": 5}


@pytest.fixture
def tree(root: str) -> str:
    prefix = root + "ls/"
    for key, size in TREE.items():
        s3dlio.put(prefix + key, bytes(size))
    return prefix


def test_list_recursive(tree: str) -> None:
    """A recursive listing returns every object below the prefix with its size, no directories."""
    got = {rel(i.uri, tree): (i.size, i.is_dir) for i in s3dlio.list(tree)}
    assert got == {k: (v, False) for k, v in TREE.items()}


def test_list_one_level(tree: str) -> None:
    """recursive=False stops at the next '/': files plus is_dir entries for sub-directories."""
    entries = s3dlio.list(tree, recursive=False)
    files = {rel(i.uri, tree): i.size for i in entries if not i.is_dir}
    dirs = {rel(i.uri, tree) for i in entries if i.is_dir}
    assert files == {"a.bin": 10, "b.txt": 3}
    assert dirs == {"d1", "d2"}
    inner = s3dlio.list(tree + "d1/", recursive=False)
    assert {(rel(i.uri, tree + "d1/"), i.is_dir) for i in inner} == {("x.bin", False), ("y.txt", False)}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.bin", {"a.bin", "d1/x.bin", "d2/z/w.bin"}),
        ("*.txt", {"b.txt", "d1/y.txt"}),
        ("d1/*", {"d1/x.bin", "d1/y.txt"}),
        ("?.bin", {"a.bin"}),
        ("{a,b}.*", {"a.bin", "b.txt"}),
        ("d[12]/*.txt", {"d1/y.txt"}),
        ("*.none", set()),
    ],
)
def test_list_pattern(tree: str, pattern: str, expected: set[str]) -> None:
    """pattern is a glob on the key relative to the prefix ('*' also crosses '/')."""
    assert {rel(i.uri, tree) for i in s3dlio.list(tree, pattern=pattern)} == expected


def test_list_iter_matches_list(tree: str) -> None:
    """list_iter streams the same entries as list, for both listing modes."""
    for recursive in (True, False):
        it = s3dlio.list_iter(tree, recursive=recursive)
        assert iter(it) is it
        streamed = sorted((i.uri, i.size, i.is_dir) for i in it)
        listed = sorted((i.uri, i.size, i.is_dir) for i in s3dlio.list(tree, recursive=recursive))
        assert streamed == listed and streamed


def test_list_empty_prefix_is_empty(root: str) -> None:
    """Listing a prefix with nothing under it returns an empty list, not an error."""
    assert s3dlio.list(root + "nothing-here/") == []


def test_list_prefix_is_a_string_prefix_on_s3(bucket: str) -> None:
    """On S3 the listing prefix is a key prefix: s3://b/da matches data/... and data2/..."""
    for key in ("data/1", "data2/1", "other/1"):
        s3dlio.put(f"s3://{bucket}/{key}", b"1")
    got = {rel(i.uri, f"s3://{bucket}/") for i in s3dlio.list(f"s3://{bucket}/da")}
    assert got == {"data/1", "data2/1"}


def test_delete_exact_key(root: str) -> None:
    """delete('.../obj_1') deletes exactly obj_1, never obj_10, obj_11 or obj_1/x (S3)."""
    keys = ["obj_1", "obj_10", "obj_11", "obj_2"]
    if root.startswith("s3://"):
        keys.append("obj_1/x")  # a key and a "directory" of the same name only exist on S3
    for k in keys:
        s3dlio.put(root + k, k.encode())
    s3dlio.delete(root + "obj_1")
    remaining = {rel(i.uri, root) for i in s3dlio.list(root)}
    assert remaining == set(keys) - {"obj_1"}
    assert bytes(s3dlio.get(root + "obj_10")) == b"obj_10"


def test_delete_missing_is_not_an_error(root: str) -> None:
    """Deleting an object that does not exist succeeds silently (S3 semantics)."""
    s3dlio.delete(root + "never-written")
    assert s3dlio.exists(root + "never-written") is False


def test_delete_prefix_counts(root: str) -> None:
    """delete_prefix removes everything under the prefix, returns the count, and spares siblings."""
    for i in range(5):
        s3dlio.put(f"{root}p/{i}", b"x")
    s3dlio.put(f"{root}p/sub/deep", b"x")
    s3dlio.put(f"{root}q/keep", b"x")
    assert s3dlio.delete_prefix(root + "p/") == 6
    assert s3dlio.list(root + "p/") == []
    assert s3dlio.exists(root + "q/keep")
    assert s3dlio.delete_prefix(root + "p/") == 0


def test_upload_download_tree_keeps_relative_paths(root: str, tmp_path: Path) -> None:
    """upload/download keep nested relative paths; same basenames at different depths never collide."""
    src = tmp_path / "src"
    files = {
        "a.bin": b"top",
        "sub/a.bin": b"middle",
        "sub/deeper/a.bin": b"bottom",
        "sub/b": os.urandom(70_000),
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    assert s3dlio.upload(src, root + "tree/") == len(files)
    assert {rel(i.uri, root + "tree/"): i.size for i in s3dlio.list(root + "tree/")} == {
        k: len(v) for k, v in files.items()
    }
    dst = tmp_path / "dst"
    assert s3dlio.download(root + "tree/", str(dst)) == len(files)
    got = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == files


def test_create_and_delete_bucket_s3(s3_server: object) -> None:
    """create_bucket makes a usable bucket; delete_bucket removes it (then reads are NotFound)."""
    name = f"s3://cb-{os.urandom(6).hex()}"
    s3dlio.create_bucket(name)
    s3dlio.put(name + "/k", b"v")
    assert bytes(s3dlio.get(name + "/k")) == b"v"
    s3dlio.delete(name + "/k")
    s3dlio.delete_bucket(name)
    with pytest.raises(NotFoundError):
        s3dlio.get(name + "/k")
    with pytest.raises(NotFoundError):
        s3dlio.list(name + "/")


@pytest.mark.parametrize("scheme", ["file", "direct"])
def test_create_and_delete_bucket_local(scheme: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """For file:// and direct:// a bucket is a directory: created, usable, then removed."""
    base = Path(request.getfixturevalue("disk_dir")) if scheme == "direct" else tmp_path
    d = base / "newbucket"
    uri = f"{scheme}://{d}"
    s3dlio.create_bucket(uri)
    assert d.is_dir()
    s3dlio.put(uri + "/k", b"v" * 5000)
    assert bytes(s3dlio.get(uri + "/k")) == b"v" * 5000
    s3dlio.delete(uri + "/k")
    s3dlio.delete_bucket(uri)
    assert not d.exists()


def test_put_accepts_buffer_protocol_objects(root: str) -> None:
    """put takes bytes, bytearray, memoryview (and slices), numpy arrays and s3dlio.Buffer."""
    raw = os.urandom(10_000)
    arr = np.arange(2_500, dtype=np.float32)
    cases = {
        "bytes": (raw, raw),
        "bytearray": (bytearray(raw), raw),
        "memoryview": (memoryview(raw), raw),
        "memoryview-slice": (memoryview(raw)[100:5100], raw[100:5100]),
        "numpy": (arr, arr.tobytes()),
        "numpy-2d": (arr.reshape(50, 50), arr.tobytes()),
        "numpy-contiguous-slice": (arr[10:20], arr[10:20].tobytes()),
    }
    for name, (data, expected) in cases.items():
        s3dlio.put(root + name, data)
        assert bytes(s3dlio.get(root + name)) == expected, name
    buf = s3dlio.get(root + "bytes")
    s3dlio.put(root + "from-buffer", buf)
    assert bytes(s3dlio.get(root + "from-buffer")) == raw


def test_put_non_contiguous_numpy_never_writes_wrong_data(root: str) -> None:
    """A strided numpy view is either written correctly or refused with a clear error."""
    arr = np.arange(4_000, dtype=np.int32)
    view = arr[::2]
    refused: Exception | None = None
    try:
        s3dlio.put(root + "strided", view)
    except (ValueError, BufferError) as e:
        refused = e
    if refused is None:
        assert bytes(s3dlio.get(root + "strided")) == view.tobytes()
    else:
        assert "contiguous" in str(refused).lower()
        assert not s3dlio.exists(root + "strided")


def test_put_rejects_non_buffers(root: str) -> None:
    """Objects without the buffer protocol (str, int, list) are refused with TypeError/ValueError."""
    for bad in ("text", 42, [1, 2, 3]):
        with pytest.raises((TypeError, ValueError)):
            s3dlio.put(root + "bad", bad)  # type: ignore[arg-type]
    assert not s3dlio.exists(root + "bad")
