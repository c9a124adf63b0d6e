"""Synthetic datasets for benchmarks and tests, written to any s3dlio URI (``s3://``, ``file://``,
``az://``, ``gs://``, ``direct://``) in the formats training jobs read.

>>> s3dlio.gen.generate("s3://bucket/ds", count=1000, size=(64 << 10, 1 << 20), format="wds")

What is generated, sample by sample (``i`` = the sample's index, ``seed`` = the ``seed`` argument):

- **data**: ``size`` bytes from a PCG64 generator seeded with ``(seed, 0, i)``
  (:func:`sample_data`); every generator is seeded from the seed and the sample index, so the
  same seed writes byte-identical files whatever the concurrency or the order of writes.
- **sizes**: :func:`sample_sizes`; **labels**: int64 in ``[0, NUM_CLASSES)``, :func:`sample_labels`.
- **dedup_factor N** (as the reference s3dlio's data generator defines it: "roughly one out of
  every N blocks is unique"): each sample's data is cut into 4 KiB blocks; only ``ceil(blocks /
  N)`` of them are drawn, the others repeat them cyclically (block ``k`` = unique block ``k mod
  U``), so a 4 KiB-block deduplicating store keeps about 1/N of the data. Within one sample:
  a sample of fewer than N blocks cannot dedup N:1.
- **compress_factor M** (the reference's definition: a fraction ``(M-1)/M`` of each block is
  constant, the rest random): the first ``ceil(4096 / M)`` bytes of every block are random and
  the rest zeros, so the data compresses about M:1 (zlib: within a few percent for M up to ~64).

Both factors shape the sample *data* (the raw object, the npy/npz array, the tfrecord ``data``
feature, the tar member, the hdf5 row); container headers are extra. They do not apply to jpeg
and png, whose pixels are re-encoded.

Formats (``size`` is the data bytes of a sample; the file adds its format's header):

=========  ==================================================================================
raw        one object per sample, the data itself
npy        one ``.npy`` per sample: a uint8 array of shape ``(size,)``
npz        one ``.npz`` per sample (stored, not deflated), DLIO's layout: ``x`` (uint8, shape
           ``(size,)``) and ``y`` (an int64 label, shape ``()``)
tfrecord   shards of records, each a serialized ``tf.train.Example`` with ``data`` (bytes) and
           ``label`` (int64); each shard gets an index of ``offset length`` lines (the format of
           the ``tfrecord`` package's and DALI's ``tfrecord2idx``)
wds        WebDataset tar shards: per sample ``{key}.bin`` (the data) and ``{key}.cls`` (the
           label as ASCII); keys are the zero-padded sample index
hdf5       shards: HDF5 files with ``x`` (uint8, ``(n, size)``: a fixed size only) and ``y``
           (int64, ``(n,)``); built in memory (HDF5 needs a seekable file), one shard at a time
jpeg, png  one RGB noise image per file, sized so the encoded file is close to ``size``: png
           within 1% from 1 KiB up (noise does not deflate), jpeg (quality 90) within 7% from
           2 KiB up and 2% from 32 KiB up; below 2 KiB JPEG's own ~0.6 KiB of headers dominate
=========  ==================================================================================

Layouts: ``"dlio"`` names files as DLIO's generators do, ``{prefix}/train/img_{i}_of_{n}.{ext}``
with ``i`` zero-padded to the width of ``n`` (``n`` = files, or shards), ``ext`` = the format
name (``npz``, ``npy``, ``tfrecord``, ``hdf5``, ``jpeg``, ``png``; ``bin`` for raw, ``tar`` for
wds, which DLIO lacks), and tfrecord indexes where DLIO keeps them,
``{prefix}/index/train/{shard name}.idx``. ``"flat"`` names them ``{prefix}/{i:05d}.{ext}`` and
``{prefix}/shard-{i:06d}.{ext}``, tfrecord indexes next to their shard as ``{shard}.index``.

Writing: single-file formats and shards up to 64 MiB go through :func:`s3dlio.put_many` in
batches of at most 256 MiB (memory stays bounded by a batch, never the dataset); bigger shards
stream through :func:`s3dlio.open` writers. Ctrl-C stops promptly; no object is left
half-written (a writer interrupted aborts), objects already written stay.
"""

from __future__ import annotations

import io
import math
import os
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from . import exceptions as exc
from .formats.example import encode_example
from .formats.tfrecord import frame_record

if TYPE_CHECKING:
    from . import StorageConfig

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "NUM_CLASSES",
    "GenResult",
    "SizeSpec",
    "generate",
    "sample_data",
    "sample_labels",
    "sample_sizes",
]

FORMATS = ("raw", "npy", "npz", "tfrecord", "wds", "hdf5", "jpeg", "png")
SHARDED = frozenset({"tfrecord", "wds", "hdf5"})
LAYOUTS = ("dlio", "flat")
NUM_CLASSES = 1000
BLOCK = 4096
MiB = 1024 * 1024
SHARD_BYTES = 64 * MiB  # default shard size (data bytes) when samples_per_shard is not given
_BATCH_BYTES = 256 * MiB  # one put_many batch at most (memory bound)
_STREAM_ABOVE = 64 * MiB  # shards estimated bigger than this stream through s3dlio.open(uri, "wb")
_CHUNK = 4 * MiB  # what a streaming writer is handed at a time

_EXT = {
    "raw": "bin",
    "npy": "npy",
    "npz": "npz",
    "tfrecord": "tfrecord",
    "wds": "tar",
    "hdf5": "hdf5",
    "jpeg": "jpeg",
    "png": "png",
}

SizeSpec: TypeAlias = int | tuple[int, int] | Mapping[str, Any] | Sequence[int]
"""A sample size: ``n`` (fixed), ``(lo, hi)`` (uniform integers in [lo, hi]),
``{"dist": "normal", "mean": m, "std": s}`` (rounded, clipped to >= 1) or a list (cycled)."""


@dataclass(frozen=True)
class GenResult:
    """What :func:`generate` wrote: ``files`` (the data files' URIs, in sample order),
    ``indexes`` (tfrecord index files, one per shard, else empty), ``samples``, ``bytes`` (all
    bytes written, indexes included)."""

    prefix: str
    files: list[str]
    samples: int
    bytes: int
    format: str
    indexes: list[str] = field(default_factory=list)


def _bad(msg: str) -> exc.InvalidConfigError:
    return exc.InvalidConfigError(msg)


def _int(name: str, v: object, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise _bad(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


# --- what each sample is --------------------------------------------------------------------------


def sample_sizes(size: SizeSpec, count: int, seed: int = 0) -> np.ndarray:
    """The data size of each of ``count`` samples (an int64 array), drawn with seed ``(seed, 1)``."""
    count = _int("count", count, 0)
    rng = np.random.default_rng([_int("seed", seed, 0), 1])
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        return np.full(count, _int("size", size, 0), dtype=np.int64)
    if isinstance(size, tuple):
        if len(size) != 2:
            raise _bad(f"a size range is (lo, hi), got {size!r}")
        lo, hi = _int("size lo", size[0], 0), _int("size hi", size[1], 0)
        if lo > hi:
            raise _bad(f"a size range (lo, hi) needs lo <= hi, got {size!r}")
        return rng.integers(lo, hi + 1, count, dtype=np.int64)
    if isinstance(size, Mapping):
        keys = set(size)
        if size.get("dist") != "normal" or keys != {"dist", "mean", "std"}:
            raise _bad(
                f'a size distribution is {{"dist": "normal", "mean": m, "std": s}}, got {dict(size)!r}'
            )
        mean, std = float(size["mean"]), float(size["std"])
        if not (math.isfinite(mean) and math.isfinite(std)) or std < 0:
            raise _bad(f"a normal size needs a finite mean and a std >= 0, got {dict(size)!r}")
        return np.maximum(np.rint(rng.normal(mean, std, count)), 1).astype(np.int64)
    if isinstance(size, Sequence) and not isinstance(size, (str, bytes)):
        values = [_int("size", v, 0) for v in size]
        if not values:
            raise _bad("a size list must not be empty")
        return np.resize(np.array(values, dtype=np.int64), count)
    raise _bad(f"size must be an int, (lo, hi), a normal distribution dict or a list, got {size!r}")


def sample_labels(count: int, seed: int = 0) -> np.ndarray:
    """The label of each of ``count`` samples: int64 in ``[0, NUM_CLASSES)``, seed ``(seed, 2)``."""
    rng = np.random.default_rng([_int("seed", seed, 0), 2])
    return rng.integers(0, NUM_CLASSES, _int("count", count, 0), dtype=np.int64)


def sample_data(
    index: int, size: int, *, seed: int = 0, dedup_factor: int = 1, compress_factor: float = 1
) -> bytes:
    """The data of sample ``index``: ``size`` bytes from a generator seeded with ``(seed, 0,
    index)``, shaped by ``dedup_factor`` and ``compress_factor`` (see the module's docs)."""
    rng = np.random.default_rng([seed, 0, index])
    if dedup_factor == 1 and compress_factor == 1:
        return rng.bytes(size)
    blocks = -(-size // BLOCK)
    unique = -(-blocks // dedup_factor)
    keep = max(1, math.ceil(BLOCK / compress_factor))  # random bytes at the start of each block
    table = np.zeros((unique, BLOCK), dtype=np.uint8)
    table[:, :keep] = np.frombuffer(rng.bytes(unique * keep), dtype=np.uint8).reshape(unique, keep)
    return table[np.arange(blocks) % unique].reshape(-1)[:size].tobytes()


# --- encoders -------------------------------------------------------------------------------------


def _npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, arr, allow_pickle=False)
    return b.getvalue()


def _npz(members: Mapping[str, np.ndarray]) -> bytes:
    # np.savez stamps each zip entry with the current time: the same seed would not give the same
    # bytes. The same stored zip with a fixed timestamp.
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        for name, arr in members.items():
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), _npy(arr))
    return b.getvalue()


def _pixels(seed: int, index: int, pixels: int) -> np.ndarray:
    """An RGB noise image of about ``pixels`` pixels, as square as may be."""
    w = max(1, round(math.sqrt(max(pixels, 1))))
    h = max(1, round(max(pixels, 1) / w))
    rng = np.random.default_rng([seed, 0, index])
    return np.frombuffer(rng.bytes(h * w * 3), dtype=np.uint8).reshape(h, w, 3)


def _encode_image(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr, "RGB").save(b, "PNG", compress_level=1)
    else:
        Image.fromarray(arr, "RGB").save(b, "JPEG", quality=90)
    return b.getvalue()


_JPEG_HEADER = 620  # bytes of a quality-90 baseline JPEG besides its scan data
_JPEG_BPP = 0.92  # scan bytes per pixel of RGB noise at quality 90


def _image(seed: int, index: int, size: int, fmt: str) -> bytes:
    """An image whose encoded size is close to ``size``: png from its raw size (3 bytes per pixel,
    a filter byte per row, ~70 bytes of chunks), jpeg from an estimate of its bytes per pixel,
    corrected (at most twice) by what it encoded to."""
    if fmt == "png":
        return _encode_image(_pixels(seed, index, round(max(size - 70, 3) / 3.01)), fmt)
    target = max(size - _JPEG_HEADER, 1)
    px = target / _JPEG_BPP
    data = _encode_image(_pixels(seed, index, round(px)), fmt)
    for _ in range(2):
        if abs(len(data) - size) <= 0.02 * size:
            break
        px *= target / max(len(data) - _JPEG_HEADER, 1)
        data = _encode_image(_pixels(seed, index, round(px)), fmt)
    return data


def _tar_member(name: str, data: bytes) -> list[bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed: the same seed, the same bytes
    return [info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"), data, b"\0" * (-len(data) % 512)]


# --- the plan: names and shards -------------------------------------------------------------------


def _uri(prefix: str) -> str:
    if "://" not in prefix:
        prefix = "file://" + os.path.abspath(prefix)
    return prefix.rstrip("/") + "/"


def _names(prefix: str, n: int, ext: str, layout: str, sharded: bool) -> list[str]:
    if layout == "dlio":
        w = len(str(n))
        return [f"{prefix}train/img_{i:0{w}d}_of_{n}.{ext}" for i in range(n)]
    if sharded:
        w = max(6, len(str(max(n - 1, 0))))
        return [f"{prefix}shard-{i:0{w}d}.{ext}" for i in range(n)]
    w = max(5, len(str(max(n - 1, 0))))
    return [f"{prefix}{i:0{w}d}.{ext}" for i in range(n)]


def _index_name(prefix: str, shard: str, layout: str) -> str:
    if layout == "dlio":
        return f"{prefix}index/train/{shard.rsplit('/', 1)[1]}.idx"
    return f"{shard}.index"


def _shards(sizes: np.ndarray, samples_per_shard: int | None) -> list[tuple[int, int]]:
    """[start, end) sample ranges of each shard: ``samples_per_shard`` each, or greedy runs of
    about SHARD_BYTES of data (at least one sample)."""
    n = len(sizes)
    if samples_per_shard is not None:
        return [(s, min(s + samples_per_shard, n)) for s in range(0, n, samples_per_shard)]
    out, start, acc = [], 0, 0
    for i, s in enumerate(sizes.tolist()):
        if i > start and acc + s > SHARD_BYTES:
            out.append((start, i))
            start, acc = i, 0
        acc += s
    if n:
        out.append((start, n))
    return out


# --- writing --------------------------------------------------------------------------------------


class _Batcher:
    """(uri, data) pairs sent through put_many in batches bounded in bytes and in count."""

    def __init__(self, max_concurrency: int, config: StorageConfig | None) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.size = 0
        self.written = 0
        self.max_concurrency, self.config = max_concurrency, config
        self.max_items = max(256, 4 * max_concurrency)

    def add(self, uri: str, data: bytes) -> None:
        self.items.append((uri, data))
        self.size += len(data)
        if self.size >= _BATCH_BYTES or len(self.items) >= self.max_items:
            self.flush()

    def flush(self) -> None:
        import s3dlio

        if self.items:
            s3dlio.put_many(self.items, max_concurrency=self.max_concurrency, config=self.config)
            self.written += self.size
            self.items, self.size = [], 0


def _stream(uri: str, chunks: Iterator[bytes], config: StorageConfig | None) -> int:
    """Write ``chunks`` to ``uri`` through a streaming writer (aborted, never published, if
    anything raises), handing it about _CHUNK bytes at a time; the bytes written."""
    import s3dlio

    total, pending, pending_size = 0, [], 0
    with s3dlio.open(uri, "wb", config=config) as f:
        for c in chunks:
            pending.append(c)
            pending_size += len(c)
            if pending_size >= _CHUNK:
                f.write(b"".join(pending))
                total += pending_size
                pending, pending_size = [], 0
        if pending:
            f.write(b"".join(pending))
            total += pending_size
    return total


def generate(
    prefix: str,
    *,
    count: int,
    size: SizeSpec,
    format: str,  # noqa: A002 - the natural name; the builtin is not needed here
    seed: int = 0,
    samples_per_shard: int | None = None,
    dedup_factor: int = 1,
    compress_factor: float = 1,
    layout: str = "dlio",
    config: StorageConfig | None = None,
    max_concurrency: int = 64,
    progress: bool = False,
) -> GenResult:
    """Write a synthetic dataset of ``count`` samples under ``prefix`` (see the module's docs for
    formats, sizes, layouts and the dedup/compress factors). The same arguments write
    byte-identical files. ``progress=True`` draws a progress bar on stderr when it is a terminal.

    Raises :class:`~s3dlio.exceptions.InvalidConfigError` (a ``ValueError``) on a bad argument,
    before anything is written.
    """
    if format not in FORMATS:
        raise _bad(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise _bad(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    count, seed = _int("count", count, 0), _int("seed", seed, 0)
    dedup_factor = _int("dedup_factor", dedup_factor, 1)
    max_concurrency = _int("max_concurrency", max_concurrency, 1)
    if isinstance(compress_factor, bool) or not isinstance(compress_factor, (int, float)):
        raise _bad(f"compress_factor must be a number >= 1, got {compress_factor!r}")
    if not (math.isfinite(compress_factor) and compress_factor >= 1):
        raise _bad(f"compress_factor must be a number >= 1, got {compress_factor!r}")
    if samples_per_shard is not None:
        if format not in SHARDED:
            raise _bad(f"samples_per_shard applies to tfrecord, wds and hdf5, not {format}")
        samples_per_shard = _int("samples_per_shard", samples_per_shard, 1)
    if format in ("jpeg", "png") and (dedup_factor != 1 or compress_factor != 1):
        raise _bad(f"dedup_factor and compress_factor do not apply to {format}: its pixels are re-encoded")
    if format == "hdf5" and not (isinstance(size, (int, np.integer)) and not isinstance(size, bool)):
        raise _bad(f"hdf5 needs a fixed size (its x dataset is (samples, size)), got size={size!r}")
    sizes = sample_sizes(size, count, seed)
    if format in ("jpeg", "png") and count and int(sizes.min()) < 1:
        raise _bad(f"{format} needs sizes >= 1")
    labels = sample_labels(count, seed) if format not in ("raw", "npy", "jpeg", "png") else None
    root = _uri(prefix)
    ext = _EXT[format]

    def data(i: int) -> bytes:
        return sample_data(
            i, int(sizes[i]), seed=seed, dedup_factor=dedup_factor, compress_factor=compress_factor
        )

    from .cli import _Out, _Progress

    out = _Out(as_json=False, quiet=False, progress=bool(progress) and sys.stderr.isatty())
    batch = _Batcher(max_concurrency, config)
    streamed = 0
    indexes: list[str] = []
    if format not in SHARDED:
        files = _names(root, count, ext, layout, sharded=False)
        with _Progress(out, "gen", "write", int(sizes.sum()), count):
            for i in range(count):
                if format == "raw":
                    obj = data(i)
                elif format == "npy":
                    obj = _npy(np.frombuffer(data(i), dtype=np.uint8))
                elif format == "npz":
                    assert labels is not None
                    x = np.frombuffer(data(i), dtype=np.uint8)
                    obj = _npz({"x": x, "y": np.asarray(labels[i], dtype=np.int64)})
                else:
                    obj = _image(seed, i, int(sizes[i]), format)
                batch.add(files[i], obj)
            batch.flush()
        return GenResult(root, files, count, batch.written, format)

    assert labels is not None
    shards = _shards(sizes, samples_per_shard)
    files = _names(root, len(shards), ext, layout, sharded=True)
    key_width = max(6, len(str(max(count - 1, 0))))

    def tfrecord(start: int, end: int, offsets: list[tuple[int, int]]) -> Iterator[bytes]:
        pos = 0
        for i in range(start, end):
            rec = frame_record(encode_example({"data": data(i), "label": int(labels[i])}))
            offsets.append((pos, len(rec)))
            pos += len(rec)
            yield rec

    def wds(start: int, end: int) -> Iterator[bytes]:
        pos = 0
        for i in range(start, end):
            key = f"{i:0{key_width}d}"
            for name, blob in ((f"{key}.bin", data(i)), (f"{key}.cls", str(int(labels[i])).encode())):
                for part in _tar_member(name, blob):
                    pos += len(part)
                    yield part
        end_blocks = 1024 + (-(pos + 1024) % tarfile.RECORDSIZE)  # two zero blocks, then a whole record
        yield b"\0" * end_blocks

    def hdf5(start: int, end: int) -> bytes:
        import h5py  # type: ignore[import-untyped]

        b = io.BytesIO()
        with h5py.File(b, "w") as f:
            x = f.create_dataset("x", shape=(end - start, int(sizes[0]) if count else 0), dtype=np.uint8)
            for i in range(start, end):
                x[i - start] = np.frombuffer(data(i), dtype=np.uint8)
            f.create_dataset("y", data=labels[start:end])
        return b.getvalue()

    with _Progress(out, "gen", "write", int(sizes.sum()), len(shards) * (2 if format == "tfrecord" else 1)):
        for uri, (start, end) in zip(files, shards, strict=True):
            offsets: list[tuple[int, int]] = []
            if format == "hdf5":
                batch.add(uri, hdf5(start, end))
                continue
            chunks = tfrecord(start, end, offsets) if format == "tfrecord" else wds(start, end)
            if int(sizes[start:end].sum()) > _STREAM_ABOVE:
                streamed += _stream(uri, chunks, config)
            else:
                batch.add(uri, b"".join(chunks))
            if format == "tfrecord":
                idx = _index_name(root, uri, layout)
                indexes.append(idx)
                batch.add(idx, "".join(f"{o} {n}\n" for o, n in offsets).encode())
        batch.flush()
    return GenResult(root, files, count, batch.written + streamed, format, indexes)
