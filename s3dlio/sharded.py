"""Datasets over sharded files: WebDataset tar, TFRecord, NPZ and NPY.

:class:`ShardedDataset` indexes its shards once, so that every sample is an addressable byte range
of its shard. The loader then treats samples as it treats objects: a global shuffle (the same on
every rank, new every epoch), sharding by rank and worker, O(1) exact resume, and concurrent
ranged GETs, where the samples of one batch that lie close together in one shard share a request
(see ``max_gap`` / ``max_range``).

:class:`ShardStream` is the streaming mode for datasets too large to index up front: whole shards
in a seeded shard order, samples mixed through a bounded shuffle buffer.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from .config import StorageConfig
from .config import native_config as _native
from .data import ObjectDataset, _IterBase, distributed_info, worker_info
from .exceptions import CorruptShardError, InvalidConfigError, NotFoundError
from .formats.index import ShardIndex
from .options import PoolConfig, RangeEngineConfig

__all__ = ["FORMATS", "ShardStream", "ShardedDataset"]

FORMATS = ("wds", "tfrecord", "npz", "npy", "hdf5")
"""Shard formats :class:`ShardedDataset` reads."""

# File name endings of each format's shards in a listing.
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "wds": (".tar",),
    "tfrecord": (".tfrecord", ".tfrecords", ".tfr"),
    "npz": (".npz",),
    "npy": (".npy",),
    "hdf5": (".h5", ".hdf5"),
}
_SIDECAR = ".s3dlio-index"
MiB = 1 << 20


def _default_cache_dir() -> Path:
    root = os.environ.get("S3DLIO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "s3dlio"
    )
    return Path(root) / "index"


@dataclass(frozen=True)
class _Shard:
    uri: str
    size: int
    etag: str | None


def _decoder(format: str, decode: bool | Callable[[Any], Any]) -> Callable[[Any], Any] | None:  # noqa: A002 - the issue's and webdataset's name for it
    if callable(decode):
        return decode
    if not decode:
        return None
    if format == "wds":
        from .formats.decoders import make_decoder

        return make_decoder()
    if format == "tfrecord":
        from .formats.example import decode_example

        return decode_example
    return None  # npz / npy are arrays already


class ShardedDataset(ObjectDataset):
    """Map-style dataset over shards: ``len`` is the total number of samples and ``ds[i]`` reads
    sample ``i`` as a ranged GET of its shard.

    What a sample is, before ``decode`` and ``transform``:

    * ``"wds"``: a dict ``{"__key__": key, "__url__": shard URI, ext: memoryview, ...}``, one
      entry per file of the sample (``"jpg"``, ``"cls"``, ...), each a zero-copy view of the
      fetched bytes;
    * ``"tfrecord"``: the record's payload (a zero-copy memoryview), after its length and data
      CRCs were checked (a mismatch is a :class:`~s3dlio.exceptions.CorruptShardError` naming the
      shard and the record);
    * ``"npz"``: one file is one sample, a dict of its arrays (zero-copy views where stored
      uncompressed);
    * ``"npy"``: one file is one sample, its array (a zero-copy view);
    * ``"hdf5"``: a row of the file's datasets (``datasets=``, default every top-level one; they
      share their first dimension): a dict ``{name: array}``, each row fetched by a ranged GET
      into a zero-copy array. Rows must be byte-addressable: contiguous storage, or chunks of
      whole rows without compression (:func:`s3dlio.formats.hdf5.row_layout`); a compressed
      dataset is an :class:`~s3dlio.exceptions.InvalidConfigError` naming it and its filter.

    ``cache_bytes`` (default 0: off) keeps whole blocks of ``block_size`` bytes of the shards in
    memory, up to that many bytes, least recently used out, across epochs: samples are cut from
    blocks instead of each being a GET of its own. With a global shuffle a dataset that fits in
    the budget is then read once per process, at whole-object speed (see docs/datasets.md).

    ``decode=True`` applies the ready decoders: for ``"wds"`` by extension
    (:func:`s3dlio.formats.decoders.decode_sample`: ``.cls`` -> int, ``.txt`` -> str, ``.json``,
    ``.npy``, images through Pillow); for ``"tfrecord"`` the ``tf.train.Example`` parser
    (:func:`s3dlio.formats.example.decode_example`). A callable ``decode`` replaces them. Then
    ``transform`` (any callable) makes the training sample.

    Plugs into :class:`s3dlio.DataLoader` (and through it the JAX and TensorFlow adapters) and
    into ``torch.utils.data.DataLoader`` (``__getitems__`` fetches a batch concurrently).
    """

    def __init__(
        self,
        shards: Sequence[str],
        indexes: Sequence[Any],
        *,
        format: str,  # noqa: A002 - the issue's and webdataset's name for it
        sizes: Sequence[int | None] | None = None,
        decode: bool | Callable[[Any], Any] = False,
        transform: Callable[[Any], Any] | None = None,
        config: StorageConfig | None = None,
        max_gap: int = 1 * MiB,
        max_range: int = 8 * MiB,
        cache_bytes: int = 0,
        block_size: int = 8 * MiB,
    ) -> None:
        if format not in FORMATS:
            raise InvalidConfigError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        super().__init__(shards, sizes, transform=transform, config=config)
        if len(indexes) != len(self.uris):
            raise InvalidConfigError(f"{len(indexes)} indexes given for {len(self.uris)} shards")
        if int(max_gap) < 0 or int(max_range) < 1:
            raise InvalidConfigError("max_gap must be >= 0 and max_range >= 1 (bytes)")
        if int(cache_bytes) < 0 or int(block_size) < 1:
            raise InvalidConfigError("cache_bytes must be >= 0 and block_size >= 1 (bytes)")
        self.cache_bytes, self.block_size = int(cache_bytes), int(block_size)
        self.format = format
        self.max_gap, self.max_range = int(max_gap), int(max_range)
        self._indexes = list(indexes)
        self._decode = _decoder(format, decode)
        if not (decode is True or decode is False or callable(decode)):
            raise InvalidConfigError("decode must be True, False or a callable")
        counts = np.array(
            [_count(format, ix, u) for ix, u in zip(indexes, self.uris, strict=True)], dtype=np.int64
        )
        self._first = np.concatenate(([0], np.cumsum(counts)))  # sample number of each shard's first
        self._native: _core.SampleSource | None = None

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_prefix(  # type: ignore[override]
        cls,
        uri: str,
        *,
        format: str,  # noqa: A002 - the issue's and webdataset's name for it
        pattern: str | None = None,
        config: StorageConfig | None = None,
        index_cache: str | os.PathLike[str] | bool = True,
        sidecar: bool = False,
        index_concurrency: int = 4,
        datasets: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ShardedDataset:
        """The shards of ``format`` under ``uri`` (one listing; key order), indexed.

        Indexes come from, in order: a sidecar object ``<shard>.s3dlio-index`` (with
        ``sidecar=True``), the local index cache (``index_cache``: ``True`` for
        ``$S3DLIO_CACHE_DIR/index`` or ``~/.cache/s3dlio/index``, a directory, or ``False``), an
        index file another tool wrote next to a TFRecord shard (``x.index``, ``x.tfrecord.index``,
        ``x.idx``: the ``tfrecord`` package's and DALI's format), else a read of the whole shard.
        Every cached index is keyed by the shard's URI, size and ETag, so a changed shard is
        indexed again. ``index_concurrency`` shards are read at once while indexing.

        HDF5 files are not indexed that way: each file's metadata is read through
        :func:`s3dlio.open` by h5py (a few ranged reads) to find the rows of ``datasets``.
        """
        from . import list as list_objects

        if format not in FORMATS:
            raise InvalidConfigError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        infos = [o for o in list_objects(uri, pattern=pattern, config=config) if not o.is_dir]
        infos.sort(key=lambda o: o.uri)
        shards = [_Shard(o.uri, o.size, o.etag) for o in infos if o.uri.endswith(_SUFFIXES[format])]
        if not shards:
            raise NotFoundError(
                f"no {format} shards ({', '.join(_SUFFIXES[format])}) under {uri}"
                + (f" matching {pattern!r}" if pattern else ""),
                uri,
            )
        indexes: list[Any]
        if format in ("npz", "npy"):
            indexes = [None] * len(shards)
        elif format == "hdf5":
            indexes = [_hdf5_layout(s.uri, datasets, config) for s in shards]
        else:
            names = {o.uri: o for o in infos}
            indexes = list(
                _Indexer(format, config, index_cache, sidecar, int(index_concurrency), names).run(shards)
            )
        return cls(
            [s.uri for s in shards],
            indexes,
            format=format,
            sizes=[s.size for s in shards],
            config=config,
            **kwargs,
        )

    @classmethod
    def from_uris(cls, *args: Any, **kwargs: Any) -> ShardedDataset:
        raise InvalidConfigError(
            "ShardedDataset is built with from_prefix(uri, format=...) or its constructor"
        )

    @classmethod
    def from_manifest(cls, *args: Any, **kwargs: Any) -> ShardedDataset:
        raise InvalidConfigError(
            "ShardedDataset is built with from_prefix(uri, format=...) or its constructor"
        )

    # --- samples -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._first[-1])

    @property
    def shards(self) -> list[str]:
        """The shard URIs, in sample order."""
        return self.uris

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, sample number within the shard) of sample ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} samples")
        index %= n
        shard = int(np.searchsorted(self._first, index, side="right")) - 1
        return shard, index - int(self._first[shard])

    def _range(self, index: int) -> tuple[int, int, int]:
        shard, local = self.locate(index)
        ix: ShardIndex | None = self._indexes[shard]
        if ix is None:  # one file, one sample
            size = self.sizes[shard] if self.sizes else None
            return shard, 0, int(size) if size is not None else -1
        return shard, int(ix.starts[local]), int(ix.lengths[local])

    def _sample_source(self) -> _core.SampleSource:
        """The samples as byte ranges of the shards, for the Rust loader (built once)."""
        if self._native is None:
            if self.format in ("npz", "npy"):
                if self.sizes is None or any(s is None for s in self.sizes):
                    raise InvalidConfigError("npz/npy shards need their sizes (from_prefix lists them)")
                sizes = np.asarray(self.sizes, dtype=np.uint64)
                table = np.stack(
                    [np.arange(len(sizes), dtype=np.uint64), np.zeros_like(sizes), sizes], axis=1
                )
            elif self.format == "hdf5":
                parts = []
                for shard, layouts in enumerate(self._indexes):
                    rows = layouts[0].nrows
                    cols = []
                    for lay in layouts:  # per row: one range per dataset, in `datasets` order
                        cols.append(np.stack([
                            np.full(rows, shard, dtype=np.uint64),
                            lay.row_offsets.astype(np.uint64),
                            np.full(rows, lay.row_nbytes, dtype=np.uint64),
                        ], axis=1))  # fmt: skip
                    parts.append(np.stack(cols, axis=1).reshape(-1, 3))
                table = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.uint64)
            else:
                parts = []
                for shard, ix in enumerate(self._indexes):
                    assert ix is not None
                    col = np.full(len(ix), shard, dtype=np.uint64)
                    parts.append(
                        np.stack([col, ix.starts.astype(np.uint64), ix.lengths.astype(np.uint64)], axis=1)
                    )
                table = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.uint64)
            self._native = _core.SampleSource(
                self.uris,
                table.astype("<u8").tobytes(),
                self.sizes,
                max_gap=self.max_gap,
                max_range=self.max_range,
                parts=len(self._indexes[0]) if self.format == "hdf5" and self._indexes else 1,
                cache_bytes=self.cache_bytes,
                block_size=self.block_size,
            )
        return self._native

    def cache_stats(self) -> dict[str, int] | None:
        """The block cache (``cache_bytes``) of this process: ``bytes`` held, ``blocks_fetched``
        (one GET each) and ``hits`` (samples served from a block already fetched); ``None``
        without a cache."""
        got = self._sample_source().cache_stats()
        if got is None:
            return None
        held, fetched, hits = got
        return {"bytes": held, "blocks_fetched": fetched, "hits": hits}

    def _sample_at(self, index: int, buf: Any) -> Any:
        shard, local = self.locate(index)
        uri = self.uris[shard]
        sample: Any
        if self.format == "hdf5":
            from .formats.hdf5 import decode_row

            sample = {lay.name: decode_row(b, lay) for lay, b in zip(self._indexes[shard], buf, strict=True)}
        elif self.format == "wds":
            from .formats.tar import decode_wds

            ix = self._indexes[shard]
            assert ix is not None
            sample = decode_wds(buf, ix, local)
            sample["__url__"] = uri
        elif self.format == "tfrecord":
            from .formats.tfrecord import record_payload

            sample = record_payload(buf, uri, local)
        elif self.format == "npz":
            from .formats.npy import decode_npz

            sample = decode_npz(buf, uri)
        else:
            from .formats.npy import decode_npy

            sample = decode_npy(buf)
        if self._decode is not None:
            sample = self._decode(sample)
        return sample if self.transform is None else self.transform(sample)

    def __getitem__(self, index: int) -> Any:
        if self.format == "hdf5":  # several ranges: one batch of one
            return self.__getitems__([index])[0]
        shard, start, length = self._range(index)
        uri = self.uris[shard]
        cfg = _native(self.config)
        buf = _core.get(uri, None, cfg) if length < 0 else _core.get_range(uri, start, length, cfg)
        return self._sample_at(index % len(self), buf)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch: its ranges fetched concurrently, neighbours in a shard merged (as the loader
        does), samples in the order asked."""
        n = len(self)
        order = [int(i) % n if -n <= int(i) < n else int(i) for i in indices]
        bad = [i for i in order if not 0 <= i < n]
        if bad:
            raise IndexError(f"index {bad[0]} is out of range for {n} samples")
        if not order:
            return []
        stream = _core.BatchStream(
            [], order, {"batch_size": len(order), "in_order": True},
            PoolConfig(pool_size=64, readahead_batches=1).to_dict(), RangeEngineConfig().to_dict(),
            None, _native(self.config), None, None, self._sample_source(),
        )  # fmt: skip
        try:
            _positions, got, bufs = next(stream)
        finally:
            stream.close()
        k = self._sample_source().parts
        samples: list[Any] = bufs if k == 1 else [tuple(bufs[j : j + k]) for j in range(0, len(bufs), k)]
        return [self._sample_at(i, b) for i, b in zip(got, samples, strict=True)]

    def stream(self, **kwargs: Any) -> ShardStream:
        """The same shards in streaming mode (see :class:`ShardStream`)."""
        return ShardStream(self.uris, format=self.format, config=self.config, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_native"] = None  # rebuilt on first use in a spawned worker
        return state

    def __repr__(self) -> str:
        unit = "shards" if self.format in ("wds", "tfrecord") else "files"
        return f"ShardedDataset({len(self)} samples in {len(self.uris)} {self.format} {unit})"


def _owned(sample: Any) -> Any:
    """A streamed sample with its bytes copied out of the shard's buffer: a sample waiting in the
    shuffle buffer must not keep its whole shard alive (a buffer of 1,000 samples could pin as
    many shards)."""
    if isinstance(sample, memoryview):
        return memoryview(bytes(sample))
    if isinstance(sample, dict):
        return {k: memoryview(bytes(v)) if isinstance(v, memoryview) else v for k, v in sample.items()}
    return sample


def _count(format: str, ix: Any, uri: str) -> int:  # noqa: A002 - as everywhere here
    """Samples in one shard: a file for npz/npy, rows for hdf5 (a list of dataset layouts), the
    index's samples otherwise."""
    if format in ("npz", "npy"):
        return 1
    if ix is None:
        raise InvalidConfigError(f"no index given for shard {uri}")
    if format == "hdf5":
        return int(ix[0].nrows)
    return len(ix)


def _hdf5_layout(uri: str, datasets: Sequence[str] | None, config: StorageConfig | None) -> list[Any]:
    """The row layouts of ``datasets`` in one HDF5 file, read by h5py through s3dlio.open; every
    dataset must have byte-addressable rows of at least one byte."""
    from . import open as open_object
    from .formats.hdf5 import row_layout

    with open_object(uri, "rb", config=config) as f:
        try:
            layouts = row_layout(f, datasets)
        except InvalidConfigError as e:
            raise InvalidConfigError(f"{uri}: {e}", uri) from None
    for lay in layouts:
        if not lay.addressable:
            raise InvalidConfigError(
                f"{uri}: dataset {lay.name!r} cannot be read by ranged GETs: {lay.reason} (store it "
                "contiguous or in uncompressed chunks of whole rows, or read it with h5py over "
                "s3dlio.open)",
                uri,
            )
        if lay.row_nbytes == 0:
            raise InvalidConfigError(f"{uri}: dataset {lay.name!r} has empty rows", uri)
    return layouts


# -------------------------------------------------------------------------------------------------
# Indexing
# -------------------------------------------------------------------------------------------------


class _Indexer:
    """Finds or builds the index of every shard: sidecar, local cache, a TFRecord index file from
    another tool, else the whole shard read (``concurrency`` at a time) and parsed."""

    def __init__(
        self,
        format: str,  # noqa: A002 - the issue's and webdataset's name for it
        config: StorageConfig | None,
        cache: str | os.PathLike[str] | bool,
        sidecar: bool,
        concurrency: int,
        listing: dict[str, Any],
    ) -> None:
        if concurrency < 1:
            raise InvalidConfigError("index_concurrency must be at least 1")
        self.format, self.config, self.sidecar, self.concurrency = format, config, sidecar, concurrency
        self.listing = listing
        self._dlio: dict[str, set[str]] = {}  # DLIO index folders listed so far
        self.cache: Path | None = (
            None if cache is False else _default_cache_dir() if cache is True else Path(os.fspath(cache))
        )

    def _key(self, s: _Shard) -> str:
        return hashlib.sha256(f"{self.format}\0{s.uri}\0{s.size}\0{s.etag}".encode()).hexdigest()

    def _from_cache(self, s: _Shard) -> ShardIndex | None:
        if self.cache is None:
            return None
        p = self.cache / self._key(s)
        try:
            data = p.read_bytes()
        except OSError:
            return None
        try:
            return ShardIndex.from_bytes(data, s.uri)
        except CorruptShardError:
            p.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
            return None

    def _to_cache(self, s: _Shard, ix: ShardIndex) -> None:
        if self.cache is None:
            return
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            p = self.cache / self._key(s)
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(ix.to_bytes())
            tmp.replace(p)  # atomic: a concurrent reader sees the old entry or the new one
        except OSError:
            pass  # the cache is an optimisation: a read-only home directory must not fail a job

    def _sidecar_key(self, s: _Shard) -> bytes:
        return f"s3dlio-index\0{s.size}\0{s.etag}\0".encode()

    def _from_sidecar(self, s: _Shard) -> ShardIndex | None:
        if not self.sidecar or s.uri + _SIDECAR not in self.listing:
            return None
        from . import get

        data = bytes(get(s.uri + _SIDECAR, config=self.config))
        head = self._sidecar_key(s)
        if not data.startswith(head):
            return None  # written for another version of the shard: rebuilt and rewritten
        return ShardIndex.from_bytes(data[len(head) :], s.uri + _SIDECAR)

    def _to_sidecar(self, s: _Shard, ix: ShardIndex) -> None:
        if self.sidecar:
            from . import put

            put(s.uri + _SIDECAR, self._sidecar_key(s) + ix.to_bytes(), config=self.config)

    def _tfrecord_index_file(self, s: _Shard) -> str | None:
        """An index another tool wrote: next to the shard (the tfrecord package's ``x.index`` or
        ``x.tfrecord.index``, DALI's ``x.idx``), or where DLIO (and ``s3dlio.gen``'s DLIO layout)
        puts it: ``<root>/index/<split>/<shard name>.idx`` for ``<root>/<split>/<shard name>``."""
        stem = s.uri.rsplit(".", 1)[0]
        for cand in (s.uri + ".index", stem + ".index", s.uri + ".idx", stem + ".idx"):
            if cand in self.listing:
                return cand
        parent, name = s.uri.rsplit("/", 1)
        root, split = parent.rsplit("/", 1) if parent.count("/") > 2 else ("", "")
        if not root:
            return None
        folder = f"{root}/index/{split}/"
        if folder not in self._dlio:
            from . import list as list_objects

            try:
                self._dlio[folder] = {o.uri for o in list_objects(folder, config=self.config)}
            except NotFoundError:
                self._dlio[folder] = set()
        cand = f"{folder}{name}.idx"
        return cand if cand in self._dlio[folder] else None

    def run(self, shards: Sequence[_Shard]) -> list[ShardIndex]:
        out: list[ShardIndex | None] = [None] * len(shards)
        todo: list[int] = []
        for i, s in enumerate(shards):
            ix = self._from_sidecar(s) or self._from_cache(s)
            if ix is None and self.format == "tfrecord":
                other = self._tfrecord_index_file(s)
                if other is not None:
                    from . import get
                    from .formats.tfrecord import parse_index

                    ix = parse_index(bytes(get(other, config=self.config)).decode(), s.uri, s.size)
                    self._to_cache(s, ix)
            if ix is None:
                todo.append(i)
            out[i] = ix
        for lo in range(0, len(todo), self.concurrency):
            window = todo[lo : lo + self.concurrency]
            bufs = _core.get_many([shards[i].uri for i in window], None, _native(self.config))
            for i, buf in zip(window, bufs, strict=True):
                s = shards[i]
                ix = self._parse(buf, s.uri)
                self._to_cache(s, ix)
                self._to_sidecar(s, ix)
                out[i] = ix
        return [ix for ix in out if ix is not None]

    def _parse(self, buf: _core.Buffer, uri: str) -> ShardIndex:
        if self.format == "wds":
            from .formats.tar import index_wds

            return index_wds(buf, uri)
        from .formats.tfrecord import index_tfrecord

        return index_tfrecord(buf, uri)


# -------------------------------------------------------------------------------------------------
# Streaming mode
# -------------------------------------------------------------------------------------------------


class ShardStream(_IterBase):
    """Iterable dataset over whole shards, for data too large to index up front.

    Each epoch the shards are put in a seeded order (new every epoch, the same on every rank),
    dealt out by rank and then by torch DataLoader worker, fetched whole ``readahead`` shards
    ahead, parsed, and their samples mixed through a shuffle buffer of ``shuffle_buffer`` samples
    (0: shard order). The shuffle is therefore global across shards but only local within the
    buffer, as WebDataset's is.
    Samples entering the buffer are copied out of their shard, so a shard is freed once parsed:
    memory is about ``readahead`` shards plus ``shuffle_buffer`` samples.

    Resume (:meth:`state_dict` / :meth:`load_state_dict`) is exact in what it yields: every sample
    of the epoch is yielded once, before and after the restart together. The state names the
    shards already finished and, for the few shards partly yielded when it was taken (those in
    the shuffle buffer), which of their samples were yielded; a resumed epoch reads those shards
    again and skips what was yielded. The ORDER of the rest differs from an uninterrupted run
    (the shuffle buffer starts empty).
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        format: str,  # noqa: A002 - the issue's and webdataset's name for it
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        readahead: int = 2,
        decode: bool | Callable[[Any], Any] = False,
        transform: Callable[[Any], Any] | None = None,
        config: StorageConfig | None = None,
    ) -> None:
        if format not in ("wds", "tfrecord"):
            raise InvalidConfigError(f"ShardStream reads 'wds' or 'tfrecord' shards, not {format!r}")
        if isinstance(shards, str):
            raise InvalidConfigError("shards must be a sequence of URIs, not one string")
        if int(shuffle_buffer) < 0 or int(readahead) < 1:
            raise InvalidConfigError("shuffle_buffer must be >= 0 and readahead >= 1")
        self.shards = list(shards)
        self.format, self.shuffle, self.seed = format, bool(shuffle), int(seed)
        self.shuffle_buffer, self.readahead = int(shuffle_buffer), int(readahead)
        self._decode = _decoder(format, decode)
        self.transform = transform
        self.config = config
        self.epoch = 0
        self._done: set[int] = set()  # shard numbers finished this epoch
        self._partial: dict[int, set[int]] = {}  # shard number -> sample numbers yielded

    @classmethod
    def from_prefix(
        cls,
        uri: str,
        *,
        format: str,  # noqa: A002 - the issue's and webdataset's name for it
        pattern: str | None = None,
        config: StorageConfig | None = None,
        **kwargs: Any,
    ) -> ShardStream:
        """The shards of ``format`` under ``uri`` (one listing, key order); no index is built."""
        from . import list as list_objects

        if format not in ("wds", "tfrecord"):
            raise InvalidConfigError(f"ShardStream reads 'wds' or 'tfrecord' shards, not {format!r}")
        uris = sorted(
            o.uri
            for o in list_objects(uri, pattern=pattern, config=config)
            if not o.is_dir and o.uri.endswith(_SUFFIXES[format])
        )
        if not uris:
            raise NotFoundError(f"no {format} shards under {uri}", uri)
        return cls(uris, format=format, config=config, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Use the shard order of ``epoch`` from the next iteration on (from its beginning)."""
        self.epoch = int(epoch)
        self._done, self._partial = set(), {}

    def shard_order(self) -> list[int]:
        """This process's shards for the current epoch, in the order they are read (after the
        seeded shuffle, rank sharding and worker sharding)."""
        order = _core.epoch_indices(len(self.shards), self.seed, self.epoch, self.shuffle, 0, 1, 0, 1, "pad")
        rank, world = distributed_info()
        worker, workers = worker_info()
        return order[rank::world][worker::workers]

    def _samples(self, buf: _core.Buffer, uri: str) -> Iterator[Any]:
        if self.format == "wds":
            from .formats.tar import iter_wds

            for sample in iter_wds(buf, uri):
                sample["__url__"] = uri
                yield sample
        else:
            from .formats.tfrecord import iter_records

            yield from iter_records(buf, uri)

    def _finish(self, sample: Any) -> Any:
        if self._decode is not None:
            sample = self._decode(sample)
        return sample if self.transform is None else self.transform(sample)

    def __iter__(self) -> Iterator[Any]:
        order = [s for s in self.shard_order() if s not in self._done]
        rng = random.Random(f"{self.seed}/{self.epoch}/{len(self._done)}/{len(self._partial)}")  # noqa: S311 - a seeded shuffle, not cryptography
        buffer: list[tuple[int, int, Any]] = []  # (shard, sample number, sample)
        remaining: dict[int, int] = {}  # shard -> samples of it not yet yielded
        pool = PoolConfig(pool_size=self.readahead, readahead_batches=self.readahead)
        stream = _core.BatchStream(
            [self.shards[s] for s in order], list(range(len(order))), {"batch_size": 1, "in_order": True},
            pool.to_dict(), RangeEngineConfig().to_dict(), None, _native(self.config), None,
        )  # fmt: skip

        def emit(entry: tuple[int, int, Any]) -> Any:
            shard, num, sample = entry
            self._partial.setdefault(shard, set()).add(num)
            remaining[shard] -= 1
            if remaining[shard] == 0:
                self._done.add(shard)
                self._partial.pop(shard, None)
            return self._finish(sample)

        try:
            for _pos, idx, bufs in stream:
                shard = order[idx[0]]
                uri = self.shards[shard]
                skip = self._partial.get(shard, set())
                fresh = [(shard, n, s) for n, s in enumerate(self._samples(bufs[0], uri)) if n not in skip]
                remaining[shard] = len(fresh)
                if not fresh:
                    self._done.add(shard)
                    self._partial.pop(shard, None)
                for entry in fresh:
                    if self.shuffle_buffer == 0:
                        yield emit(entry)
                        continue
                    entry = (entry[0], entry[1], _owned(entry[2]))  # the shard's buffer can go
                    if len(buffer) < self.shuffle_buffer:
                        buffer.append(entry)
                        continue
                    j = rng.randrange(len(buffer))
                    buffer[j], entry = entry, buffer[j]
                    yield emit(entry)
            rng.shuffle(buffer)
            while buffer:
                yield emit(buffer.pop())
            self.epoch += 1
            self._done, self._partial = set(), {}
        finally:
            stream.close()

    def state_dict(self) -> dict[str, Any]:
        """Where this process is in the epoch: O(shards + shuffle buffer), independent of how many
        samples the dataset holds."""
        return {
            "format": "s3dlio.ShardStream/1",
            "epoch": self.epoch,
            "seed": self.seed,
            "done": sorted(self._done),
            "partial": {str(k): sorted(v) for k, v in self._partial.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "s3dlio.ShardStream/1":
            raise InvalidConfigError("not a ShardStream state (state_dict() of a ShardStream)")
        if state["seed"] != self.seed:
            raise InvalidConfigError(
                f"state was saved with seed {state['seed']}, this stream has {self.seed}"
            )
        self.epoch = int(state["epoch"])
        self._done = {int(s) for s in state["done"]}
        self._partial = {int(k): {int(n) for n in v} for k, v in state["partial"].items()}

    def __repr__(self) -> str:
        return f"ShardStream({len(self.shards)} {self.format} shards, epoch={self.epoch})"
