"""Shard indexes: the samples of one shard as addressable byte ranges, and their compact,
versioned serialization for the index cache.

Binary layout of :meth:`ShardIndex.to_bytes` (all integers little-endian)::

    magic    8 bytes  b"S3DLSIDX"
    version  u16      1
    format   u8       0 = wds, 1 = tfrecord
    flags    u8       bit 0: keys present, bit 1: members present (wds)
    n        u64      samples
    m        u64      members (0 without members)
    e        u64      distinct extensions (0 without members)
    starts   i64[n], lengths i64[n]
    members  member_ptr i64[n+1], member_ext i32[m], member_off i64[m], member_size i64[m],
             exts: u32[e] byte lengths then the UTF-8 bytes (surrogateescape)
    keys     u32[n] byte lengths then the UTF-8 bytes (surrogateescape)
    crc      u32      CRC32C of everything before it
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .._core import crc32c as _crc32c
from ..exceptions import CorruptShardError, InvalidConfigError

__all__ = ["FORMATS", "INDEX_MAGIC", "INDEX_VERSION", "ShardIndex"]

INDEX_MAGIC = b"S3DLSIDX"
INDEX_VERSION = 1
FORMATS = ("wds", "tfrecord")

_HEAD = struct.Struct("<8sHBBQQQ")
_FLAG_KEYS = 1
_FLAG_MEMBERS = 2


def _i64(a: Any) -> npt.NDArray[np.int64]:
    return np.ascontiguousarray(a, dtype=np.int64)


def _pack_strings(strings: list[str]) -> bytes:
    enc = [s.encode("utf-8", "surrogateescape") for s in strings]
    return np.array([len(b) for b in enc], dtype="<u4").tobytes() + b"".join(enc)


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """The samples of one shard, each an addressable byte range.

    ``starts[i]`` and ``lengths[i]`` are the byte range to fetch for sample ``i``. For ``"wds"``
    shards the range runs from the first member's data to the last member's data end (tar headers
    in between lie inside it), and the ``member_*`` arrays locate each member inside that range:
    sample ``i``'s members are ``member_ptr[i]:member_ptr[i+1]``, with extension
    ``exts[member_ext[j]]``, data at ``member_off[j]`` (relative to ``starts[i]``) and
    ``member_size[j]`` bytes. For ``"tfrecord"`` shards each range is one whole record.
    """

    format: str
    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    keys: list[str] | None = None
    member_ptr: npt.NDArray[np.int64] | None = None
    member_ext: npt.NDArray[np.int32] | None = None
    member_off: npt.NDArray[np.int64] | None = None
    member_size: npt.NDArray[np.int64] | None = None
    exts: list[str] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidConfigError(f"ShardIndex: unknown format {self.format!r} (one of {FORMATS})")
        object.__setattr__(self, "starts", _i64(self.starts))
        object.__setattr__(self, "lengths", _i64(self.lengths))
        n = len(self.starts)
        if self.starts.ndim != 1 or self.lengths.shape != (n,):
            raise InvalidConfigError(
                f"ShardIndex: starts and lengths must be 1-D of one length, got {self.starts.shape} "
                f"and {self.lengths.shape}"
            )
        if self.keys is not None and len(self.keys) != n:
            raise InvalidConfigError(f"ShardIndex: {len(self.keys)} keys for {n} samples")
        members = (self.member_ptr, self.member_ext, self.member_off, self.member_size, self.exts)
        if all(x is None for x in members):
            return
        if any(x is None for x in members):
            raise InvalidConfigError(
                "ShardIndex: member_ptr, member_ext, member_off, member_size and exts go together"
            )
        ptr = _i64(self.member_ptr)
        ext = np.ascontiguousarray(self.member_ext, dtype=np.int32)
        off = _i64(self.member_off)
        size = _i64(self.member_size)
        object.__setattr__(self, "member_ptr", ptr)
        object.__setattr__(self, "member_ext", ext)
        object.__setattr__(self, "member_off", off)
        object.__setattr__(self, "member_size", size)
        m = len(ext)
        if ptr.shape != (n + 1,) or off.shape != (m,) or size.shape != (m,):
            raise InvalidConfigError(
                f"ShardIndex: member arrays of inconsistent shapes (ptr {ptr.shape} for {n} samples, "
                f"ext {ext.shape}, off {off.shape}, size {size.shape})"
            )

    def members(
        self,
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64], list[str]
    ]:
        """``(member_ptr, member_ext, member_off, member_size, exts)``; an index without members
        (a TFRecord index) raises :class:`~s3dlio.exceptions.InvalidConfigError`."""
        if (
            self.member_ptr is None
            or self.member_ext is None
            or self.member_off is None
            or self.member_size is None
            or self.exts is None
        ):
            raise InvalidConfigError(f"{self!r} has no member table (a 'wds' index has one)")
        return self.member_ptr, self.member_ext, self.member_off, self.member_size, self.exts

    def __len__(self) -> int:
        return len(self.starts)

    def __repr__(self) -> str:
        members = "" if self.member_ext is None else f", members={len(self.member_ext)}, exts={self.exts}"
        return f"ShardIndex(format={self.format!r}, samples={len(self)}{members})"

    def to_bytes(self) -> bytes:
        """The index as compact, versioned bytes (see the module docstring), for the index cache."""
        n = len(self)
        flags = 0
        parts: list[bytes] = []
        m = e = 0
        parts.append(self.starts.astype("<i8").tobytes())
        parts.append(self.lengths.astype("<i8").tobytes())
        if self.member_ptr is not None:
            ptr, ext, off, size, exts = self.members()
            flags |= _FLAG_MEMBERS
            m, e = len(ext), len(exts)
            parts.append(ptr.astype("<i8").tobytes())
            parts.append(ext.astype("<i4").tobytes())
            parts.append(off.astype("<i8").tobytes())
            parts.append(size.astype("<i8").tobytes())
            parts.append(_pack_strings(exts))
        if self.keys is not None:
            flags |= _FLAG_KEYS
            parts.append(_pack_strings(self.keys))
        head = _HEAD.pack(INDEX_MAGIC, INDEX_VERSION, FORMATS.index(self.format), flags, n, m, e)
        body = head + b"".join(parts)
        return body + struct.pack("<I", _crc32c(body, 0))

    @classmethod
    def from_bytes(cls, data: Any, uri: str | None = None) -> ShardIndex:
        """Parse :meth:`to_bytes` output. Garbage, a bad checksum, an unknown version or an
        inconsistent index raise :class:`~s3dlio.exceptions.CorruptShardError` naming ``uri``."""
        mv = memoryview(data).cast("B")
        where = uri if uri is not None else "<index>"

        def bad(why: str) -> CorruptShardError:
            return CorruptShardError(f"{where}: not a valid s3dlio shard index: {why}", uri=uri)

        if len(mv) < _HEAD.size + 4 or bytes(mv[:8]) != INDEX_MAGIC:
            raise bad("bad magic")
        _magic, version, fmt, flags, n, m, e = _HEAD.unpack_from(mv, 0)
        if version != INDEX_VERSION:
            raise bad(f"unknown version {version} (this s3dlio reads version {INDEX_VERSION})")
        (crc,) = struct.unpack_from("<I", mv, len(mv) - 4)
        if _crc32c(mv[: len(mv) - 4], 0) != crc:
            raise bad("checksum mismatch")
        if fmt >= len(FORMATS):
            raise bad(f"unknown format code {fmt}")
        end = len(mv) - 4
        pos = _HEAD.size

        def take(dtype: str, count: int) -> npt.NDArray[Any]:
            nonlocal pos
            nbytes = np.dtype(dtype).itemsize * count
            if count < 0 or pos + nbytes > end:
                raise bad("truncated")
            # COPY: the index outlives the (possibly mutable or pooled) buffer it was read from.
            arr = np.frombuffer(mv, dtype=dtype, count=count, offset=pos).copy()
            pos += nbytes
            return arr

        def strings(count: int) -> list[str]:
            nonlocal pos
            lens = take("<u4", count)
            total = int(lens.sum())
            if pos + total > end:
                raise bad("truncated")
            blob = bytes(mv[pos : pos + total])
            pos += total
            out: list[str] = []
            p = 0
            for ln in lens.tolist():
                out.append(blob[p : p + ln].decode("utf-8", "surrogateescape"))
                p += ln
            return out

        starts = take("<i8", n)
        lengths = take("<i8", n)
        ptr = ext = off = size = None
        exts = keys = None
        if flags & _FLAG_MEMBERS:
            ptr = take("<i8", n + 1)
            ext = take("<i4", m)
            off = take("<i8", m)
            size = take("<i8", m)
            exts = strings(e)
            if ptr[0] != 0 or ptr[-1] != m or np.any(np.diff(ptr) < 0):
                raise bad("member pointers out of order")
            if m and (ext.min() < 0 or ext.max() >= e):
                raise bad("member extension id out of range")
            if np.any(off < 0) or np.any(size < 0):
                raise bad("negative member offset or size")
        if flags & _FLAG_KEYS:
            keys = strings(n)
        if pos != end:
            raise bad(f"{end - pos} trailing bytes")
        if np.any(starts < 0) or np.any(lengths < 0):
            raise bad("negative start or length")
        return cls(FORMATS[fmt], starts, lengths, keys, ptr, ext, off, size, exts)
