"""NPY arrays and NPZ archives, decoded from bytes already fetched.

:func:`decode_npy` returns a zero-copy, read-only view of the buffer (NPY versions 1.0, 2.0 and
3.0; C and Fortran order). Pickled (object) arrays are refused: unpickling fetched data runs
arbitrary code.

:func:`decode_npz` reads a whole ``.npz`` (``np.savez`` / ``np.savez_compressed``) held in memory:
stored members come back as zero-copy views, deflated ones are decompressed (one copy, unavoidable).
Views of stored members are usually unaligned (zip puts no padding before a member's data);
numpy handles that, a framework that needs alignment copies.

For ranged reads of a large ``.npz`` on object storage, :func:`zip_members` parses the central
directory from the last bytes of the file only, and :func:`member_array` decodes one member from
just its byte range::

    offset = max(0, size - ZIP_TAIL_BYTES)
    while True:                            # at most three rounds; offset only decreases
        try:
            members = zip_members(get_range(uri, offset, size), size, uri)
            break
        except ZipTailTooShort as e:       # a directory (or zip64 record) before the tail
            offset = e.offset
    m = next(m for m in members if m.name == "x.npy")
    x = member_array(get_range(uri, m.header_offset, m.end), m, uri)
"""

from __future__ import annotations

import ast
import bisect
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..exceptions import CorruptShardError, InvalidConfigError, S3dlioError

__all__ = [
    "ZIP_TAIL_BYTES",
    "ZipMember",
    "ZipTailTooShort",
    "decode_npy",
    "decode_npz",
    "member_array",
    "member_data",
    "zip_members",
]

_NPY_MAGIC = b"\x93NUMPY"
# numpy.load refuses headers over 10,000 bytes (literal_eval of untrusted text); allow large
# structured dtypes, still bounded.
_MAX_HEADER = 1 << 20

_EOCD = struct.Struct("<IHHHHIIH")  # 22 bytes
_EOCD_SIG = 0x06054B50
_LOC64 = struct.Struct("<IIQI")  # 20 bytes
_LOC64_SIG = 0x07064B50
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # 56 bytes
_EOCD64_SIG = 0x06064B50
_CDIR = struct.Struct("<IHHHHHHIIIHHHHHII")  # 46 bytes
_CDIR_SIG = 0x02014B50
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # 30 bytes
_LOCAL_SIG = 0x04034B50

#: Bytes from the end of a zip that always hold its end-of-central-directory record and zip64
#: locator (longest comment 65,535 + 22 + 20). Fetching this many (or the whole file, if smaller)
#: finds the directory; a zip64 record or a central directory further back raises
#: :class:`ZipTailTooShort` with the offset to fetch from.
ZIP_TAIL_BYTES = 65535 + _EOCD.size + _LOC64.size


class ZipTailTooShort(S3dlioError):
    """The bytes given to :func:`zip_members` start after the zip's central directory (or zip64
    record). ``offset`` is the file offset to fetch from instead: call again with the bytes
    ``[offset, size)``."""

    offset: int

    def __init__(self, message: str, uri: str | None = None, offset: int = 0) -> None:
        super().__init__(message, uri=uri)
        self.offset = offset

    def __reduce__(self) -> Any:
        return (_rebuild_tail_too_short, (str(self), self.uri, self.offset))


def _rebuild_tail_too_short(message: str, uri: str | None, offset: int) -> ZipTailTooShort:
    return ZipTailTooShort(message, uri=uri, offset=offset)


def _where(uri: str | None) -> str:
    return uri if uri is not None else "<buffer>"


def decode_npy(buf: Any, uri: str | None = None) -> npt.NDArray[Any]:
    """The array of an NPY file held in ``buf``: a zero-copy, read-only view of ``buf``. Bad
    magic, a bad header or too few data bytes raise :class:`~s3dlio.exceptions.CorruptShardError`;
    an object (pickled) array raises :class:`~s3dlio.exceptions.InvalidConfigError`."""
    mv = memoryview(buf).cast("B")
    where = _where(uri)
    if len(mv) < 10 or mv[:6] != _NPY_MAGIC:
        raise CorruptShardError(f"{where}: not an NPY array (bad magic)", uri=uri)
    major = mv[6]
    if major == 1:
        (hlen,) = struct.unpack_from("<H", mv, 8)
        start = 10
    elif major in (2, 3):
        if len(mv) < 12:
            raise CorruptShardError(f"{where}: truncated NPY header", uri=uri)
        (hlen,) = struct.unpack_from("<I", mv, 8)
        start = 12
    else:
        raise CorruptShardError(f"{where}: unsupported NPY version {major}.{mv[7]}", uri=uri)
    offset = start + hlen
    if hlen > _MAX_HEADER:
        raise CorruptShardError(f"{where}: NPY header of {hlen} bytes (more than {_MAX_HEADER})", uri=uri)
    if offset > len(mv):
        raise CorruptShardError(f"{where}: truncated NPY header", uri=uri)
    try:
        text = bytes(mv[start:offset]).decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
        dtype = np.lib.format.descr_to_dtype(descr)
        shape = tuple(int(d) for d in shape)
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CorruptShardError(f"{where}: bad NPY header: {e}", uri=uri) from None
    if dtype.hasobject:
        raise InvalidConfigError(
            f"{where}: NPY array of dtype {dtype} holds pickled Python objects; s3dlio does not "
            "unpickle fetched data (it can run arbitrary code). Store numeric or fixed-size string "
            "arrays instead.",
            uri=uri,
        )
    count = 1
    for d in shape:
        count *= d
    if dtype.itemsize == 0 or count == 0:
        arr = np.zeros(shape, dtype=dtype)
    else:
        need = offset + count * dtype.itemsize
        if need > len(mv):
            raise CorruptShardError(
                f"{where}: truncated NPY data: {len(mv)} bytes, the header needs {need}", uri=uri
            )
        flat = np.frombuffer(mv, dtype=dtype, count=count, offset=offset)
        arr = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class ZipMember:
    """One member of a zip's central directory. ``end`` is where its region ends (the next
    member's local header, or the central directory), so ``[header_offset, end)`` is one ranged
    read holding its local header and data; ``method`` is 0 (stored) or 8 (deflated)."""

    name: str
    header_offset: int
    compressed_size: int
    size: int
    method: int
    crc32: int = 0
    flags: int = 0
    end: int = 0


def _find_eocd(mv: memoryview) -> int:
    """Position in ``mv`` of the end-of-central-directory record (searching back over a comment),
    or -1."""
    # COPY: at most ZIP_TAIL_BYTES, to search with bytes.rfind.
    data = mv.tobytes() if len(mv) <= ZIP_TAIL_BYTES else mv[len(mv) - ZIP_TAIL_BYTES :].tobytes()
    base = len(mv) - len(data)
    pos = len(data)
    while True:
        pos = data.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            return -1
        if pos + _EOCD.size <= len(data):
            (comment_len,) = struct.unpack_from("<H", data, pos + 20)
            if pos + _EOCD.size + comment_len == len(data):
                return base + pos


def _directory(mv: memoryview, base: int, size: int, uri: str | None) -> list[ZipMember]:
    """Members of the zip whose bytes ``[base, size)`` are ``mv``."""
    where = _where(uri)
    e = _find_eocd(mv)
    if e < 0:
        if base > 0 and len(mv) < ZIP_TAIL_BYTES:
            offset = max(0, size - ZIP_TAIL_BYTES)
            raise ZipTailTooShort(
                f"{where}: no end-of-central-directory record in the last {len(mv)} bytes; "
                f"fetch from byte {offset}",
                uri=uri,
                offset=offset,
            )
        raise CorruptShardError(f"{where}: not a zip (no end-of-central-directory record)", uri=uri)
    if e < _LOC64.size and base > 0:
        # A zip64 locator would sit just before the record, outside the bytes given.
        offset = max(0, base + e - _LOC64.size)
        raise ZipTailTooShort(
            f"{where}: the bytes given start too close to the end-of-central-directory record; "
            f"fetch from byte {offset}",
            uri=uri,
            offset=offset,
        )
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(mv, e)
    cd_end_abs = base + e  # where the central directory (or the zip64 record) ends
    if e >= _LOC64.size:
        sig, _, z64_off, _ = _LOC64.unpack_from(mv, e - _LOC64.size)
        if sig == _LOC64_SIG:
            rec = z64_off - base
            if rec < 0:
                raise ZipTailTooShort(
                    f"{where}: the zip64 record at byte {z64_off} lies before the {size - base} bytes given",
                    uri=uri,
                    offset=z64_off,
                )
            if rec + _EOCD64.size > len(mv):
                raise CorruptShardError(f"{where}: zip64 record at byte {z64_off} runs past the end", uri=uri)
            sig64, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset = _EOCD64.unpack_from(mv, rec)
            if sig64 != _EOCD64_SIG:
                raise CorruptShardError(f"{where}: bad zip64 record signature at byte {z64_off}", uri=uri)
            cd_end_abs = z64_off
    if disk != 0 or cd_disk != 0:
        raise CorruptShardError(f"{where}: multi-disk zip archives are not supported", uri=uri)
    # Bytes prepended to the archive shift every offset (zipfile calls this "concat").
    cd_abs = cd_end_abs - cd_size
    concat = cd_abs - cd_offset
    if cd_abs < 0 or concat < 0:
        raise CorruptShardError(f"{where}: zip central directory offset/size out of range", uri=uri)
    p = cd_abs - base
    if p < 0:
        raise ZipTailTooShort(
            f"{where}: the zip central directory starts at byte {cd_abs}, before the "
            f"{size - base} bytes given",
            uri=uri,
            offset=cd_abs,
        )
    members: list[ZipMember] = []
    stop = p + cd_size
    for k in range(entries):
        if p + _CDIR.size > stop:
            raise CorruptShardError(f"{where}: zip central directory entry {k} truncated", uri=uri)
        (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _, hoff) = (
            _CDIR.unpack_from(mv, p)
        )
        if sig != _CDIR_SIG:
            raise CorruptShardError(
                f"{where}: bad zip central directory entry {k} at byte {base + p}", uri=uri
            )
        raw_name = mv[p + _CDIR.size : p + _CDIR.size + nlen].tobytes()
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        x = p + _CDIR.size + nlen
        xend = x + xlen
        while x + 4 <= xend:
            hid, hlen = struct.unpack_from("<HH", mv, x)
            if hid == 0x0001:
                q = x + 4
                if usize == 0xFFFFFFFF:
                    (usize,) = struct.unpack_from("<Q", mv, q)
                    q += 8
                if csize == 0xFFFFFFFF:
                    (csize,) = struct.unpack_from("<Q", mv, q)
                    q += 8
                if hoff == 0xFFFFFFFF:
                    (hoff,) = struct.unpack_from("<Q", mv, q)
            x += 4 + hlen
        members.append(ZipMember(name, hoff + concat, csize, usize, method, crc, flags))
        p = xend + clen
    # Each member's region ends where the next local header (or the central directory) starts.
    bounds = sorted({m.header_offset for m in members} | {cd_abs})
    out: list[ZipMember] = []
    for m in members:
        nxt = bounds[min(bisect.bisect_right(bounds, m.header_offset), len(bounds) - 1)]
        out.append(
            ZipMember(m.name, m.header_offset, m.compressed_size, m.size, m.method, m.crc32, m.flags, nxt)
        )
    return out


def zip_members(tail: Any, size: int, uri: str | None = None) -> list[ZipMember]:
    """The central directory of a ``size``-byte zip, parsed from ``tail``, its last bytes (fetch
    ``min(size, ZIP_TAIL_BYTES)`` or more). Zip64 archives are read through their locator and
    zip64 extra fields. When the central directory (or the zip64 record) starts before ``tail``,
    raises :class:`ZipTailTooShort` whose ``offset`` (always before the bytes given) says where
    to fetch from, as it does for a tail too short to hold the end record and zip64 locator; a
    damaged directory raises :class:`~s3dlio.exceptions.CorruptShardError`."""
    mv = memoryview(tail).cast("B")
    if len(mv) > size:
        raise InvalidConfigError(f"{_where(uri)}: {len(mv)} tail bytes for a {size}-byte file", uri=uri)
    return _directory(mv, size - len(mv), size, uri)


def member_data(buf: Any, member: ZipMember, uri: str | None = None, verify: bool = True) -> memoryview:
    """The uncompressed data of ``member``, given ``buf`` holding the zip's bytes from
    ``member.header_offset`` on (at least to the end of its data). Stored members are a zero-copy
    slice of ``buf``, deflated ones a new buffer. The local header is parsed for the data offset
    (its name and extra lengths may differ from the central directory's). With ``verify`` the
    data's CRC-32 is checked."""
    mv = memoryview(buf).cast("B")
    where = f"{_where(uri)}: zip member {member.name!r}"
    if len(mv) < _LOCAL.size:
        raise CorruptShardError(f"{where}: truncated local header", uri=uri)
    sig, _, flags, _, _, _, _, _, _, nlen, xlen = _LOCAL.unpack_from(mv, 0)
    if sig != _LOCAL_SIG:
        raise CorruptShardError(f"{where}: bad local header at byte {member.header_offset}", uri=uri)
    if (flags | member.flags) & 1:
        raise InvalidConfigError(f"{where}: encrypted zip members are not supported", uri=uri)
    start = _LOCAL.size + nlen + xlen
    end = start + member.compressed_size
    if end > len(mv):
        raise CorruptShardError(
            f"{where}: truncated data ({len(mv) - start} of {member.compressed_size} bytes)", uri=uri
        )
    raw = mv[start:end]
    if member.method == 0:
        out = raw
    elif member.method == 8:
        try:
            out = memoryview(zlib.decompress(raw, -15, member.size or zlib.DEF_BUF_SIZE))
        except zlib.error as e:
            raise CorruptShardError(f"{where}: bad deflate data: {e}", uri=uri) from None
    else:
        raise InvalidConfigError(
            f"{where}: compression method {member.method} is not supported (stored and deflate are)", uri=uri
        )
    if len(out) != member.size:
        raise CorruptShardError(f"{where}: {len(out)} bytes, the directory says {member.size}", uri=uri)
    if verify and zlib.crc32(out) != member.crc32:
        raise CorruptShardError(f"{where}: CRC-32 mismatch (corrupt data)", uri=uri)
    return out


def member_array(
    buf: Any, member: ZipMember, uri: str | None = None, verify: bool = True
) -> npt.NDArray[Any]:
    """The array of NPY ``member`` (see :func:`member_data` for ``buf``): zero-copy for stored
    members. Data that is not NPY comes back as a ``uint8`` array of its bytes (``numpy.load``
    returns ``bytes`` there)."""
    data = member_data(buf, member, uri, verify)
    if data[:6] == _NPY_MAGIC:
        return decode_npy(data, uri=f"{_where(uri)}: {member.name}")
    arr = np.frombuffer(data, dtype=np.uint8)
    arr.flags.writeable = False
    return arr


def decode_npz(buf: Any, uri: str | None = None, verify: bool = True) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a whole ``.npz`` held in ``buf``, keyed as ``numpy.load`` keys them (member
    names without ``.npy``): zero-copy read-only views for stored members (``np.savez``),
    decompressed for deflated ones (``np.savez_compressed``). With ``verify`` each member's CRC-32
    is checked. Directory entries are skipped."""
    mv = memoryview(buf).cast("B")
    out: dict[str, npt.NDArray[Any]] = {}
    for m in _directory(mv, 0, len(mv), uri):
        if m.name.endswith("/"):
            continue
        key = m.name[:-4] if m.name.endswith(".npy") else m.name
        out[key] = member_array(mv[m.header_offset :], m, uri, verify)
    return out
