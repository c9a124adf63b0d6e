"""TFRecord framing: each record is ``length (u64 LE) | masked CRC32C of length (u32 LE) | data |
masked CRC32C of data (u32 LE)``.

Besides writing records, this module indexes a TFRecord shard (each sample's range is one whole
record), reads and writes the text ``.index`` files of the ``tfrecord`` PyPI package and DALI's
``tfrecord2idx`` (both ``"offset length"`` per line, the length being the whole record's bytes:
header, payload and trailer, as both tools write ``f.tell() - current`` after reading the trailer),
checks one fetched record and returns its payload zero-copy, and streams the records of a shard.
CRCs use the Rust core's hardware CRC32C directly over the caller's buffer: no payload copies."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._core import crc32c as _crc32c
from ..exceptions import CorruptShardError
from .index import ShardIndex

__all__ = [
    "HEADER",
    "TRAILER",
    "format_index",
    "frame_record",
    "index_tfrecord",
    "iter_records",
    "masked_crc32c",
    "parse_index",
    "record_payload",
]

HEADER = 12  # length (8) + its masked CRC (4)
TRAILER = 4  # the data's masked CRC

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC32C (Castagnoli) of ``data``: the CRC rotated right by 15 bits plus
    0xa282ead8, modulo 2**32."""
    crc = _crc32c(data, 0)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload: bytes | bytearray | memoryview) -> bytes:
    """One TFRecord record (header, ``payload``, trailer) as bytes."""
    n = struct.pack("<Q", len(payload))
    return b"".join(
        (n, struct.pack("<I", masked_crc32c(n)), bytes(payload), struct.pack("<I", masked_crc32c(payload)))
    )


_LEN = struct.Struct("<QI")
_U32 = struct.Struct("<I")


def _scan(mv: memoryview, uri: str) -> Iterator[tuple[int, int]]:
    """``(offset, payload_length)`` of each record of a whole shard, each length CRC checked."""
    end = len(mv)
    off = 0
    i = 0
    while off < end:
        if off + HEADER > end:
            raise CorruptShardError(
                f"{uri}: record {i} at byte {off}: truncated header ({end - off} of {HEADER} bytes)", uri=uri
            )
        length, lcrc = _LEN.unpack_from(mv, off)
        if masked_crc32c(mv[off : off + 8]) != lcrc:
            raise CorruptShardError(f"{uri}: record {i} at byte {off}: length CRC mismatch", uri=uri)
        nxt = off + HEADER + length + TRAILER
        if nxt > end:
            raise CorruptShardError(
                f"{uri}: record {i} at byte {off}: {length}-byte record runs past the end of the "
                f"{end}-byte shard",
                uri=uri,
            )
        yield off, length
        off = nxt
        i += 1


def index_tfrecord(data: Any, uri: str) -> ShardIndex:
    """Index a whole TFRecord shard held in ``data``: one sample per record, its range the whole
    record (header, payload, trailer). Length CRCs are checked while scanning; a bad one, or a
    record running past the end, raises :class:`~s3dlio.exceptions.CorruptShardError` naming
    ``uri``, the record number and its byte offset. Data CRCs are checked when a record is read
    (:func:`record_payload`)."""
    mv = memoryview(data).cast("B")
    offs: list[int] = []
    lens: list[int] = []
    for off, length in _scan(mv, uri):
        offs.append(off)
        lens.append(length + HEADER + TRAILER)
    return ShardIndex("tfrecord", np.array(offs, dtype=np.int64), np.array(lens, dtype=np.int64))


def parse_index(text: str, uri: str, size: int | None = None) -> ShardIndex:
    """A :class:`ShardIndex` from a ``tfrecord``-package or DALI ``tfrecord2idx`` index file's text
    (``"offset length"`` per line, the length of the whole record). Blank lines are ignored.
    Records must be in order, not overlap, be at least a header and trailer long and, when ``size``
    (the shard's size) is given, lie inside the shard; otherwise
    :class:`~s3dlio.exceptions.CorruptShardError` names ``uri`` and the line number."""
    offs: list[int] = []
    lens: list[int] = []
    prev_end = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue

        def bad(why: str, lineno: int = lineno, line: str = line) -> CorruptShardError:
            return CorruptShardError(f"{uri}: index line {lineno}: {why}: {line.strip()!r}", uri=uri)

        if len(fields) != 2:
            raise bad("expected 'offset length'")
        try:
            off, length = int(fields[0]), int(fields[1])
        except ValueError:
            raise bad("not integers") from None
        if off < 0 or length < HEADER + TRAILER:
            raise bad(f"offset must be >= 0 and length >= {HEADER + TRAILER}")
        if off < prev_end:
            raise bad(f"record starts at byte {off}, before the previous one ends (byte {prev_end})")
        if size is not None and off + length > size:
            raise bad(f"record ends at byte {off + length}, past the end of the {size}-byte shard")
        offs.append(off)
        lens.append(length)
        prev_end = off + length
    return ShardIndex("tfrecord", np.array(offs, dtype=np.int64), np.array(lens, dtype=np.int64))


def format_index(index: ShardIndex) -> str:
    """The ``tfrecord`` package's index text for ``index`` (``"offset length\n"`` per record),
    readable by ``tfrecord.reader.tfrecord_loader(..., index_path=...)`` and DALI."""
    return "".join(f"{o} {n}\n" for o, n in zip(index.starts.tolist(), index.lengths.tolist(), strict=True))


def record_payload(buf: Any, uri: str, i: int) -> memoryview:
    """The payload of record ``i``, given ``buf`` holding exactly that whole record: a zero-copy
    memoryview of ``buf`` after checking the length against ``buf``'s size, the length CRC and the
    data CRC. Any mismatch raises :class:`~s3dlio.exceptions.CorruptShardError`."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    if n < HEADER + TRAILER:
        raise CorruptShardError(f"{uri}: record {i}: {n} bytes is shorter than a record's framing", uri=uri)
    length, lcrc = _LEN.unpack_from(mv, 0)
    if masked_crc32c(mv[:8]) != lcrc:
        raise CorruptShardError(f"{uri}: record {i}: length CRC mismatch", uri=uri)
    if length != n - HEADER - TRAILER:
        raise CorruptShardError(
            f"{uri}: record {i}: length field says {length} payload bytes, the range holds {n - HEADER - TRAILER}",
            uri=uri,
        )
    payload = mv[HEADER : n - TRAILER]
    (dcrc,) = _U32.unpack_from(mv, n - TRAILER)
    if masked_crc32c(payload) != dcrc:
        raise CorruptShardError(f"{uri}: record {i}: data CRC mismatch (corrupt payload)", uri=uri)
    return payload


def iter_records(data: Any, uri: str, verify: bool = True) -> Iterator[memoryview]:
    """Stream the payloads of a whole TFRecord shard as zero-copy memoryviews of ``data``. Length
    CRCs are always checked; data CRCs too unless ``verify=False``."""
    mv = memoryview(data).cast("B")
    for i, (off, length) in enumerate(_scan(mv, uri)):
        payload = mv[off + HEADER : off + HEADER + length]
        if verify:
            (dcrc,) = _U32.unpack_from(mv, off + HEADER + length)
            if masked_crc32c(payload) != dcrc:
                raise CorruptShardError(
                    f"{uri}: record {i} at byte {off}: data CRC mismatch (corrupt payload)", uri=uri
                )
        yield payload
