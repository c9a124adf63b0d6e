"""Zero copy: a Buffer's memory is shared (not copied) by memoryview, numpy and torch; it is
read-only; it lives as long as any view; and put() reads Python buffers without copying them."""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc

import numpy as np
import pytest

import s3dlio
from helpers import MiB, require

SIZE = 1 * MiB + 12  # a multiple of 4 (float32 views) that is not page-aligned


@pytest.fixture
def stored(root: str) -> tuple[str, bytes]:
    data = os.urandom(SIZE)
    s3dlio.put(root + "zc.bin", data)
    return root + "zc.bin", data


def test_numpy_shares_the_buffer_memory(stored: tuple[str, bytes]) -> None:
    """np.frombuffer(buf) points at the Buffer's own bytes (same address), for any dtype."""
    uri, data = stored
    buf = s3dlio.get(uri)
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert arr.ctypes.data == buf.address
    assert arr.size == SIZE and arr.tobytes() == data
    f32 = np.frombuffer(buf, dtype=np.float32)
    assert f32.ctypes.data == buf.address and f32.size == SIZE // 4
    again = np.frombuffer(buf, dtype=np.uint8)
    assert np.shares_memory(arr, again)


def test_memoryview_is_readonly_and_shared(stored: tuple[str, bytes]) -> None:
    """memoryview(buf) is a read-only, 1-D, byte view over the same memory."""
    uri, data = stored
    buf = s3dlio.get(uri)
    mv = memoryview(buf)
    assert mv.readonly
    assert mv.nbytes == SIZE and mv.ndim == 1 and mv.itemsize == 1 and mv.c_contiguous
    assert np.frombuffer(mv, dtype=np.uint8).ctypes.data == buf.address
    assert mv[:16].tobytes() == data[:16]
    with pytest.raises(TypeError):
        mv[0] = 1
    mv.release()
    assert bytes(buf) == data


def test_numpy_view_is_read_only(stored: tuple[str, bytes]) -> None:
    """Writing through a numpy view raises ValueError and the data is unchanged."""
    uri, data = stored
    buf = s3dlio.get(uri)
    arr = np.frombuffer(buf, dtype=np.uint8)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0] = (data[0] + 1) % 256
    with pytest.raises(ValueError):
        arr.setflags(write=True)
    assert bytes(buf) == data


def test_views_keep_the_buffer_alive(stored: tuple[str, bytes]) -> None:
    """Deleting the Buffer while a numpy array / memoryview exists keeps the memory valid."""
    uri, data = stored
    want = hashlib.sha256(data).hexdigest()
    buf = s3dlio.get(uri)
    arr = np.frombuffer(buf, dtype=np.uint8)
    mv = memoryview(s3dlio.get(uri))  # the Buffer itself is never bound to a name
    del buf
    gc.collect()
    churn = [os.urandom(SIZE) for _ in range(8)]  # reuse freed memory if it had been freed
    assert hashlib.sha256(arr).hexdigest() == want
    assert hashlib.sha256(mv).hexdigest() == want
    del churn


def test_buffer_value_semantics(stored: tuple[str, bytes]) -> None:
    """Buffers compare by content, hash like their bytes' content, and bytes() is an independent copy."""
    uri, data = stored
    a, b = s3dlio.get(uri), s3dlio.get(uri)
    assert a == b and hash(a) == hash(b)
    assert len(a) == SIZE
    copied = bytes(a)
    assert copied == data
    del a
    gc.collect()
    assert copied == data


def test_get_range_is_zero_copy_too(stored: tuple[str, bytes]) -> None:
    """A ranged read also exports its own memory without a copy."""
    uri, data = stored
    part = s3dlio.get_range(uri, 1000, 4096)
    arr = np.frombuffer(part, dtype=np.uint8)
    assert arr.ctypes.data == part.address
    assert arr.tobytes() == data[1000:5096]


def test_get_many_buffers_are_zero_copy(root: str) -> None:
    """Each Buffer from get_many exposes its own memory through numpy."""
    uris = [f"{root}m{i}" for i in range(5)]
    for i, u in enumerate(uris):
        s3dlio.put(u, bytes([i]) * 1000)
    for i, buf in enumerate(s3dlio.get_many(uris)):
        arr = np.frombuffer(buf, dtype=np.uint8)
        assert arr.ctypes.data == buf.address and (arr == i).all()


@pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")
def test_torch_frombuffer_shares_memory(stored: tuple[str, bytes]) -> None:
    """torch.frombuffer(buf) is a tensor over the Buffer's memory (same data pointer)."""
    torch = require("torch")
    uri, data = stored
    buf = s3dlio.get(uri)
    t = torch.frombuffer(buf, dtype=torch.uint8)
    assert t.data_ptr() == buf.address
    assert t.numel() == SIZE and bytes(t[:32].tolist()) == data[:32]
    del buf
    gc.collect()
    assert hashlib.sha256(t.numpy()).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", ["numpy", "bytearray", "buffer"])
def test_put_does_not_copy_in_python(root: str, kind: str) -> None:
    """put() of a 64 MiB object allocates far less than 64 MiB on the Python side (no bytes(data))."""
    size = 64 * MiB
    if kind == "numpy":
        data: object = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    elif kind == "bytearray":
        data = bytearray(os.urandom(size))
    else:
        s3dlio.put(root + "src", np.ones(size, dtype=np.uint8))
        data = s3dlio.get(root + "src")
    gc.collect()
    tracemalloc.start()
    try:
        s3dlio.put(root + "dst", data)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 4, f"put allocated {peak / MiB:.1f} MiB of Python memory"
    assert s3dlio.stat(root + "dst").size == size
    assert hashlib.sha256(s3dlio.get(root + "dst")).digest() == hashlib.sha256(memoryview(data)).digest()  # type: ignore[arg-type]
