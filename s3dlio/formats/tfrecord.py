"""TFRecord framing: each record is ``length (u64 LE) | masked CRC32C of length (u32 LE) | data |
masked CRC32C of data (u32 LE)``."""

from __future__ import annotations

import struct

from .._core import crc32c as _crc32c

__all__ = ["HEADER", "TRAILER", "frame_record", "masked_crc32c"]

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
