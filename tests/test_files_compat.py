"""``s3dlio.open`` file objects as the libraries that take a file see them, on every backend
(s3://, file://, direct://).

The reader goes to ``numpy.load`` (.npy and .npz), ``zipfile.ZipFile`` (members read back exactly,
one larger than 20 MiB so both readahead and direct reads run), ``PIL.Image.open``, ``h5py.File``
and ``torch.load``; the writer takes ``numpy.save`` / ``numpy.savez``, ``zipfile`` (which falls
back to streaming data descriptors on a writer that cannot seek), ``torch.save`` and PIL's
``Image.save``. Then the reader's and the writer's ``io`` semantics one by one: read sizes,
``readinto`` targets, lines, ``seek``/``tell``/``peek``/``read1``, closed files, seeded random
seeks across a 40 MiB object, an object replaced while it is read, a wrong ``size=``; part
boundaries, ``size``/``crc32c``/``parts``, empty objects, relative paths, missing parent
directories, writes after close, and garbage collection or abort of an unclosed writer (no
object, no temp file, the previous version kept, no task left running).

Objects are built with the library itself into a ``BytesIO`` (or a local file) and uploaded with
``s3dlio.put``; what a writer wrote is read back with ``s3dlio.get``, so each direction is checked
against an independent path.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import s3dlio
from helpers import MiB, require, wait_until
from s3dlio import exceptions as exc
from s3dlio.options import RangeEngineConfig
from s3dlio.testing import LocalS3Server

PART = 5 * MiB  # the smallest part S3 takes: writers below cross part boundaries cheaply


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def local_path(uri: str) -> Path:
    """The path of a file:// or direct:// URI."""
    return Path(uri.split("://", 1)[1])


def no_tasks_left() -> None:
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=5.0), f"live tasks: {s3dlio.live_tasks()}"


# -------------------------------------------------------------------------------------------------
# The reader, handed to libraries
# -------------------------------------------------------------------------------------------------


def test_numpy_load_npy_and_npz(root: str) -> None:
    """``np.load(s3dlio.open(uri))`` reads a .npy and a .npz (a zip read through seek/tell)
    written by numpy itself."""
    a = np.random.default_rng(1).standard_normal((64, 33)).astype(np.float32)
    b = np.arange(1000, dtype=np.int64).reshape(10, 100)
    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, a)
    np.savez(npz, a=a, b=b)
    s3dlio.put(root + "a.npy", npy.getvalue())
    s3dlio.put(root + "ab.npz", npz.getvalue())

    with s3dlio.open(root + "a.npy") as f:
        got = np.load(f)
    assert got.dtype == a.dtype and np.array_equal(got, a)
    with s3dlio.open(root + "ab.npz") as f, np.load(f) as z:
        assert sorted(z.files) == ["a", "b"]
        assert np.array_equal(z["a"], a) and np.array_equal(z["b"], b)


def test_zipfile_reads_every_member_exactly(root: str) -> None:
    """``zipfile.ZipFile(s3dlio.open(uri))``: a stored 21 MiB member (one read larger than two
    chunks: a direct read into the destination), the same member streamed in 1 MiB reads
    (readahead), a deflated member and small ones all read back bit-identical."""
    big = payload(21 * MiB, seed=2)
    text = b"line of text\n" * 5000
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("small.txt", b"hello")
        z.writestr("big.bin", big, compress_type=zipfile.ZIP_STORED)
        z.writestr("text.txt", text, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("dir/empty", b"")
    s3dlio.put(root + "a.zip", buf.getvalue())

    with s3dlio.open(root + "a.zip") as f, zipfile.ZipFile(f) as z:
        assert z.namelist() == ["small.txt", "big.bin", "text.txt", "dir/empty"]
        assert z.read("small.txt") == b"hello"
        assert z.read("big.bin") == big
        assert z.read("text.txt") == text
        assert z.read("dir/empty") == b""
        with z.open("big.bin") as m:
            pieces = iter(lambda: m.read(MiB), b"")
            assert b"".join(pieces) == big
    no_tasks_left()


def test_pil_image_open(root: str) -> None:
    """``PIL.Image.open(s3dlio.open(uri))`` decodes a PNG to the exact pixels."""
    image = require("PIL.Image")
    pixels = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    image.fromarray(pixels).save(buf, format="PNG")
    s3dlio.put(root + "img.png", buf.getvalue())

    with s3dlio.open(root + "img.png") as f, image.open(f) as im:
        assert im.format == "PNG" and im.size == (64, 48)
        assert np.array_equal(np.asarray(im), pixels)


def test_h5py_file_reads_datasets_exactly(root: str) -> None:
    """``h5py.File(s3dlio.open(uri), "r")``: contiguous, chunked+compressed and scalar datasets,
    a slice, and attributes read back exactly."""
    h5py = require("h5py")
    rng = np.random.default_rng(4)
    dense = rng.standard_normal((256, 300)).astype(np.float32)
    chunked = rng.integers(0, 1000, (500, 40), dtype=np.int32)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h:
        h["dense"] = dense
        h.create_dataset("grp/chunked", data=chunked, chunks=(50, 40), compression="gzip")
        h["scalar"] = 42
        h.attrs["note"] = "written to a BytesIO"
    s3dlio.put(root + "d.h5", buf.getvalue())

    with s3dlio.open(root + "d.h5") as f, h5py.File(f, "r") as h:
        assert np.array_equal(h["dense"][()], dense)
        assert np.array_equal(h["grp/chunked"][()], chunked)
        assert np.array_equal(h["grp/chunked"][123:321, 5], chunked[123:321, 5])
        assert h["scalar"][()] == 42
        assert h.attrs["note"] == "written to a BytesIO"


def test_torch_load_of_a_plain_torch_save(root: str, tmp_path: Path) -> None:
    """A state dict saved with plain ``torch.save`` to a local file, uploaded, loads back from
    ``torch.load(s3dlio.open(uri))`` tensor for tensor."""
    torch = require("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    state = model.state_dict()
    torch.save(state, tmp_path / "ckpt.pt")
    s3dlio.put(root + "ckpt.pt", (tmp_path / "ckpt.pt").read_bytes())

    with s3dlio.open(root + "ckpt.pt") as f:
        got = torch.load(f, weights_only=True)
    assert list(got) == list(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# -------------------------------------------------------------------------------------------------
# The writer, handed to libraries
# -------------------------------------------------------------------------------------------------


def test_numpy_save_and_savez_into_the_writer(root: str) -> None:
    """``np.save`` and ``np.savez`` / ``np.savez_compressed`` write into ``s3dlio.open(uri, "wb")``
    (savez builds its zip on a writer that cannot seek); numpy reads the objects back."""
    a = np.random.default_rng(5).standard_normal((100, 7))
    b = np.arange(12, dtype=np.uint16)
    with s3dlio.open(root + "a.npy", "wb") as f:
        np.save(f, a)
    with s3dlio.open(root + "ab.npz", "wb") as f:
        np.savez(f, a=a, b=b)
    with s3dlio.open(root + "abc.npz", "wb") as f:
        np.savez_compressed(f, a=a, b=b)

    assert np.array_equal(np.load(io.BytesIO(bytes(s3dlio.get(root + "a.npy")))), a)
    for name in ("ab.npz", "abc.npz"):
        with np.load(io.BytesIO(bytes(s3dlio.get(root + name)))) as z:
            assert np.array_equal(z["a"], a) and np.array_equal(z["b"], b)


def test_zipfile_writes_through_the_unseekable_writer(root: str) -> None:
    """``zipfile.ZipFile(s3dlio.open(uri, "wb"), "w")``: the writer is not seekable, so zipfile
    streams each member with a data descriptor; a member written through ``z.open(name, "w")``
    spans two parts. The archive reads back exactly with the standard library."""
    big = payload(PART + 12345, seed=6)
    with s3dlio.open(root + "out.zip", "wb", part_size=PART) as f:
        assert not f.seekable()
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("a.txt", b"alpha")
            z.writestr("deflated.txt", b"abc" * 10000, compress_type=zipfile.ZIP_DEFLATED)
            with z.open("big.bin", "w") as m:
                for i in range(0, len(big), 1_000_003):
                    m.write(big[i : i + 1_000_003])
    assert f.parts == (0 if root.startswith("file://") else 2)  # file:// is written in place

    with zipfile.ZipFile(io.BytesIO(bytes(s3dlio.get(root + "out.zip")))) as z:
        assert z.testzip() is None
        assert [i.flag_bits & 0x08 for i in z.infolist()] == [0x08] * 3  # data descriptors
        assert z.read("a.txt") == b"alpha"
        assert z.read("deflated.txt") == b"abc" * 10000
        assert z.read("big.bin") == big


def test_torch_save_into_the_writer(root: str) -> None:
    """``torch.save(state, s3dlio.open(uri, "wb"))`` and back with ``torch.load(s3dlio.open(uri))``."""
    torch = require("torch")
    state = {"w": torch.arange(10_000, dtype=torch.float32).reshape(100, 100), "step": torch.tensor(7)}
    with s3dlio.open(root + "ckpt.pt", "wb") as f:
        torch.save(state, f)
    with s3dlio.open(root + "ckpt.pt") as f:
        got = torch.load(f, weights_only=True)
    assert torch.equal(got["w"], state["w"]) and int(got["step"]) == 7


def test_pil_save_into_the_writer(root: str) -> None:
    """``Image.save(s3dlio.open(uri, "wb"), format="PNG")``; the PNG decodes to the same pixels."""
    image = require("PIL.Image")
    pixels = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    with s3dlio.open(root + "img.png", "wb") as f:
        image.fromarray(pixels).save(f, format="PNG")
    with image.open(io.BytesIO(bytes(s3dlio.get(root + "img.png")))) as im:
        assert np.array_equal(np.asarray(im), pixels)


# -------------------------------------------------------------------------------------------------
# Reader semantics
# -------------------------------------------------------------------------------------------------

SMALL_CHUNKS = RangeEngineConfig(chunk_size=64 * 1024, min_split_size=64 * 1024)
MIB_CHUNKS = RangeEngineConfig(chunk_size=MiB, min_split_size=MiB)


def drain(f: io.BufferedIOBase, n: int = 256 * 1024) -> None:
    """Read ``f`` to its end, ``n`` bytes at a time."""
    while f.read(n):
        pass


def test_read_sizes_and_read_to_the_end(root: str) -> None:
    """``read(n)`` returns exactly n bytes until the end, then fewer, then ``b""``; ``read()``,
    ``read(-1)`` and ``read(None)`` read the rest; ``size`` and ``etag`` describe the object."""
    data = payload(300_001, seed=8)
    s3dlio.put(root + "x", data)
    with s3dlio.open(root + "x", range_engine=SMALL_CHUNKS) as f:
        assert f.readable() and f.seekable() and not f.writable()
        assert f.size == len(data) and f.name == f.uri == root + "x" and f.mode == "rb"
        assert isinstance(f.etag, str) and f.etag  # local files: inode, size and mtime
        assert f.read(0) == b""
        assert f.read(10) == data[:10]
        assert f.read(100_000) == data[10:100_010]  # across chunk boundaries
        assert f.read(200_000) == data[100_010:]  # short: the end
        assert f.read(1) == b"" and f.read() == b""
        for rest in (-1, None):
            f.seek(299_990)
            assert f.read(rest) == data[299_990:]
        f.seek(0)
        assert f.read() == data
        f.seek(0)
        assert f.readall() == data


def test_readinto_targets(root: str) -> None:
    """``readinto`` fills a bytearray, a numpy array (any dtype: its bytes) and a memoryview
    slice in place; 17 MiB into one numpy array (more than two chunks) is a direct read; a
    read-only buffer is a TypeError."""
    data = payload(17 * MiB + 100, seed=9)
    s3dlio.put(root + "x", data)
    with s3dlio.open(root + "x") as f:
        ba = bytearray(1000)
        assert f.readinto(ba) == 1000 and ba == data[:1000]

        arr = np.zeros(250, dtype=np.float32)  # 1000 bytes
        assert f.readinto(arr) == 1000
        assert arr.tobytes() == data[1000:2000]

        backing = bytearray(3000)
        assert f.readinto(memoryview(backing)[1000:2000]) == 1000
        assert backing[1000:2000] == data[2000:3000] and backing[:1000] == bytes(1000)

        f.seek(50)
        big = np.empty(17 * MiB, dtype=np.uint8)
        assert f.readinto(big) == 17 * MiB
        assert big.tobytes() == data[50 : 50 + 17 * MiB]

        tail = bytearray(1000)
        assert f.readinto(tail) == 50 and tail[:50] == data[-50:]  # fewer only at the end
        assert f.readinto(tail) == 0

        with pytest.raises(TypeError):
            f.readinto(b"read-only")
    no_tasks_left()


def test_readline_and_iteration(root: str) -> None:
    """``readline`` (with and without a limit), iteration and ``readlines`` give the lines, also
    across chunk boundaries; ``io.TextIOWrapper`` decodes them."""
    lines = [f"line {i}: {'x' * (i % 97)}\n".encode() for i in range(3000)]
    lines.append(b"no newline at the end")
    data = b"".join(lines)
    s3dlio.put(root + "t.txt", data)
    with s3dlio.open(root + "t.txt", range_engine=SMALL_CHUNKS) as f:
        assert list(f) == lines
        f.seek(0)
        assert f.readline() == lines[0]
        assert f.readline(3) == lines[1][:3]
        assert f.readline() == lines[1][3:]
        assert f.readlines() == lines[2:]
        assert f.readline() == b""
    with s3dlio.open(root + "t.txt") as f, io.TextIOWrapper(f, encoding="utf-8") as t:
        assert t.read().splitlines(keepends=True) == [x.decode() for x in lines]


def test_seek_tell_peek_read1(root: str) -> None:
    """``seek`` with whence 0/1/2 returns the new position; past the end reads give ``b""``; a
    negative position or an unknown whence is a ValueError; ``peek`` does not move; ``read1``
    returns at most n bytes (at least one before the end)."""
    data = payload(200_000, seed=10)
    s3dlio.put(root + "x", data)
    with s3dlio.open(root + "x", range_engine=SMALL_CHUNKS) as f:
        assert f.tell() == 0
        assert f.seek(1000) == 1000 and f.tell() == 1000
        assert f.seek(500, os.SEEK_CUR) == 1500
        assert f.read(10) == data[1500:1510] and f.tell() == 1510
        assert f.seek(-10, os.SEEK_CUR) == 1500
        assert f.seek(-7, os.SEEK_END) == len(data) - 7
        assert f.read() == data[-7:] and f.tell() == len(data)

        assert f.seek(10, os.SEEK_END) == len(data) + 10
        assert f.read() == b"" and f.read(5) == b"" and f.readline() == b"" and f.peek() == b""
        assert f.seek(len(data) + 1000) == len(data) + 1000 and f.read(1) == b""

        f.seek(5)
        for bad in ((-1, os.SEEK_SET), (-6, os.SEEK_CUR), (-len(data) - 1, os.SEEK_END)):
            with pytest.raises(ValueError):
                f.seek(*bad)
        assert f.tell() == 5  # a refused seek does not move
        with pytest.raises(ValueError):
            f.seek(0, 3)

        f.seek(70_000)
        p = f.peek()
        assert p and data[70_000:].startswith(p) and f.tell() == 70_000
        assert f.peek(10)[:10] == data[70_000:70_010]
        r = f.read1(100)
        assert r == data[70_000:70_100] and isinstance(r, bytes)
        r = f.read1(10**9)  # at most what is buffered: one fetch
        assert 0 < len(r) <= 64 * 1024 and r == data[70_100 : 70_100 + len(r)]
        f.seek(len(data) - 3)
        assert f.read1(100) == data[-3:] and f.read1(100) == b""


def test_closed_reader_raises_value_error(root: str) -> None:
    """After ``close()`` (idempotent; also at the end of ``with``) every operation is a
    ValueError, as on a closed builtin file. A reader dropped unclosed leaves no task running."""
    s3dlio.put(root + "x", b"0123456789")
    with s3dlio.open(root + "x") as f:
        assert f.read(3) == b"012"
    assert f.closed
    f.close()
    for op in (
        f.read,
        lambda: f.read(1),
        f.read1,
        f.readline,
        f.peek,
        f.tell,
        lambda: f.seek(0),
        lambda: f.readinto(bytearray(4)),
        lambda: list(f),
    ):
        with pytest.raises(ValueError):
            op()

    s3dlio.put(root + "y", payload(MiB, seed=18))
    g = s3dlio.open(root + "y", range_engine=SMALL_CHUNKS)
    g.read(100_000)  # readahead in flight
    del g  # never closed: dropping it stops the readahead
    gc.collect()
    no_tasks_left()


def test_random_seeks_across_a_40mib_object(root: str) -> None:
    """Seeded random (offset, length) reads across 40 MiB, by absolute and relative seeks: small
    reads inside a chunk, reads across chunks, reads of more than two chunks (fetched directly
    into the destination) and reads running off the end are the source bytes, with the default
    8 MiB chunks and with 1 MiB chunks."""
    data = payload(40 * MiB, seed=11)
    s3dlio.put(root + "big", data)
    rng = np.random.default_rng(12)
    for rng_cfg, reads, sizes in (
        (None, 10, [1, 70_000, 9 * MiB, 17 * MiB]),
        (MIB_CHUNKS, 40, [1, 100, 70_000, 1_500_000, 3 * MiB]),
    ):
        with s3dlio.open(root + "big", range_engine=rng_cfg, readahead=1) as f:
            for _ in range(reads):
                off = int(rng.integers(0, len(data)))
                n = int(rng.choice(sizes))
                if rng.random() < 0.5:
                    assert f.seek(off) == off
                else:
                    assert f.seek(off - f.tell(), os.SEEK_CUR) == off
                assert f.read(n) == data[off : off + n], (off, n)
                assert f.tell() == min(off + n, len(data))
    no_tasks_left()


def test_an_object_replaced_while_read_is_an_error_on_s3(bucket: str) -> None:
    """Every range after the first is pinned to the version the first one saw (If-Match): when
    the object is replaced (same size) while a reader with readahead is in it, reading on is a
    StorageIOError ("object changed"), never a mix of the two versions."""
    uri = f"s3://{bucket}/r.bin"
    s3dlio.put(uri, b"\x01" * (8 * MiB))
    f = s3dlio.open(uri, readahead=2, range_engine=MIB_CHUNKS)
    first = f.read(MiB + 10)  # chunks 0 and 1, and readahead of chunks 2 and 3
    s3dlio.put(uri, b"\x02" * (8 * MiB))
    with pytest.raises(exc.StorageIOError, match="changed") as ei:
        drain(f)
    assert isinstance(ei.value, OSError) and ei.value.uri == uri
    assert first == b"\x01" * (MiB + 10)
    f.close()
    no_tasks_left()


def read_rest_unless_changed(f: io.BufferedIOBase) -> bytes | None:
    """The rest of ``f``, or None when reading on is an "object changed" StorageIOError."""
    try:
        return f.read()
    except exc.StorageIOError as e:
        if "changed" not in str(e):
            raise
        return None


@pytest.mark.parametrize("scheme", ["file", "direct"])
def test_a_local_file_replaced_while_read_is_an_error(
    scheme: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same promise on local files, where s3dlio.put replaces a file by renaming a new one over
    it: reading on is an error, or (the old file kept open) the old version, never a mix."""
    base = request.getfixturevalue("disk_dir") if scheme == "direct" else str(tmp_path)
    uri = f"{scheme}://{base}/r.bin"
    s3dlio.put(uri, b"\x01" * (4 * MiB))
    with s3dlio.open(uri, readahead=0, range_engine=MIB_CHUNKS) as f:
        f.read(MiB)
        s3dlio.put(uri, b"\x02" * (4 * MiB))
        rest = read_rest_unless_changed(f)
        assert rest is None or rest == b"\x01" * (3 * MiB), f"{rest.count(2)} bytes of the new version"


def test_a_size_change_while_read_is_an_error(root: str) -> None:
    """On every backend: replaced by an object of another size mid-read, reading on is a
    StorageIOError naming the URI; or, on file:// (read in place from the file it opened, as any
    open file), the old version to its end. Never a mix."""
    uri = root + "r.bin"
    s3dlio.put(uri, b"\x01" * (2 * MiB))
    with s3dlio.open(uri, readahead=0, range_engine=MIB_CHUNKS) as f:
        f.read(MiB)
        s3dlio.put(uri, b"\x02" * (2 * MiB + 1))
        if root.startswith("file://"):
            assert f.read() == b"\x01" * MiB
            return
        with pytest.raises(exc.StorageIOError, match="changed") as ei:
            f.read()
        assert ei.value.uri == uri


def test_a_wrong_size_is_a_clear_error(root: str) -> None:
    """``size=`` (what a listing said) that is not the object's size fails at open with a
    StorageIOError naming the URI and both sizes; the right size opens; a missing object is
    NotFoundError; a negative or non-int size is InvalidConfigError."""
    s3dlio.put(root + "x", b"y" * 1000)
    for wrong in (0, 999, 1001):
        with pytest.raises(exc.StorageIOError) as ei:
            s3dlio.open(root + "x", size=wrong)
        msg = str(ei.value)
        assert ei.value.uri == root + "x" and re.search(rf"\b1000\b.*\b{wrong}\b", msg), msg
    with s3dlio.open(root + "x", size=1000) as f:
        assert f.read() == b"y" * 1000
    s3dlio.put(root + "empty", b"")
    with s3dlio.open(root + "empty", size=0) as f:
        assert f.size == 0 and f.read() == b""
    if not root.startswith("s3://"):  # s3:// below, as an expected failure
        with pytest.raises(exc.StorageIOError, match="changed"):
            s3dlio.open(root + "empty", size=1)
    with pytest.raises(exc.NotFoundError):
        s3dlio.open(root + "missing", size=10)
    for bad in (-1, 1.5, True):
        with pytest.raises(exc.InvalidConfigError):
            s3dlio.open(root + "x", size=bad)  # type: ignore[arg-type]


def test_a_wrong_size_of_an_empty_object_is_a_size_error_on_s3(bucket: str) -> None:
    """``size=1`` for an empty object is the same StorageIOError as any other wrong size (it is on
    file:// and direct://, tested above)."""
    s3dlio.put(f"s3://{bucket}/empty", b"")
    with pytest.raises(exc.StorageIOError, match="changed"):
        s3dlio.open(f"s3://{bucket}/empty", size=1)


# -------------------------------------------------------------------------------------------------
# Writer semantics
# -------------------------------------------------------------------------------------------------


def test_writer_round_trip_across_part_boundaries(root: str) -> None:
    """Writes of odd sizes (bytes, bytearray, memoryview slices, a numpy array) across two part
    boundaries, two parts in flight: ``tell`` counts them; after close the object is every byte,
    ``size``, ``crc32c`` (== s3dlio.crc32c of the data) and ``parts`` describe it."""
    data = payload(2 * PART + 777, seed=13)
    mv = memoryview(data)
    with s3dlio.open(root + "w.bin", "wb", part_size=PART, max_parts_in_flight=2) as f:
        assert f.writable() and not f.readable() and not f.seekable()
        assert f.name == f.uri == root + "w.bin" and f.mode == "wb"
        assert f.write(data[:1]) == 1
        assert f.write(bytearray(data[1 : PART - 3])) == PART - 4
        assert f.write(np.frombuffer(data, dtype=np.uint8, count=10, offset=PART - 3)) == 10
        pos = PART + 7
        while pos < len(data):
            n = f.write(mv[pos : pos + 1_234_567])
            pos += n
            assert f.tell() == pos
        f.flush()  # a no-op while open
        with pytest.raises(ValueError, match="close"):
            _ = f.size  # not published yet
    assert f.closed
    parts = 0 if root.startswith("file://") else 3  # file:// is written in place, not in parts
    assert (f.size, f.crc32c, f.parts) == (len(data), s3dlio.crc32c(data), parts)
    assert f.tell() == len(data)
    assert bytes(s3dlio.get(root + "w.bin")) == data
    no_tasks_left()


def test_writer_below_one_part_is_a_single_put(root: str) -> None:
    """Less than one part is one PUT: ``parts == 0``; ``crc32c`` still matches."""
    s3dlio.put(root + "w.bin", b"previous version")
    data = payload(PART - 1, seed=14)
    with s3dlio.open(root + "w.bin", "wb", part_size=PART) as f:
        f.write(data)
    assert (f.size, f.crc32c, f.parts) == (len(data), s3dlio.crc32c(data), 0)
    assert bytes(s3dlio.get(root + "w.bin")) == data


def test_writer_empty_object(root: str) -> None:
    """Opened and closed with nothing written: an empty object (size 0, CRC32C 0, no parts)."""
    with s3dlio.open(root + "empty", "wb") as f:
        pass
    assert (f.size, f.crc32c, f.parts) == (0, 0, 0)
    assert s3dlio.stat(root + "empty").size == 0
    assert bytes(s3dlio.get(root + "empty")) == b""
    with s3dlio.open(root + "empty") as r:
        assert r.size == 0 and r.read() == b""


def test_plain_relative_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain relative path (no scheme) is a file in the current directory, for the writer and
    the reader; ``os.PathLike`` works too."""
    monkeypatch.chdir(tmp_path)
    with s3dlio.open("out.bin", "wb") as f:
        f.write(b"relative")
    assert f.uri == "file://" + str(tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"relative"
    with s3dlio.open("out.bin") as r:
        assert r.read() == b"relative"
    with s3dlio.open(Path("sub") / "p.bin", "wb") as f:
        f.write(b"pathlike")
    assert (tmp_path / "sub" / "p.bin").read_bytes() == b"pathlike"
    with s3dlio.open(Path("sub/p.bin")) as r:
        assert r.read() == b"pathlike"


@pytest.mark.parametrize("scheme", ["file", "direct"])
def test_missing_parent_directories_are_created_like_put(
    scheme: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``s3dlio.put`` to a file in directories that do not exist creates them; the writer does the
    same, for a single PUT and for a multipart write, and so does a plain path."""
    base = request.getfixturevalue("disk_dir") if scheme == "direct" else str(tmp_path)
    s3dlio.put(f"{scheme}://{base}/put/a/b/x.bin", b"put")
    assert Path(base, "put/a/b/x.bin").read_bytes() == b"put"

    with s3dlio.open(f"{scheme}://{base}/small/a/b/x.bin", "wb") as f:
        f.write(b"open")
    assert Path(base, "small/a/b/x.bin").read_bytes() == b"open"
    data = payload(PART + 1, seed=15)
    with s3dlio.open(f"{scheme}://{base}/multi/a/b/x.bin", "wb", part_size=PART) as f:
        f.write(data)
    assert f.parts == (0 if scheme == "file" else 2)  # file:// is written in place
    assert Path(base, "multi/a/b/x.bin").read_bytes() == data
    with s3dlio.open(os.path.join(base, "plain/a/x.bin"), "wb") as f:
        f.write(b"plain")
    assert Path(base, "plain/a/x.bin").read_bytes() == b"plain"


def test_write_after_close_or_abort_raises_value_error(root: str) -> None:
    """``write`` and ``flush`` on a closed or aborted writer are ValueErrors; ``close`` and
    ``abort`` are idempotent; an aborted writer has nothing published."""
    f = s3dlio.open(root + "w.bin", "wb")
    f.write(b"abc")
    f.close()
    f.close()
    f.abort()  # closed: nothing to discard
    for op in (lambda: f.write(b"more"), f.flush):
        with pytest.raises(ValueError, match="closed"):
            op()
    assert bytes(s3dlio.get(root + "w.bin")) == b"abc"

    g = s3dlio.open(root + "g.bin", "wb")
    g.write(b"abc")
    g.abort()
    g.abort()
    assert g.closed
    with pytest.raises(ValueError):
        g.write(b"more")
    with pytest.raises(ValueError, match="published"):
        _ = g.size
    with pytest.raises(exc.NotFoundError):
        s3dlio.stat(root + "g.bin")


def local_leftovers(root: str) -> list[str]:
    """Files in a local root's directory tree other than the expected ``keep.bin``."""
    if root.startswith("s3://"):
        return []
    d = local_path(root)
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name != "keep.bin")


@pytest.mark.parametrize("size", [100, 2 * PART + 1], ids=["below-one-part", "multipart"])
def test_gc_of_an_unclosed_writer_aborts(root: str, size: int, request: pytest.FixtureRequest) -> None:
    """``del f; gc.collect()`` of a writer never closed publishes nothing: the previous version
    stays, no temp file is left beside it, no multipart upload stays open, no task runs."""
    uri = root + "keep.bin"
    s3dlio.put(uri, b"previous version")
    f = s3dlio.open(uri, "wb", part_size=PART)
    f.write(payload(size, seed=16))
    del f
    gc.collect()
    assert bytes(s3dlio.get(uri)) == b"previous version"
    assert local_leftovers(root) == []
    if root.startswith("s3://"):
        client = request.getfixturevalue("boto3_client")
        bucket = root[len("s3://") :].rstrip("/")
        assert wait_until(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == [], 5.0)
    no_tasks_left()


def test_abort_and_an_exception_in_with_leave_the_previous_version(root: str) -> None:
    """``abort()`` and an exception inside ``with`` discard a multipart write: the previous
    version stays and a local directory holds no temp file afterwards."""
    uri = root + "keep.bin"
    s3dlio.put(uri, b"previous version")
    data = payload(2 * PART + 1, seed=17)

    f = s3dlio.open(uri, "wb", part_size=PART)
    f.write(data)
    f.abort()
    assert bytes(s3dlio.get(uri)) == b"previous version"
    assert local_leftovers(root) == []

    writers: list[s3dlio.ObjectWriter] = []

    def write_then_fail() -> None:
        with s3dlio.open(uri, "wb", part_size=PART) as g:
            writers.append(g)
            g.write(data)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert writers[0].closed
    assert bytes(s3dlio.get(uri)) == b"previous version"
    assert local_leftovers(root) == []
    no_tasks_left()


# -------------------------------------------------------------------------------------------------
# docs/files.md
# -------------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "files.md"


@pytest.fixture
def my_data(s3_server: LocalS3Server) -> Iterator[str]:
    """The docs' bucket ``s3://my-data``, created empty; emptied and deleted afterwards."""
    with contextlib.suppress(exc.S3dlioError):  # left by a run that was killed
        s3dlio.create_bucket("s3://my-data")
    s3dlio.delete_prefix("s3://my-data/")
    try:
        yield "s3://my-data"
    finally:
        with contextlib.suppress(Exception):
            s3dlio.delete_prefix("s3://my-data/")
        with contextlib.suppress(Exception):
            s3dlio.delete_bucket("s3://my-data")


def test_docs_examples_run_as_written(my_data: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of docs/files.md runs unchanged, in order, in one namespace (torch and
    h5py included), and leaves the objects it names."""
    require("torch")
    require("h5py")
    text = DOC.read_text()
    blocks = [
        (text.count("\n", 0, m.start(1)) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```\s*$", text, re.MULTILINE | re.DOTALL)
    ]
    assert len(blocks) >= 10
    namespace: dict[str, object] = {}
    for line, src in blocks:
        exec(compile(src, f"{DOC}:{line}", "exec"), namespace)  # noqa: S102 - the docs' own examples
    names = {o.uri[len(my_data) + 1 :] for o in s3dlio.list(my_data + "/")}
    assert {"a.bin", "arrays/x.npy", "bundle.zip", "ckpt/model.pt", "data.h5", "notes.txt"} <= names
    assert capsys.readouterr().out.split()[0] == "11"  # print(f.size, f.crc32c)
