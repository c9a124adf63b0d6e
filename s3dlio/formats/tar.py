"""WebDataset tar shards: index a whole shard from its tar headers, then decode any sample from
just its byte range; or stream the samples of a shard in order.

Parsing matches what ``webdataset`` (1.0: ``tar_file_iterator`` + ``group_by_keys``) yields over
Python's ``tarfile``:

- ustar headers, with the ustar ``prefix`` field prepended to the name (as ``tarfile`` does, for
  every type but GNU's ``L``/``K``/``S``); GNU long names (``L``); pax extended headers (``x``),
  whose ``path`` (trailing slashes stripped, as ``tarfile`` does) and ``size`` override
  the next member's; global pax headers (``g``) are skipped.
  Names are UTF-8 (undecodable bytes kept with ``surrogateescape``, as ``tarfile`` does on Linux).
- only regular members (types ``0``, NUL, ``7``) are samples' files; directories (and the old V7
  "regular file whose name ends in /"), links, devices and FIFOs are skipped.
- a member whose name matches ``__[^/]*__($|/)`` (webdataset's ``skip_meta``, e.g. ``__meta__``)
  is skipped.
- key and extension come from webdataset's ``base_plus_ext`` regex ``^((?:.*/|)[^.]+)[.]([^/]*)$``:
  ``"a/b/000123.seg.png"`` is key ``"a/b/000123"``, extension ``"seg.png"``; a name with no
  dot in its base name (``"README"``) or a base name that starts with a dot (``".hidden.txt"``)
  does not match and is skipped. Extensions are lower-cased.
- consecutive members with one key form one sample; a key that reappears later starts a new
  sample. Two members of one sample with the same extension are an error (webdataset raises
  ``ValueError``; here :class:`~s3dlio.exceptions.CorruptShardError`).
- the archive ends at the first all-zero header block (as ``tarfile`` does) or at the end of the
  data on a block boundary.

Stricter than ``tarfile``, which silently stops at a header that does not parse: a bad header
checksum, a header cut short, or member data running past the end raise
:class:`~s3dlio.exceptions.CorruptShardError` naming the shard and the byte offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..exceptions import CorruptShardError, InvalidConfigError
from .index import ShardIndex

__all__ = ["decode_wds", "index_wds", "iter_wds", "split_key"]

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = frozenset((b"0", b"\0", b"7"))
# Types whose data tarfile does not skip (it trusts their size to be 0): links, devices, dirs, FIFOs.
_NO_DATA = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))
_GNU_TYPES = frozenset((b"L", b"K", b"S"))
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$", re.DOTALL)
_META_RE = re.compile(r"__[^/]*__($|/)")


def split_key(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a member name, as webdataset's ``base_plus_ext`` splits it (the
    extension lower-cased), or ``None`` for a name webdataset skips (meta or no extension)."""
    if _META_RE.match(name):
        return None
    m = _KEY_RE.match(name)
    if m is None:
        return None
    return m.group(1), m.group(2).lower()


def _nts(b: bytes) -> str:
    p = b.find(b"\0")
    if p != -1:
        b = b[:p]
    return b.decode("utf-8", "surrogateescape")


def _nti(b: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80 or 0xff)."""
    if b[0] in (0x80, 0xFF):
        n = int.from_bytes(b[1:], "big")
        if b[0] == 0xFF:
            n = -(256 ** (len(b) - 1) - n)
        return n
    p = b.find(b"\0")
    if p != -1:
        b = b[:p]
    return int(b.strip() or b"0", 8)


def _checksum_ok(h: bytes, chksum: int) -> bool:
    """Whether ``chksum`` is the header's unsigned or (old tars) signed byte sum, the chksum field
    counted as spaces, as ``tarfile`` accepts."""
    unsigned = sum(h) - sum(h[148:156]) + 256
    if chksum == unsigned:
        return True
    high = sum(1 for c in h[:148] if c > 127) + sum(1 for c in h[156:] if c > 127)
    return chksum == unsigned - 256 * high


def _parse_pax(data: bytes, uri: str, off: int) -> dict[str, str]:
    """The ``key=value`` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        sp = data.find(b" ", pos)
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise CorruptShardError(f"{uri}: bad pax header record at byte {off}", uri=uri) from None
        rec = data[sp + 1 : pos + length]
        if sp == -1 or length <= 0 or pos + length > len(data) or not rec.endswith(b"\n") or b"=" not in rec:
            raise CorruptShardError(f"{uri}: bad pax header record at byte {off}", uri=uri)
        k, _, v = rec[:-1].partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _members(data: Any, uri: str) -> Iterator[tuple[str, int, int]]:
    """``(name, data_offset, size)`` of each regular member, in archive order."""
    mv = memoryview(data).cast("B")
    end = len(mv)
    off = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while off < end:
        if off + BLOCK > end:
            raise CorruptShardError(
                f"{uri}: truncated tar: header at byte {off} cut short ({end - off} of {BLOCK} bytes)",
                uri=uri,
            )
        h = mv[off : off + BLOCK].tobytes()
        if h == _ZERO_BLOCK:
            return
        try:
            chksum = _nti(h[148:156])
            size = _nti(h[124:136])
        except ValueError:
            raise CorruptShardError(f"{uri}: bad tar header at byte {off}: not a number", uri=uri) from None
        if not _checksum_ok(h, chksum):
            raise CorruptShardError(f"{uri}: bad tar header checksum at byte {off}", uri=uri)
        typ = h[156:157]
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise CorruptShardError(f"{uri}: bad pax size at byte {off}", uri=uri) from None
        if size < 0:
            raise CorruptShardError(f"{uri}: negative member size in tar header at byte {off}", uri=uri)
        start = off + BLOCK
        skip = 0 if typ in _NO_DATA else size
        if start + skip > end:
            raise CorruptShardError(
                f"{uri}: truncated tar: member at byte {off} needs {skip} data bytes, {end - start} remain",
                uri=uri,
            )
        nxt = start + (skip + BLOCK - 1) // BLOCK * BLOCK
        if typ == b"L":
            long_name = _nts(mv[start : start + size].tobytes())
        elif typ == b"x":
            pax = _parse_pax(mv[start : start + size].tobytes(), uri, off)
        elif typ == b"g" or typ == b"K":
            pass
        elif typ == b"S":
            raise CorruptShardError(f"{uri}: GNU sparse tar member at byte {off} is not supported", uri=uri)
        else:
            name = _nts(h[0:100])
            prefix = _nts(h[345:500])
            if prefix and typ not in _GNU_TYPES:
                name = prefix + "/" + name
            if long_name is not None:
                name = long_name
            if "path" in pax:
                name = pax["path"].rstrip("/")  # as tarfile applies it
            long_name = None
            pax = {}
            if typ in _REGULAR and not (typ == b"\0" and name.endswith("/")):
                yield name, start, size
        off = nxt


def _samples(data: Any, uri: str) -> Iterator[tuple[str, list[tuple[str, int, int]]]]:
    """``(key, [(ext, data_offset, size), ...])`` of each sample, in shard order."""
    key: str | None = None
    group: list[tuple[str, int, int]] = []
    seen: set[str] = set()
    for name, start, size in _members(data, uri):
        ks = split_key(name)
        if ks is None:
            continue
        k, ext = ks
        if k != key:
            if key is not None:
                yield key, group
            key, group, seen = k, [], set()
        if ext in seen:
            raise CorruptShardError(
                f"{uri}: duplicate file name in tar: {name!r} (member data at byte {start}): "
                f"sample {k!r} already has {ext!r}",
                uri=uri,
            )
        seen.add(ext)
        group.append((ext, start, size))
    if key is not None:
        yield key, group


def index_wds(data: Any, uri: str) -> ShardIndex:
    """Index a whole WebDataset tar shard held in ``data`` (any bytes-like object): one sample per
    run of consecutive members sharing a key, each sample's range covering its members' data."""
    keys: list[str] = []
    starts: list[int] = []
    lengths: list[int] = []
    ptr = [0]
    m_ext: list[int] = []
    m_off: list[int] = []
    m_size: list[int] = []
    ext_ids: dict[str, int] = {}
    for key, group in _samples(data, uri):
        first = group[0][1]
        last = max(s + n for _, s, n in group)
        keys.append(key)
        starts.append(first)
        lengths.append(last - first)
        for ext, s, n in group:
            eid = ext_ids.get(ext)
            if eid is None:
                eid = ext_ids[ext] = len(ext_ids)
            m_ext.append(eid)
            m_off.append(s - first)
            m_size.append(n)
        ptr.append(len(m_ext))
    return ShardIndex(
        "wds",
        np.array(starts, dtype=np.int64),
        np.array(lengths, dtype=np.int64),
        keys=keys,
        member_ptr=np.array(ptr, dtype=np.int64),
        member_ext=np.array(m_ext, dtype=np.int32),
        member_off=np.array(m_off, dtype=np.int64),
        member_size=np.array(m_size, dtype=np.int64),
        exts=list(ext_ids),
    )


def decode_wds(buf: Any, index: ShardIndex, i: int, uri: str | None = None) -> dict[str, Any]:
    """Sample ``i`` of a WebDataset shard from ``buf``, which holds exactly the bytes of its range
    ``[index.starts[i], index.starts[i] + index.lengths[i])``: ``{"__key__": key, ext: data}``,
    each ``data`` a zero-copy memoryview slice of ``buf``. A buffer of another size raises
    :class:`~s3dlio.exceptions.CorruptShardError`."""
    if index.format != "wds" or index.keys is None:
        raise InvalidConfigError(f"{uri}: decode_wds needs a 'wds' index, got {index!r}", uri=uri)
    ptr, ext, off, size, exts = index.members()
    if not 0 <= i < len(index):
        raise IndexError(f"{uri}: sample {i} out of range for a shard of {len(index)} samples")
    mv = memoryview(buf).cast("B")
    want = int(index.lengths[i])
    if len(mv) != want:
        raise CorruptShardError(
            f"{uri}: sample {i} ({index.keys[i]!r}): got {len(mv)} bytes, its range is {want}", uri=uri
        )
    out: dict[str, Any] = {"__key__": index.keys[i]}
    lo, hi = int(ptr[i]), int(ptr[i + 1])
    for e, o, n in zip(ext[lo:hi].tolist(), off[lo:hi].tolist(), size[lo:hi].tolist(), strict=True):
        out[exts[e]] = mv[o : o + n]
    return out


def iter_wds(data: Any, uri: str) -> Iterator[dict[str, Any]]:
    """Stream the samples of a whole WebDataset shard in order, shaped as :func:`decode_wds`
    returns them (memoryview slices of ``data``)."""
    mv = memoryview(data).cast("B")
    for key, group in _samples(mv, uri):
        sample: dict[str, Any] = {"__key__": key}
        for ext, s, n in group:
            sample[ext] = mv[s : s + n]
        yield sample
