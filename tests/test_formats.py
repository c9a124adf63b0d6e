"""s3dlio.formats: WebDataset tar, TFRecord, NPY/NPZ and HDF5 parsing, indexing and decoding,
checked against the real libraries that write and read those formats (tarfile, webdataset,
tfrecord, numpy, zipfile, h5py, Pillow). Pure Python, no server."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3dlio
from helpers import require
from s3dlio.exceptions import CorruptShardError, InvalidConfigError
from s3dlio.formats.decoders import Decoder, decode_field, decode_sample, make_decoder
from s3dlio.formats.hdf5 import decode_row, row_layout
from s3dlio.formats.index import ShardIndex
from s3dlio.formats.npy import (
    ZIP_TAIL_BYTES,
    ZipMember,
    ZipTailTooShort,
    decode_npy,
    decode_npz,
    member_array,
    zip_members,
)
from s3dlio.formats.tar import decode_wds, index_wds, iter_wds, split_key
from s3dlio.formats.tfrecord import (
    HEADER,
    TRAILER,
    format_index,
    frame_record,
    index_tfrecord,
    iter_records,
    parse_index,
    record_payload,
)


def shares(view: Any, base: Any) -> bool:
    """Whether ``view`` (memoryview or array) points into ``base``'s memory."""
    a = view if isinstance(view, np.ndarray) else np.frombuffer(view, dtype=np.uint8)
    return bool(np.shares_memory(a, np.frombuffer(base, dtype=np.uint8)))


# --- WebDataset tar -----------------------------------------------------------------------------


def wds_reference(path: Path) -> list[dict[str, Any]]:
    """What webdataset itself yields for a tar shard (its tar iterator + key grouping)."""
    wtar = require("webdataset.tariterators")
    with open(path, "rb") as f:
        files = wtar.tar_file_expander([{"url": str(path), "stream": f}])
        out = []
        for s in wtar.group_by_keys(files):
            out.append({k: v for k, v in s.items() if k not in ("__url__", "__local_path__")})
        return out


def as_plain(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k.startswith("__") else bytes(v) for k, v in sample.items()}


def slice_sample(data: bytes, index: ShardIndex, i: int) -> memoryview:
    s, n = int(index.starts[i]), int(index.lengths[i])
    return memoryview(data)[s : s + n]


def check_against_webdataset(path: Path) -> ShardIndex:
    """index_wds + decode_wds and iter_wds give exactly webdataset's samples."""
    data = path.read_bytes()
    ref = wds_reference(path)
    index = index_wds(data, str(path))
    assert len(index) == len(ref)
    assert index.keys == [r["__key__"] for r in ref]
    for i, r in enumerate(ref):
        assert as_plain(decode_wds(slice_sample(data, index, i), index, i)) == r
    assert [as_plain(s) for s in iter_wds(data, str(path))] == ref
    return index


def test_wds_tarwriter_shard_matches_webdataset(tmp_path: Path) -> None:
    """Samples written by webdataset.TarWriter (directory keys, multi-dot extensions) index and
    decode to what webdataset reads; each range covers its members."""
    wds = require("webdataset")
    path = tmp_path / "shard-000000.tar"
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(path)) as w:
        for i in range(20):
            w.write(
                {
                    "__key__": f"train/part{i % 3}/{i:06d}",
                    "seg.png": rng.bytes(int(rng.integers(0, 3000))),
                    "cls": str(i).encode(),
                    "json": json.dumps({"i": i}).encode(),
                }
            )
    index = check_against_webdataset(path)
    assert index.format == "wds" and len(index) == 20
    assert index.keys is not None and index.keys[3] == "train/part0/000003"
    assert index.exts is not None and sorted(index.exts) == ["cls", "json", "seg.png"]
    ptr, _, off, size, _ = index.members()
    for i in range(len(index)):
        lo, hi = int(ptr[i]), int(ptr[i + 1])
        assert hi - lo == 3
        assert off[lo] == 0  # the range starts at the first member's data
        assert int(off[hi - 1] + size[hi - 1]) == int(index.lengths[i])  # and ends at the last's end
    assert ShardIndex.from_bytes(index.to_bytes()).keys == index.keys


def add(tf: tarfile.TarFile, name: str, data: bytes = b"", typ: bytes = tarfile.REGTYPE) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.size = len(data) if typ == tarfile.REGTYPE else 0
    if typ == tarfile.SYMTYPE:
        ti.linkname = "elsewhere"
    tf.addfile(ti, io.BytesIO(data) if typ == tarfile.REGTYPE else None)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_wds_skips_what_webdataset_skips(tmp_path: Path, fmt: int) -> None:
    """Directories, symlinks, __meta__ files, names without an extension and dot-files are
    skipped; a key that reappears later starts a new sample; extensions are lower-cased; long
    names (ustar prefix, GNU 'L', pax path) keep their directory in the key."""
    path = tmp_path / "mixed.tar"
    deep = "d" * 60 + "/" + "e" * 60 + "/" + "sample"
    with tarfile.open(path, "w", format=fmt) as tf:
        add(tf, "dir", typ=tarfile.DIRTYPE)
        add(tf, "__meta__", b"meta")
        add(tf, "__index__/x.json", b"{}")
        add(tf, "README", b"no extension")
        add(tf, ".hidden.txt", b"dot file")
        add(tf, "dir/a.JPG", b"A-jpg")
        add(tf, "dir/a.cls", b"1")
        add(tf, "link.txt", typ=tarfile.SYMTYPE)
        add(tf, "b.txt", b"b")
        add(tf, "dir/a.txt", b"a again")
        add(tf, deep + ".tar.gz", b"deep")
        add(tf, "x.y/z.w.npy", b"np")
        if fmt != tarfile.USTAR_FORMAT:
            add(tf, "f" * 120 + "/" + "g" * 120 + ".bin", b"very long")
            add(tf, "ünïcödé/日本.txt", b"text")
    index = check_against_webdataset(path)
    assert index.keys is not None
    assert index.keys[:5] == ["dir/a", "b", "dir/a", deep, "x.y/z"]
    first = decode_wds(slice_sample(path.read_bytes(), index, 0), index, 0)
    assert set(first) == {"__key__", "jpg", "cls"}
    if fmt != tarfile.USTAR_FORMAT:
        assert index.keys[5:] == ["f" * 120 + "/" + "g" * 120, "ünïcödé/日本"]


def test_wds_zero_copy_on_a_buffer(tmp_path: Path) -> None:
    """decode_wds on a ranged s3dlio.Buffer and iter_wds on a whole one return memoryview slices
    of the Buffer itself, no copies."""
    wds = require("webdataset")
    path = tmp_path / "z.tar"
    with wds.TarWriter(str(path)) as w:
        for i in range(4):
            w.write({"__key__": f"{i:04d}", "bin": os.urandom(1000 + i), "cls": b"7"})
    uri = path.as_uri()
    whole = s3dlio.get(uri)
    index = index_wds(whole, uri)
    for i in range(len(index)):
        buf = s3dlio.get_range(uri, int(index.starts[i]), int(index.lengths[i]))
        sample = decode_wds(buf, index, i)
        assert isinstance(sample["bin"], memoryview) and sample["bin"].readonly
        assert sample["bin"].obj is buf and shares(sample["bin"], buf)
        assert len(sample["bin"]) == 1000 + i and bytes(sample["cls"]) == b"7"
    for sample in iter_wds(whole, uri):
        assert sample["bin"].obj is whole


def test_wds_decode_rejects_a_buffer_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "w.tar"
    with tarfile.open(path, "w") as tf:
        add(tf, "a.bin", b"x" * 100)
    data = path.read_bytes()
    index = index_wds(data, "s3://b/w.tar")
    with pytest.raises(CorruptShardError, match=r"sample 0 .*99 bytes.* 100"):
        decode_wds(slice_sample(data, index, 0)[:99], index, 0, uri="s3://b/w.tar")
    with pytest.raises(IndexError, match="sample 1 out of range"):
        decode_wds(slice_sample(data, index, 0), index, 1)
    with pytest.raises(InvalidConfigError, match="needs a 'wds' index"):
        decode_wds(b"", ShardIndex("tfrecord", np.zeros(1), np.zeros(1)), 0)


def make_tar(members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt) as tf:
        for name, data in members:
            add(tf, name, data)
    return b.getvalue()


def test_wds_truncated_shard_is_corrupt() -> None:
    """A shard cut in a member's data or in a header raises CorruptShardError naming the shard and
    the byte offset; a shard ending on a header boundary is read up to there, as tarfile does."""
    data = make_tar([(f"{i:03d}.bin", bytes(700)) for i in range(4)])
    uri = "s3://bucket/train-0001.tar"
    with pytest.raises(
        CorruptShardError, match=r"s3://bucket/train-0001\.tar: truncated tar: member at byte 1536"
    ) as e:
        index_wds(data[:2500], uri)
    assert e.value.uri == uri
    with pytest.raises(CorruptShardError, match=r"header at byte 1536 cut short"):
        index_wds(data[: 1536 + 100], uri)
    with pytest.raises(CorruptShardError):
        list(iter_wds(data[:2500], uri))
    assert index_wds(data[:1536], uri).keys == ["000"]


def test_wds_bad_header_checksum_is_corrupt() -> None:
    data = bytearray(make_tar([("a.bin", bytes(10)), ("b.bin", bytes(10))]))
    data[1024 + 5] ^= 0x01  # in the second header's name
    with pytest.raises(CorruptShardError, match=r"shard\.tar: bad tar header checksum at byte 1024"):
        index_wds(bytes(data), "shard.tar")


def test_wds_duplicate_extension_in_a_sample_is_corrupt() -> None:
    """webdataset raises ValueError on two members with one key and extension in a row."""
    data = make_tar([("a.txt", b"1"), ("a.txt", b"2")])
    with pytest.raises(CorruptShardError, match=r"duplicate file name.*'a\.txt'"):
        index_wds(data, "dup.tar")


def test_wds_empty_and_pax_size_override() -> None:
    """An empty archive has no samples; a pax 'size' record overrides the header's size field."""
    assert len(index_wds(make_tar([]), "empty.tar")) == 0
    assert len(index_wds(b"", "empty.tar")) == 0

    def header(name: bytes, size: int, typ: bytes) -> bytes:
        h = bytearray(512)
        h[0 : len(name)] = name
        h[100:108] = b"0000644\0"
        h[124:136] = b"%011o\0" % size
        h[156:157] = typ
        h[257:265] = b"ustar\x0000"
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)

    rec = b"12 size=300\n"
    pax = header(b"PaxHeader", len(rec), b"x") + rec.ljust(512, b"\0")
    body = os.urandom(300)
    data = pax + header(b"k.bin", 0, b"0") + body.ljust(512, b"\0") + bytes(1024)
    assert [bytes(s["bin"]) for s in iter_wds(data, "pax.tar")] == [body]
    # A GNU base-256 size field (tarfile writes those for members of 8 GiB and more).
    gnu = bytearray(header(b"g.bin", 0, b"0"))
    gnu[124:136] = b"\x80" + (5).to_bytes(11, "big")
    gnu[148:156] = b" " * 8
    gnu[148:156] = b"%06o\0 " % sum(gnu)
    gnu_tar = bytes(gnu) + b"hello".ljust(512, b"\0") + bytes(1024)
    assert [bytes(s["bin"]) for s in iter_wds(gnu_tar, "gnu.tar")] == [b"hello"]
    with tarfile.open(fileobj=io.BytesIO(data)) as ref:
        assert ref.getmembers()[0].size == 300  # tarfile reads the same


def test_split_key_is_webdatasets_base_plus_ext() -> None:
    wtar = require("webdataset.tariterators")
    for name in ["a/b/000123.seg.png", "x.JPG", "README", ".hidden.txt", "a/.b.c", "a.b/c", "a.b/c.d"]:
        prefix, suffix = wtar.base_plus_ext(name)
        expect = None if prefix is None else (prefix, suffix.lower())
        assert split_key(name) == expect, name
    assert split_key("__meta__") is None and split_key("__x__/y.txt") is None


names = st.text(alphabet="ab./_-xyzé", min_size=1, max_size=12).filter(lambda s: not s.startswith("/"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.lists(st.tuples(names, st.integers(0, 1500)), min_size=0, max_size=12),
    fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
)
def test_wds_property_random_members_round_trip(
    tmp_path_factory: pytest.TempPathFactory, members: list[tuple[str, int]], fmt: int
) -> None:
    """Random member names and sizes written by tarfile: index_wds groups them as webdataset
    does (or both refuse a duplicate), and every member's bytes come back from its range."""
    path = tmp_path_factory.mktemp("prop") / "p.tar"
    contents = [(n, bytes([i % 251]) * size) for i, (n, size) in enumerate(members)]
    path.write_bytes(make_tar(contents, fmt))
    try:
        ref = wds_reference(path)
    except ValueError:
        with pytest.raises(CorruptShardError, match="duplicate"):
            index_wds(path.read_bytes(), str(path))
        return
    index = check_against_webdataset(path)
    assert ShardIndex.from_bytes(index.to_bytes()).keys == [r["__key__"] for r in ref]


# --- ShardIndex ---------------------------------------------------------------------------------


def test_shard_index_round_trips_and_rejects_garbage() -> None:
    data = make_tar([("ü/1.jpg", b"abc"), ("ü/1.cls", b"1"), ("2.jpg", b"de")])
    index = index_wds(data, "s.tar")
    again = ShardIndex.from_bytes(index.to_bytes(), uri="s.tar.idx")
    assert again.format == "wds" and again.keys == ["ü/1", "2"] and again.exts == index.exts
    for name in ("starts", "lengths", "member_ptr", "member_ext", "member_off", "member_size"):
        assert np.array_equal(getattr(again, name), getattr(index, name)), name
    assert again.member_ext is not None and again.member_ext.dtype == np.int32
    unpickled = pickle.loads(pickle.dumps(index))  # crosses spawn workers
    assert unpickled.keys == index.keys and np.array_equal(unpickled.member_off, index.member_off)
    tf = ShardIndex("tfrecord", np.array([0, 30]), np.array([30, 40]))
    tf2 = ShardIndex.from_bytes(memoryview(tf.to_bytes()))
    assert tf2.format == "tfrecord" and tf2.keys is None and tf2.member_ptr is None
    assert tf2.lengths.tolist() == [30, 40] and len(tf2) == 2

    blob = bytearray(index.to_bytes())
    with pytest.raises(CorruptShardError, match=r"cache/s\.idx: .*bad magic") as e:
        ShardIndex.from_bytes(b"garbage" * 10, uri="cache/s.idx")
    assert e.value.uri == "cache/s.idx"
    bumped = bytearray(blob)
    bumped[8] = 99  # version
    with pytest.raises(CorruptShardError, match="unknown version 99"):
        ShardIndex.from_bytes(bytes(bumped), uri="x")
    flipped = bytearray(blob)
    flipped[40] ^= 0xFF
    with pytest.raises(CorruptShardError, match="checksum mismatch"):
        ShardIndex.from_bytes(bytes(flipped), uri="x")
    with pytest.raises(CorruptShardError):
        ShardIndex.from_bytes(bytes(blob[:-9]), uri="x")


def test_shard_index_validates_its_arrays() -> None:
    with pytest.raises(InvalidConfigError, match="unknown format"):
        ShardIndex("zip", np.zeros(1), np.zeros(1))
    with pytest.raises(InvalidConfigError, match="one length"):
        ShardIndex("tfrecord", np.zeros(2), np.zeros(1))
    with pytest.raises(InvalidConfigError, match="go together"):
        ShardIndex("wds", np.zeros(1), np.zeros(1), member_ptr=np.array([0, 1]))
    with pytest.raises(InvalidConfigError, match="no member table"):
        ShardIndex("tfrecord", np.zeros(1), np.zeros(1)).members()


# --- TFRecord -----------------------------------------------------------------------------------


@pytest.fixture
def tfrecord_file(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """A shard written by the tfrecord package (tf.train.Example payloads of varying sizes)."""
    tfr = require("tfrecord")
    path = tmp_path / "train-00000.tfrecord"
    w = tfr.TFRecordWriter(str(path))
    for i in range(12):
        w.write({"image": (bytes([i]) * (i * 37), "byte"), "label": (i, "int")})
    w.close()
    payloads = list(iter_records(path.read_bytes(), str(path)))
    return path, [bytes(p) for p in payloads]


def test_tfrecord_index_matches_the_tfrecord_package(tfrecord_file: tuple[Path, list[bytes]]) -> None:
    """index_tfrecord, parse_index of create_index's file, and format_index all agree; each range
    is a whole record whose payload decodes."""
    require("tfrecord")
    from tfrecord.tools.tfrecord2idx import create_index

    path, payloads = tfrecord_file
    data = path.read_bytes()
    idx_path = path.with_suffix(".index")
    create_index(str(path), str(idx_path))
    text = idx_path.read_text()
    index = index_tfrecord(data, str(path))
    parsed = parse_index(text, str(idx_path), size=len(data))
    assert len(index) == 12 and index.format == "tfrecord"
    assert np.array_equal(index.starts, parsed.starts) and np.array_equal(index.lengths, parsed.lengths)
    assert format_index(index) == text
    assert int(index.starts[-1] + index.lengths[-1]) == len(data)
    for i in range(len(index)):
        rec = memoryview(data)[int(index.starts[i]) : int(index.starts[i] + index.lengths[i])]
        assert bytes(record_payload(rec, str(path), i)) == payloads[i]
        assert len(payloads[i]) == int(index.lengths[i]) - HEADER - TRAILER


def test_tfrecord_reader_uses_our_index(tfrecord_file: tuple[Path, list[bytes]]) -> None:
    """The tfrecord package's reader, sharding by the index file format_index wrote, reads every
    record exactly once."""
    require("tfrecord")
    from tfrecord.reader import tfrecord_loader

    path, _ = tfrecord_file
    idx_path = path.with_suffix(".ours.index")
    idx_path.write_text(format_index(index_tfrecord(path.read_bytes(), str(path))))
    labels = []
    for shard in ((0, 3), (1, 3), (2, 3)):
        for ex in tfrecord_loader(str(path), str(idx_path), {"label": "int"}, shard=shard):
            labels.append(int(ex["label"][0]))
    assert sorted(labels) == list(range(12))


def test_tfrecord_frame_record_round_trips() -> None:
    payloads = [b"", b"x", os.urandom(5000)]
    data = b"".join(frame_record(p) for p in payloads)
    assert [bytes(p) for p in iter_records(data, "f")] == payloads
    index = index_tfrecord(data, "f")
    assert index.lengths.tolist() == [len(p) + HEADER + TRAILER for p in payloads]


def test_tfrecord_payload_is_zero_copy(tmp_path: Path) -> None:
    """record_payload over a ranged s3dlio.Buffer, and iter_records over a whole one, return
    memoryviews of the Buffer's own memory."""
    path = tmp_path / "r.tfrecord"
    path.write_bytes(b"".join(frame_record(os.urandom(100 + i)) for i in range(3)))
    uri = path.as_uri()
    whole = s3dlio.get(uri)
    index = index_tfrecord(whole, uri)
    buf = s3dlio.get_range(uri, int(index.starts[1]), int(index.lengths[1]))
    payload = record_payload(buf, uri, 1)
    assert payload.obj is buf and len(payload) == 101 and shares(payload, buf)
    assert all(p.obj is whole for p in iter_records(whole, uri))


def test_tfrecord_corrupt_payload_names_shard_and_record() -> None:
    data = bytearray(b"".join(frame_record(bytes([i]) * 50) for i in range(5)))
    rec = 50 + HEADER + TRAILER
    data[3 * rec + HEADER + 10] ^= 0x40  # a payload byte of record 3
    uri = "s3://bucket/shard-7.tfrecord"
    with pytest.raises(
        CorruptShardError, match=r"s3://bucket/shard-7\.tfrecord: record 3: data CRC mismatch"
    ) as e:
        record_payload(memoryview(data)[3 * rec : 4 * rec], uri, 3)
    assert e.value.uri == uri
    with pytest.raises(CorruptShardError, match=rf"record 3 at byte {3 * rec}: data CRC mismatch"):
        list(iter_records(data, uri))
    assert len(list(iter_records(data, uri, verify=False))) == 5
    assert len(index_tfrecord(data, uri)) == 5  # indexing checks only the framing
    # A trailer that disagrees, and a range of the wrong size.
    good = bytearray(frame_record(b"payload"))
    good[-1] ^= 1
    with pytest.raises(CorruptShardError, match="record 0: data CRC mismatch"):
        record_payload(good, uri, 0)
    with pytest.raises(
        CorruptShardError, match=r"record 2: length field says 7 payload bytes, the range holds 8"
    ):
        record_payload(frame_record(b"payload") + b"x", uri, 2)


def test_tfrecord_bad_length_or_truncation_is_corrupt() -> None:
    data = bytearray(b"".join(frame_record(b"z" * 20) for _ in range(3)))
    rec = 20 + HEADER + TRAILER
    flipped = bytearray(data)
    flipped[2 * rec] ^= 1
    with pytest.raises(CorruptShardError, match=rf"s\.tfr: record 2 at byte {2 * rec}: length CRC mismatch"):
        index_tfrecord(flipped, "s.tfr")
    with pytest.raises(
        CorruptShardError, match=rf"record 2 at byte {2 * rec}: 20-byte record runs past the end"
    ):
        index_tfrecord(data[:-1], "s.tfr")
    with pytest.raises(CorruptShardError, match=r"record 3 at byte .*truncated header"):
        index_tfrecord(bytes(data) + b"\0\0", "s.tfr")
    with pytest.raises(CorruptShardError, match="length CRC mismatch"):
        record_payload(flipped[2 * rec :], "s.tfr", 2)


def test_parse_index_dali_format_and_errors() -> None:
    """DALI's tfrecord2idx writes the same 'offset whole-record-length' lines; blank lines and
    extra spaces are tolerated; bad lines name their line number."""
    data = b"".join(frame_record(b"q" * n) for n in (3, 10, 0))
    text = "0 19\n19   26\n\n45 16\n"
    index = parse_index(text, "d.idx", size=len(data))
    assert index.starts.tolist() == [0, 19, 45] and index.lengths.tolist() == [19, 26, 16]
    assert np.array_equal(index.starts, index_tfrecord(data, "d").starts)
    with pytest.raises(CorruptShardError, match=r"d\.idx: index line 2: not integers: '19 x'"):
        parse_index("0 19\n19 x\n", "d.idx")
    with pytest.raises(CorruptShardError, match="index line 3: expected 'offset length'"):
        parse_index("0 19\n19 26\n45\n", "d.idx")
    with pytest.raises(CorruptShardError, match="index line 2: record starts at byte 10, before"):
        parse_index("0 19\n10 26\n", "d.idx")
    with pytest.raises(
        CorruptShardError, match="index line 3: record ends at byte 62, past the end of the 61"
    ):
        parse_index("0 19\n19 26\n45 17\n", "d.idx", size=len(data))
    with pytest.raises(CorruptShardError, match="index line 1: offset must be"):
        parse_index("0 5\n", "d.idx")


# --- NPY / NPZ ----------------------------------------------------------------------------------


ARRAYS = {
    "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    "be_i4": np.arange(10, dtype=">i4"),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "bool": np.array([True, False, True]),
    "c64": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    "unicode": np.array(["héllo", "wörld"]),
    "struct": np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i2"), ("b", "<f8")]),
    "scalar": np.array(3.5),
    "empty": np.zeros((0, 5), dtype=np.int16),
}


def npy_bytes(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    b = io.BytesIO()
    if version is None:
        np.save(b, arr)
    else:
        np.lib.format.write_array(b, arr, version=version)
    return b.getvalue()


@pytest.mark.parametrize("name", list(ARRAYS))
@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
def test_npy_decodes_as_numpy_does_zero_copy(name: str, version: tuple[int, int] | None) -> None:
    arr = ARRAYS[name]
    data = npy_bytes(arr, version)
    got = decode_npy(data)
    ref = np.load(io.BytesIO(data))
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert np.array_equal(got, ref)
    assert got.flags.f_contiguous == ref.flags.f_contiguous
    assert not got.flags.writeable
    if arr.size:
        assert shares(got, data)


def test_npy_read_only_even_over_a_writable_buffer() -> None:
    data = bytearray(npy_bytes(np.arange(4)))
    got = decode_npy(data)
    assert shares(got, data) and not got.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 9


def test_npy_refuses_pickles_and_garbage() -> None:
    with pytest.raises(InvalidConfigError, match="pickled"):
        decode_npy(npy_bytes(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(CorruptShardError, match=r"s3://b/x\.npy: not an NPY array \(bad magic\)") as e:
        decode_npy(b"PK\x03\x04" + bytes(100), uri="s3://b/x.npy")
    assert e.value.uri == "s3://b/x.npy"
    with pytest.raises(CorruptShardError, match="truncated NPY data"):
        decode_npy(npy_bytes(np.arange(100))[:-1])
    with pytest.raises(CorruptShardError, match="NPY header of 4194304 bytes"):
        decode_npy(b"\x93NUMPY\x02\x00" + (1 << 22).to_bytes(4, "little") + bytes(100))
    with pytest.raises(CorruptShardError, match="bad NPY header"):
        decode_npy(b"\x93NUMPY\x01\x00\x06\x00{'a':}")


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_decodes_as_numpy_load(compressed: bool) -> None:
    b = io.BytesIO()
    arrays = {k: v for k, v in ARRAYS.items() if k != "scalar"}
    (np.savez_compressed if compressed else np.savez)(b, *[ARRAYS["scalar"]], **arrays)
    data = b.getvalue()
    got = decode_npz(data, uri="a.npz")
    with np.load(io.BytesIO(data)) as ref:
        assert sorted(got) == sorted(ref.files) and "arr_0" in got
        for k in ref.files:
            assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k
    if not compressed:
        assert all(shares(v, data) for v in got.values() if v.size)
    assert all(not v.flags.writeable for v in got.values())


def zip64_npz(extra_prefix: bytes = b"", comment: bytes = b"") -> bytes:
    b = io.BytesIO()
    b.write(extra_prefix)
    with zipfile.ZipFile(b, "w", allowZip64=True) as zf:
        for name, arr in (("x", ARRAYS["f32"]), ("y", ARRAYS["be_i4"])):
            with zf.open(name + ".npy", "w", force_zip64=True) as w:
                w.write(npy_bytes(arr))
        zf.comment = comment
    return b.getvalue()


def test_npz_zip64_comment_and_prepended_bytes() -> None:
    """Zip64 extra fields (forced), an archive comment, and bytes before the archive (zipfile's
    "concat") all read as numpy.load reads them."""
    for data in (zip64_npz(), zip64_npz(b"#!prefix\n" * 10, b"a comment" * 100)):
        got = decode_npz(data)
        assert np.array_equal(got["x"], ARRAYS["f32"]) and np.array_equal(got["y"], ARRAYS["be_i4"])
        assert shares(got["x"], data)
        with zipfile.ZipFile(io.BytesIO(data)) as ref:
            assert sorted(ref.namelist()) == sorted(k + ".npy" for k in got)


def read_directory(z: bytes, offset: int) -> tuple[list[ZipMember], list[int]]:
    """zip_members in the module docstring's loop: the members and each offset tried."""
    offsets = [offset]
    while True:
        try:
            return zip_members(z[offset:], len(z)), offsets
        except ZipTailTooShort as e:
            offset = e.offset
            offsets.append(offset)


def test_npz_members_from_the_tail_for_ranged_reads() -> None:
    """zip_members reads the central directory from the last bytes; too few raises
    ZipTailTooShort with the offset to fetch from; member_array decodes one member's range."""
    b = io.BytesIO()
    np.savez(b, **{f"a{i}": np.full(1000, i, dtype=np.int32) for i in range(30)})
    data = b.getvalue()
    size = len(data)
    tail = data[max(0, size - ZIP_TAIL_BYTES) :]
    members = zip_members(tail, size, "big.npz")
    assert [m.name for m in members] == [f"a{i}.npy" for i in range(30)]
    short = data[-100:]
    with pytest.raises(ZipTailTooShort) as e:
        zip_members(short, size, "big.npz")
    assert e.value.offset < size - 100 and e.value.uri == "big.npz"
    assert pickle.loads(pickle.dumps(e.value)).offset == e.value.offset
    assert [m.name for m in zip_members(data[e.value.offset :], size, "big.npz")] == [m.name for m in members]
    m = members[17]
    region = memoryview(data)[m.header_offset : m.end]
    arr = member_array(region, m, "big.npz")
    assert np.array_equal(arr, np.full(1000, 17, dtype=np.int32)) and shares(arr, data)
    # The documented loop: zip64 (record and locator before the EOCD), a comment, tiny tails.
    for z in (zip64_npz(), zip64_npz(comment=b"c" * 5000), data):
        for first in (10, 22, 30, 200):
            got, offsets = read_directory(z, len(z) - first)
            assert [m.name for m in got] == zipfile.ZipFile(io.BytesIO(z)).namelist()
            assert offsets == sorted(set(offsets), reverse=True)  # each round fetches further back
            assert len(offsets) <= 4
    with pytest.raises(CorruptShardError, match="not a zip"):
        zip_members(bytes(100), 100)


def test_npz_corruption_is_detected() -> None:
    b = io.BytesIO()
    np.savez(b, x=np.arange(100, dtype=np.int64))
    data = bytearray(b.getvalue())
    data[200] ^= 0xFF  # inside x's array data
    with pytest.raises(CorruptShardError, match=r"d\.npz: zip member 'x\.npy': CRC-32 mismatch"):
        decode_npz(data, uri="d.npz")
    unverified = decode_npz(data, verify=False)["x"]  # parses; the flipped byte shows
    assert not np.array_equal(unverified, np.arange(100))
    with pytest.raises(CorruptShardError, match="not a zip"):
        decode_npz(b"not a zip at all", uri="d.npz")


# --- decoders -----------------------------------------------------------------------------------


def image_bytes(fmt: str, mode: str = "RGB", size: tuple[int, int] = (5, 4)) -> tuple[bytes, np.ndarray]:
    image = require("PIL.Image")
    rng = np.random.default_rng(1)
    shape = (size[1], size[0]) if mode in ("L", "P") else (size[1], size[0], len(mode))
    arr = rng.integers(0, 255, shape, dtype=np.uint8)
    img = image.fromarray(arr, mode="L" if mode == "P" else mode)
    if mode == "P":
        img = img.convert("P")
    b = io.BytesIO()
    img.save(b, fmt)
    return b.getvalue(), arr


def test_decode_field_basic_types() -> None:
    assert decode_field("cls", memoryview(b" 42\n")) == 42
    assert (
        decode_field("cls2", b"7") == 7 and decode_field("id", b"3") == 3 and decode_field("index", b"1") == 1
    )
    assert decode_field("txt", memoryview("héllo".encode())) == "héllo"
    assert decode_field("transcript", b"t") == "t" and decode_field("text", b"x") == "x"
    assert decode_field("json", memoryview(b'{"a": [1, 2]}')) == {"a": [1, 2]}
    assert decode_field("jsn", b"[1]") == [1]
    npy = npy_bytes(ARRAYS["f32"])
    got = decode_field("npy", memoryview(npy))
    assert np.array_equal(got, ARRAYS["f32"]) and shares(got, npy)
    b = io.BytesIO()
    np.savez(b, q=np.arange(3))
    assert np.array_equal(decode_field("npz", b.getvalue())["q"], np.arange(3))
    raw = memoryview(b"\x00\x01")
    assert decode_field("bin", raw) is raw and decode_field("mp4", raw) is raw
    assert decode_field("meta.CLS", b"5") == 5  # last dot part, any case, decides


def test_decode_field_pickle_only_when_allowed() -> None:
    data = memoryview(pickle.dumps({"x": 1}))
    assert decode_field("pyd", data) is data
    assert decode_field("pickle", data) is data
    assert decode_field("pyd", data, allow_pickle=True) == {"x": 1}


@pytest.mark.parametrize(
    ("fmt", "ext", "mode", "channels"),
    [
        ("PNG", "png", "RGB", 3),
        ("PNG", "seg.png", "RGBA", 4),
        ("PNG", "png", "L", 1),
        ("PPM", "ppm", "RGB", 3),
        ("BMP", "bmp", "RGB", 3),
        ("TIFF", "tiff", "RGB", 3),
        ("GIF", "gif", "P", 3),
        ("JPEG", "jpg", "RGB", 3),
    ],
)
def test_decode_field_images(fmt: str, ext: str, mode: str, channels: int) -> None:
    data, arr = image_bytes(fmt, mode)
    got = decode_field(ext, memoryview(data))
    assert got.dtype == np.uint8 and got.shape == (4, 5, channels)
    if fmt in ("PNG", "PPM", "BMP", "TIFF"):  # lossless
        assert np.array_equal(got, arr if arr.ndim == 3 else arr[:, :, None])
    pil = decode_field(ext, data, image="pil")
    assert pil.size == (5, 4)
    assert decode_field(ext, data, image="raw") is data


def test_decode_field_without_pillow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = image_bytes("PNG")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 's3dlio\[images\]'"):
        decode_field("png", data)
    assert decode_field("png", data, image="raw") is data


def test_decode_sample_and_picklable_decoder(tmp_path: Path) -> None:
    """decode_sample over a sample from decode_wds; make_decoder's callable pickles (spawn
    workers) and decodes the same."""
    png, arr = image_bytes("PNG")
    data = make_tar([("k.png", png), ("k.cls", b"9"), ("k.json", b'{"a": 1}'), ("k.pyd", pickle.dumps(1))])
    index = index_wds(data, "t.tar")
    sample = decode_wds(slice_sample(data, index, 0), index, 0)
    sample["__url__"] = "t.tar"
    out = decode_sample(sample)
    assert out["__key__"] == "k" and out["__url__"] == "t.tar"
    assert out["cls"] == 9 and out["json"] == {"a": 1} and np.array_equal(out["png"], arr)
    assert isinstance(out["pyd"], memoryview)
    dec = pickle.loads(pickle.dumps(make_decoder(image="pil", allow_pickle=True)))
    assert isinstance(dec, Decoder) and dec.image == "pil" and dec.allow_pickle
    out2 = dec(sample)
    assert out2["pyd"] == 1 and out2["png"].size == (5, 4)
    with pytest.raises(InvalidConfigError, match="image='rgb'"):
        make_decoder(image="rgb")  # type: ignore[arg-type]


# --- HDF5 ---------------------------------------------------------------------------------------


@pytest.fixture
def h5_bytes() -> bytes:
    h5py = require("h5py")
    b = io.BytesIO()
    with h5py.File(b, "w") as f:
        f["contig"] = np.arange(40, dtype=np.float32).reshape(10, 4)
        f.create_dataset("chunked", data=np.arange(30, dtype=">i2").reshape(10, 3), chunks=(3, 3))
        f.create_dataset("labels", data=np.arange(10, dtype=np.int64), chunks=(4,))
        f.create_dataset("gzip", data=np.arange(20).reshape(10, 2), chunks=(5, 2), compression="gzip")
        f.create_dataset("split", data=np.arange(40).reshape(10, 4), chunks=(5, 2))
        f.create_dataset("sparse", shape=(10, 2), dtype=np.int32, chunks=(2, 2))
        f["sparse"][0:2] = 1  # one chunk allocated of five
        f.create_dataset("vlen", data=[b"a", b"bc"] * 5, dtype=h5py.string_dtype())
        f["group/inner"] = np.arange(10)
    return b.getvalue()


def test_hdf5_row_layout_addressable_rows(h5_bytes: bytes) -> None:
    """Contiguous and unfiltered whole-row chunked datasets give per-row byte ranges whose bytes
    decode (zero-copy) to what h5py reads; others say why not."""
    h5py = require("h5py")
    layouts = {d.name: d for d in row_layout(io.BytesIO(h5_bytes))}
    assert set(layouts) == {"contig", "chunked", "labels", "gzip", "split", "sparse", "vlen"}
    with h5py.File(io.BytesIO(h5_bytes), "r") as f:
        for name in ("contig", "chunked", "labels"):
            lay = layouts[name]
            assert lay.addressable and lay.reason is None and lay.nrows == 10
            assert lay.row_offsets is not None and lay.row_offsets.dtype == np.int64
            for r in range(10):
                o = int(lay.row_offsets[r])
                view = memoryview(h5_bytes)[o : o + lay.row_nbytes]
                row = decode_row(view, lay)
                assert row.dtype == f[name].dtype and np.array_equal(row, f[name][r]), (name, r)
                assert shares(row, h5_bytes) and not row.flags.writeable
    assert layouts["chunked"].row_shape == (3,) and layouts["chunked"].dtype == np.dtype(">i2")
    assert layouts["labels"].row_shape == () and layouts["labels"].row_nbytes == 8
    assert not layouts["gzip"].addressable and "filtered" in str(layouts["gzip"].reason)
    assert not layouts["split"].addressable and "splits rows" in str(layouts["split"].reason)
    assert not layouts["sparse"].addressable and "8 of 10 rows" in str(layouts["sparse"].reason)
    assert not layouts["vlen"].addressable and "variable-length" in str(layouts["vlen"].reason)


def test_hdf5_row_layout_names_and_errors(h5_bytes: bytes, tmp_path: Path) -> None:
    h5py = require("h5py")
    lays = row_layout(io.BytesIO(h5_bytes), ["group/inner", "contig"])
    assert [d.name for d in lays] == ["group/inner", "contig"] and lays[0].addressable
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((10, 2))
        f["y"] = np.zeros(7)
        f["s"] = 3.0
    with pytest.raises(InvalidConfigError, match=r"'x': 10, 'y': 7"):
        row_layout(str(path), ["x", "y"])
    with pytest.raises(InvalidConfigError, match="scalar"):
        row_layout(str(path), ["s"])
    with pytest.raises(InvalidConfigError, match="not a dataset"):
        row_layout(str(path), ["missing"])
    with open(path, "rb") as fh:  # a file object; it stays open for the caller
        assert [d.nrows for d in row_layout(fh, ["x"])] == [10]
        assert not fh.closed
    with pytest.raises(CorruptShardError, match="a row is 16 bytes, got 15"):
        decode_row(bytes(15), row_layout(str(path), ["x"])[0])
