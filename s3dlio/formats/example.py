"""``tf.train.Example`` without TensorFlow: a minimal protobuf encoder and a pure-Python decoder.

The wire format (``tensorflow/core/example/example.proto`` and ``feature.proto``)::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     # entries: { string key = 1; Feature value = 2; }
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

:func:`encode_example` writes what ``tf.train.Example(...).SerializeToString()`` writes (packed
numeric lists, map entries in the order given); :func:`decode_example` reads packed and unpacked
numeric lists alike, as any protobuf parser must.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np

from ..exceptions import CorruptShardError

__all__ = ["FeatureValue", "decode_example", "encode_example"]

_Scalar: TypeAlias = bytes | bytearray | memoryview | str | int | float | np.integer | np.floating
FeatureValue: TypeAlias = _Scalar | Sequence[_Scalar] | np.ndarray
"""What one feature may be: bytes (or str, encoded UTF-8), an int, a float, a sequence of one of
those kinds, or a numpy array (integer or bool dtypes -> int64_list, floating -> float_list, bytes
dtypes -> bytes_list)."""

_BYTES, _FLOAT, _INT64 = 1, 2, 3  # Feature's oneof field numbers
_BLOBS = (bytes, bytearray, memoryview, str)


def _varint(n: int) -> bytes:
    """A protobuf varint; a negative int64 is its two's complement (ten bytes)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field: tag (wire type 2), length, payload."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _kind(value: FeatureValue) -> tuple[int, list[bytes] | list[int] | np.ndarray]:
    """(oneof field number, values) of one feature value."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BYTES, [bytes(value)]
    if isinstance(value, str):
        return _BYTES, [value.encode()]
    if isinstance(value, (bool, int, np.integer, np.bool_)):
        return _INT64, [int(value)]
    if isinstance(value, (float, np.floating)):
        return _FLOAT, np.array([value], dtype="<f4")
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        if kind in "iub":
            return _INT64, [int(v) for v in value.reshape(-1).astype(np.int64)]
        if kind == "f":
            return _FLOAT, value.reshape(-1).astype("<f4")
        if kind in "SO":
            return _BYTES, [v.encode() if isinstance(v, str) else bytes(v) for v in value.reshape(-1)]
        raise TypeError(f"a feature array must be of integer, float or bytes dtype, got {value.dtype}")
    if isinstance(value, Sequence):
        items = list(value)
        blobs = [v.encode() if isinstance(v, str) else bytes(v) for v in items if isinstance(v, _BLOBS)]
        if len(blobs) == len(items):  # also []
            return _BYTES, blobs
        if all(isinstance(v, (bool, int, np.integer, np.bool_)) for v in items):
            return _INT64, [int(v) for v in items]
        if all(isinstance(v, (bool, int, float, np.integer, np.floating)) for v in items):
            return _FLOAT, np.array(items, dtype="<f4")
        raise TypeError("a feature list must hold only bytes/str, only ints, or only numbers")
    raise TypeError(f"a feature must be bytes, str, int, float, a sequence or an array, got {type(value)}")


def _feature(value: FeatureValue) -> bytes:
    kind, values = _kind(value)
    if kind == _BYTES:
        body = b"".join(_ld(1, v) for v in values)  # type: ignore[arg-type]
    elif kind == _INT64:
        packed = b"".join(_varint(v) for v in values)  # type: ignore[arg-type]
        body = _ld(1, packed) if packed else b""
    else:
        packed = np.asarray(values, dtype="<f4").tobytes()
        body = _ld(1, packed) if packed else b""
    return _ld(kind, body)


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """A serialized ``tf.train.Example`` holding ``features`` (name -> value; see
    :data:`FeatureValue`), the bytes TensorFlow's own serializer writes for them up to the order
    of map entries (here: the mapping's order).

    >>> decode_example(encode_example({"data": b"abc", "label": 3}))["label"]
    array([3])
    """
    entries = b"".join(_ld(1, _ld(1, name.encode()) + _ld(2, _feature(v))) for name, v in features.items())
    return _ld(1, entries)


# --- decoding -------------------------------------------------------------------------------------


def _corrupt(what: str) -> CorruptShardError:
    return CorruptShardError(f"not a valid tf.train.Example: {what}")


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _corrupt("a truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start, end or varint value) of each field in ``buf[pos:end]``;
    for wire type 0 the 3rd item is the value, for the others (start, end) of the payload."""
    out = []
    while pos < end:
        tag, pos = _read_varint(buf, pos, end)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos, end)
            out.append((field, wire, value, pos))
        elif wire == 2:
            n, pos = _read_varint(buf, pos, end)
            if pos + n > end:
                raise _corrupt(f"field {field} runs past its message ({n} bytes at {pos}, end {end})")
            out.append((field, wire, pos, pos + n))
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise _corrupt("a truncated fixed32")
            out.append((field, wire, pos, pos + 4))
            pos += 4
        elif wire == 1:
            if pos + 8 > end:
                raise _corrupt("a truncated fixed64")
            out.append((field, wire, pos, pos + 8))
            pos += 8
        else:
            raise _corrupt(f"wire type {wire} of field {field}")
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: memoryview, start: int, end: int) -> list[memoryview] | np.ndarray:
    result: list[memoryview] | np.ndarray = []
    for kind, wire, a, b in _fields(buf, start, end):  # the last kind present wins (oneof)
        if wire != 2:
            continue
        if kind == _BYTES:
            result = [buf[s:e] for f, w, s, e in _fields(buf, a, b) if f == 1 and w == 2]
        elif kind == _FLOAT:
            floats: list[np.ndarray] = []
            for f, w, s, e in _fields(buf, a, b):
                if f == 1 and w == 2:  # packed
                    if (e - s) % 4:
                        raise _corrupt("a packed float list whose length is not a multiple of 4")
                    floats.append(np.frombuffer(buf[s:e], dtype="<f4"))
                elif f == 1 and w == 5:  # unpacked
                    floats.append(np.frombuffer(buf[s:e], dtype="<f4"))
            result = np.concatenate(floats).astype(np.float32) if floats else np.zeros(0, np.float32)
        elif kind == _INT64:
            ints: list[int] = []
            for f, w, s, e in _fields(buf, a, b):
                if f == 1 and w == 2:  # packed
                    pos = s
                    while pos < e:
                        v, pos = _read_varint(buf, pos, e)
                        ints.append(_signed(v))
                elif f == 1 and w == 0:  # unpacked: the 3rd item is the value
                    ints.append(_signed(s))
            result = np.array(ints, dtype=np.int64)
    return result


def decode_example(payload: bytes | bytearray | memoryview) -> dict[str, list[memoryview] | np.ndarray]:
    """The features of a serialized ``tf.train.Example``: name -> a list of memoryview slices of
    ``payload`` (bytes_list; zero-copy, they compare equal to bytes), an ``np.int64`` array
    (int64_list) or an ``np.float32`` array (float_list). A feature with no kind set decodes as an
    empty list. Raises :class:`~s3dlio.exceptions.CorruptShardError` on malformed input."""
    buf = memoryview(payload).cast("B")
    out: dict[str, list[memoryview] | np.ndarray] = {}
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if field != 1 or wire != 2:
            continue
        for f, w, s, e in _fields(buf, a, b):  # Features: map entries
            if f != 1 or w != 2:
                continue
            key, value = "", None
            for ef, ew, es, ee in _fields(buf, s, e):
                if ef == 1 and ew == 2:
                    key = bytes(buf[es:ee]).decode("utf-8", "surrogateescape")
                elif ef == 2 and ew == 2:
                    value = (es, ee)
            out[key] = _decode_feature(buf, *value) if value else []
    return out
