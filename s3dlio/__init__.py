"""s3dlio: fast, cancellable object-storage I/O for AI/ML pipelines.

One API over ``s3://bucket/key`` (any S3-compatible server), ``file:///path`` (page-cache reads)
and ``direct:///path`` (O_DIRECT). The work runs in a Rust core on a per-process tokio runtime;
reads come back as zero-copy :class:`Buffer` objects. Every blocking call releases the GIL and
answers Ctrl-C within a fraction of a second. Each call has an ``_async`` twin for asyncio.

Only numpy is needed to import it; torch, jax and tensorflow are optional.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import _core, exceptions
from ._core import Buffer, CancelToken, ListIter, ObjectInfo, live_tasks
from .config import StorageConfig, native_config
from .files import (
    AsyncObjectReader,
    AsyncObjectWriter,
    ObjectReader,
    ObjectWriter,
    open,  # noqa: A004 - s3dlio.open mirrors the builtin, for objects
    open_async,
)
from .options import LoaderOptions, PoolConfig, RangeEngineConfig

if TYPE_CHECKING:
    from typing_extensions import Buffer as BufferLike

    from .data import DataLoader, ObjectDataset, ObjectIterableDataset
    from .sharded import ShardedDataset, ShardStream

__version__ = _core.__version__


def oplog(path: str | os.PathLike[str] | None) -> str | None:
    """Log every storage request of this process as one JSON line appended to ``path`` (created
    if missing); ``None`` stops. Returns the path logged to before, if any. The environment
    variable ``S3DLIO_OPLOG=path`` does the same from the start (and in every child process).

    A line: ``t`` (start, Unix seconds), ``pid``, ``op`` (get, put, head, list, delete, copy,
    multipart), ``uri``, ``range`` (``[offset, length]`` of a ranged read or a part), ``status``
    (``ok`` or the error's cause, as in :func:`stats`), ``http_status``, ``bytes``,
    ``latency_ms``, ``attempts`` (made by s3dlio's retry loop: S3 writes retried inside the AWS
    SDK count as one), ``error`` (the message). Never a credential, signature or header. A line is
    one append-mode write, so several processes can share one file. A file that cannot be opened
    raises :class:`~s3dlio.exceptions.InvalidConfigError` here."""
    before = _core.oplog(None if path is None else os.fspath(path))
    return None if before is None else str(before)


def stats(reset: bool = False) -> dict[str, Any]:
    """What this process's storage requests have done so far, counted in the Rust core where the
    work happens (every scheme, every API: get/put helpers, loaders, readers, writers, copies).

    Returns a dict:

    * ``bytes_read``, ``bytes_written``, ``bytes_copied`` (server-side copies);
    * ``objects_read`` (whole objects), ``objects_written`` (published), ``objects_deleted``,
      ``keys_listed``;
    * ``requests`` (all operations), ``in_flight`` now and ``max_in_flight`` since the last reset;
    * ``errors`` and ``retries``: dicts by cause (``throttled``, ``timeout``, ``server_error``,
      ``connection``, ``not_found``, ``permission_denied``, ``cancelled``, ``invalid``, ``changed``,
      ``direct_io``); a request retried twice then served counts two retries and no error;
    * ``ops``: per operation (``get``, ``put``, ``head``, ``list``, ``delete``, ``copy``,
      ``multipart``): ``requests``, ``errors``, ``bytes``, and ``latency_ms`` and ``ttfb_ms``
      histograms read as ``count``, ``mean``, ``p50``, ``p90``, ``p99`` and ``max`` (milliseconds;
      ``None`` when empty; quantiles within 12.5 % above the true value). ``latency_ms`` is the
      whole request as the caller waited for it, retries included; ``ttfb_ms`` is each attempt's
      time to its response headers (network stores).

    With ``reset=True`` the counters start again from zero after this read (``in_flight`` is never
    reset), so two reads bracket an interval. A forked child starts from zero.
    """
    return _core.stats(reset)


__all__ = [
    "AsyncObjectReader",
    "AsyncObjectWriter",
    "Buffer",
    "CancelToken",
    "DataLoader",
    "ListIter",
    "LoaderOptions",
    "ObjectDataset",
    "ObjectInfo",
    "ObjectIterableDataset",
    "ObjectReader",
    "ObjectWriter",
    "PoolConfig",
    "RangeEngineConfig",
    "ShardStream",
    "ShardedDataset",
    "StorageConfig",
    "__version__",
    "copy",
    "copy_async",
    "copy_tree",
    "copy_tree_async",
    "crc32c",
    "create_bucket",
    "create_bucket_async",
    "delete",
    "delete_async",
    "delete_bucket",
    "delete_bucket_async",
    "delete_many",
    "delete_many_async",
    "delete_prefix",
    "delete_prefix_async",
    "download",
    "download_async",
    "exceptions",
    "exists",
    "exists_async",
    "get",
    "get_async",
    "get_many",
    "get_many_async",
    "get_range",
    "get_range_async",
    "iter_get",
    "list",
    "list_async",
    "list_iter",
    "live_tasks",
    "open",
    "open_async",
    "oplog",
    "put",
    "put_async",
    "put_many",
    "put_many_async",
    "stat",
    "stat_async",
    "stats",
    "upload",
    "upload_async",
]

_list = list  # the builtin, shadowed below by s3dlio.list

_LAZY = {"DataLoader", "ObjectDataset", "ObjectIterableDataset"}
_LAZY_SHARDED = {"ShardedDataset", "ShardStream"}
# Submodules that import a framework when used: `s3dlio.checkpoint` works after `import s3dlio`.
_SUBMODULES = {"checkpoint", "dcp", "lightning", "jax", "tf", "data", "sharded", "formats", "gen", "ray"}


def __getattr__(name: str) -> object:
    # The data module imports torch when it is installed; load it only when it is used, so
    # `import s3dlio` stays numpy-only and fast.
    if name in _LAZY:
        from . import data

        return getattr(data, name)
    if name in _LAZY_SHARDED:
        from . import sharded

        return getattr(sharded, name)
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 's3dlio' has no attribute {name!r}")


_native = native_config


def _drain_asyncio_bridge() -> None:
    # At exit, before the interpreter finalizes: let tokio workers that are handing an asyncio
    # result back to Python (which releases and retakes the GIL) finish. A worker retaking the
    # GIL during finalization is ended with pthread_exit, which aborts the process.
    deadline = time.monotonic() + 2.0
    while _core._asyncio_tasks() and time.monotonic() < deadline:
        time.sleep(0.001)


atexit.register(_drain_asyncio_bridge)


def _uris(uris: Iterable[str], what: str = "get_many() takes a sequence of URIs") -> Sequence[str]:
    if isinstance(uris, str):
        raise exceptions.InvalidConfigError(f"{what}, not a single string")
    return uris if isinstance(uris, (_list, tuple)) else _list(uris)


def _path(p: str | os.PathLike[str]) -> str:
    return os.fspath(p)


def crc32c(data: BufferLike, value: int = 0) -> int:
    """CRC32C (Castagnoli) of any buffer, continuing from ``value``:
    ``crc32c(b, crc32c(a)) == crc32c(a + b)``. Hardware accelerated; the checksum the writer
    reports (``ObjectWriter.crc32c``) and checkpoint manifests record."""
    return _core.crc32c(data, value)


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


def get(
    uri: str, *, range_engine: RangeEngineConfig | None = None, config: StorageConfig | None = None
) -> Buffer:
    """Read a whole object into a zero-copy :class:`Buffer`.

    >>> buf = s3dlio.get("s3://bucket/key")
    >>> arr = numpy.frombuffer(buf, dtype=numpy.uint8)   # shares the Rust memory

    On S3 the first request asks for the object's first ``range_engine.chunk_size`` bytes (8 MiB
    by default), which also tells its size; a larger object then gets the rest as concurrent
    ranged GETs (``max_concurrent_ranges`` in flight) written straight into one buffer. An object
    replaced while it is being read is an error, never a mix of two versions' bytes.
    """
    return _core.get(uri, _range(range_engine), _native(config))


def _range(range_engine: RangeEngineConfig | None) -> dict[str, object] | None:
    return None if range_engine is None else range_engine.to_dict()


def get_range(
    uri: str, offset: int, length: int | None = None, *, config: StorageConfig | None = None
) -> Buffer:
    """Read ``length`` bytes starting at ``offset`` (to the end when ``length`` is None).

    A range that does not lie entirely inside the object raises
    :class:`~s3dlio.exceptions.RangeError`; s3dlio never returns short or padded data.
    """
    _check_range(uri, offset, length)
    return _core.get_range(uri, offset, length, _native(config))


_U64 = 1 << 64


def _concurrency(n: object) -> int | None:
    """``max_concurrency`` is a positive int (or None for the config's): anything else is an
    :class:`~s3dlio.exceptions.InvalidConfigError`, never an OverflowError."""
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < _U64:
        raise exceptions.InvalidConfigError(f"max_concurrency must be an int of at least 1, got {n!r}")
    return n


def _check_range(uri: str, offset: object, length: object) -> None:
    """Offsets and lengths are unsigned 64-bit byte counts: anything else is an impossible range
    (a :class:`~s3dlio.exceptions.RangeError`, a ValueError naming the URI), never an overflow."""
    for name, v in (("offset", offset), ("length", length)):
        if v is None and name == "length":
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise exceptions.InvalidConfigError(f"{name} must be an int, not {type(v).__name__}", uri)
        if not 0 <= v < _U64:
            raise exceptions.RangeError(f"range not satisfiable: {uri}: {name} {v} is not in [0, 2**64)", uri)


def get_many(
    uris: Iterable[str], *, max_concurrency: int | None = None, config: StorageConfig | None = None
) -> _list[Buffer]:
    """Read many objects concurrently; results are in input order.

    At most ``max_concurrency`` (default ``config.max_concurrency``) requests are in flight. The
    first failure is raised naming its URI and the remaining requests are cancelled.
    """
    return _core.get_many(_uris(uris), _concurrency(max_concurrency), _native(config))


ITER_GET_MAX_BYTES = 256 * 1024 * 1024
"""``iter_get``'s default byte budget: fetched-ahead objects it holds at most (see its docs)."""


def iter_get(
    uris: Iterable[str],
    *,
    max_concurrency: int | None = None,
    max_bytes: int | None = ITER_GET_MAX_BYTES,
    config: StorageConfig | None = None,
) -> Iterator[Buffer]:
    """Read many objects concurrently and yield them one by one, in input order.

    Unlike :func:`get_many`, which returns every buffer at once, this holds a bounded window: at
    most ``max_concurrency`` (default ``config.max_concurrency``) requests in flight, and at most
    ``max_bytes`` (default 256 MiB) of objects fetched ahead of the consumer, in flight and
    waiting, but always at least one object. A request starts only once its share of the budget
    (the mean size of the objects so far) is free, and the share comes back when the loop takes
    the object; so small objects get the full concurrency and 16 MiB ones 16 at a time. A loop
    that drops each buffer before taking the next keeps its memory at the window, as a loop of
    single GETs would, and its freed buffers are reused by the reads that follow (the buffer
    pool). ``max_bytes=None`` bounds the window by requests only (up to ``max_concurrency``
    requests in flight plus as many objects waiting). The fetching runs in the same Rust pool as
    :class:`DataLoader`.

    The first failure is raised naming its URI and the rest is cancelled; so are leaving the loop
    early (``break``, or the generator being closed) and Ctrl-C.
    """
    order = _uris(uris, "iter_get() takes a sequence of URIs")
    n = _concurrency(max_concurrency) or (config or StorageConfig()).max_concurrency
    budget: object = max_bytes  # checked at run time: callers may pass anything
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget < _U64
    ):
        raise exceptions.InvalidConfigError(
            f"max_bytes must be an int of at least 1 or None, got {max_bytes!r}"
        )
    pool = PoolConfig(pool_size=n, readahead_batches=n, adaptive=True)
    stream = _core.BatchStream(
        _list(order),
        _list(range(len(order))),
        {"batch_size": 1, "in_order": True},
        {**pool.to_dict(), "max_bytes": max_bytes},
        RangeEngineConfig().to_dict(),
        None,
        _native(config),
    )  # fmt: skip (bad URIs and options are refused here, at the call; fetching starts at once)
    return _buffers(stream)


def _buffers(stream: _core.BatchStream) -> Iterator[Buffer]:
    try:
        for _positions, _indices, bufs in stream:
            yield bufs[0]
    finally:
        stream.close()


def stat(uri: str, *, config: StorageConfig | None = None) -> ObjectInfo:
    """Size, ETag and last-modified time of one object (HEAD for S3, ``stat`` for files)."""
    return _core.stat(uri, _native(config))


def exists(uri: str, *, config: StorageConfig | None = None) -> bool:
    """True when the object exists; other errors (403, timeouts) are raised, not hidden."""
    return _core.exists(uri, _native(config))


def list(  # noqa: A001 - mirrors the storage verb; the builtin stays reachable as builtins.list
    uri: str, *, recursive: bool = True, pattern: str | None = None, config: StorageConfig | None = None
) -> _list[ObjectInfo]:
    """List the objects under a prefix, following every page (no 1,000-key cap).

    ``uri`` is a prefix: ``s3://bucket/data/`` lists ``data/...``; ``s3://bucket/da`` also
    matches ``data2/...``. With ``recursive=False`` the listing stops at the next ``/`` and
    common prefixes come back as entries with ``is_dir=True``; folder markers (zero-byte keys
    ending in ``/``, as the AWS console creates) are listed with ``is_dir=True`` too, and are
    never samples or transferred files. ``pattern`` is a glob matched
    against the key relative to the prefix (``*`` also matches ``/``; ``?``, ``[abc]``,
    ``{a,b}`` work as in a shell). Each entry carries its size, so reads need no HEAD.
    """
    return _core.list(uri, recursive, pattern, _native(config))


def list_iter(
    uri: str, *, recursive: bool = True, pattern: str | None = None, config: StorageConfig | None = None
) -> Iterator[ObjectInfo]:
    """Like :func:`list`, but streams entries while later pages are still being fetched."""
    return _core.list_iter(uri, recursive, pattern, _native(config))


# ---------------------------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------------------------


def put(uri: str, data: BufferLike, *, config: StorageConfig | None = None) -> None:
    """Write an object from anything with the buffer protocol (bytes, bytearray, memoryview,
    numpy arrays, :class:`Buffer`), without a Python-side copy.

    Objects of at least ``config.multipart_threshold`` bytes are uploaded as a concurrent
    multipart upload; on any failure, exception or Ctrl-C the upload is aborted, never completed
    with missing parts. ``file://`` and ``direct://`` writes go to a temporary file that is
    renamed into place, so a reader never sees a partial file.
    """
    _core.put(uri, data, _native(config))


def put_many(
    items: Iterable[tuple[str, BufferLike]],
    *,
    max_concurrency: int | None = None,
    config: StorageConfig | None = None,
) -> None:
    """Write many ``(uri, data)`` objects concurrently, each as :func:`put` writes it (zero-copy,
    multipart above the threshold).

    At most ``max_concurrency`` (default ``config.max_concurrency``) writes are in flight. The
    first failure is raised naming its URI and the remaining writes are cancelled: no object is
    ever left half-written (multipart uploads in flight are aborted), but objects already
    written stay.
    """
    _core.put_many(_items(items), _concurrency(max_concurrency), _native(config))


def _items(items: Iterable[tuple[str, BufferLike]]) -> _list[tuple[str, BufferLike]]:
    out = _list(items)
    for item in out:
        pair: object = item  # checked at run time whatever the annotation says
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
            raise TypeError(f"put_many takes (uri, data) pairs, got {type(pair).__name__}: {pair!r:.80}")
    return out


def delete(uri: str, *, config: StorageConfig | None = None) -> None:
    """Delete exactly the object named: ``delete("s3://b/obj_1")`` never touches ``obj_10``.

    Deleting an object that does not exist is not an error (S3 semantics)."""
    _core.delete(uri, _native(config))


def delete_prefix(
    uri: str, *, max_concurrency: int | None = None, config: StorageConfig | None = None
) -> int:
    """Delete what the prefix names, treating it as a directory on every backend; returns how
    many objects were deleted.

    ``delete_prefix("s3://b/p")`` deletes the object ``p`` itself (if there is one) and every key
    under ``p/``, never a sibling that merely starts with ``p`` (``p2/obj``, ``p_v2``, ``pz``);
    ``s3://b/`` empties the bucket. On ``file://`` / ``direct://`` the same holds for paths, and
    directories left empty are removed. Folder markers are deleted and counted. Deletes go in
    batches (S3 DeleteObjects, up to 1,000 keys each), at most ``max_concurrency`` (default
    ``config.max_concurrency``) in flight. Listing (:func:`list`) keeps S3's string-prefix
    semantics; only this destructive call is boundary-safe.
    """
    return _core.delete_prefix(uri, _concurrency(max_concurrency), _native(config))


def upload(local_dir: str | os.PathLike[str], uri: str, *, config: StorageConfig | None = None) -> int:
    """Upload a local directory tree under a prefix, keeping relative paths; returns the file count.

    ``local_dir`` may be relative to the current directory: ``upload("./dataset", "s3://b/ds")``
    writes ``ds/a.bin``, ``ds/sub/c.bin``. Symbolic links to files and directories are followed
    (a file's content is uploaded under the link's name); a directory link that loops and a
    dangling link are errors, never silently skipped. Large files are streamed in ``part_size``
    parts, so memory stays near ``max_concurrency`` x ``part_size`` whatever the file sizes."""
    return _core.upload(_path(local_dir), uri, _native(config))


def download(uri: str, local_dir: str | os.PathLike[str], *, config: StorageConfig | None = None) -> int:
    """Download every object under a prefix into a local directory, keeping relative paths.

    ``local_dir`` may be relative to the current directory. Folder markers (zero-byte ``dir/``
    keys) are skipped; keys that would escape ``local_dir`` (``..``, absolute paths) are refused.
    Large objects are streamed in ``part_size`` ranged reads. Returns the count."""
    return _core.download(uri, _path(local_dir), _native(config))


def copy(src_uri: str, dst_uri: str, *, config: StorageConfig | None = None) -> int:
    """Copy one object to another URI, between any two schemes (``s3://`` to ``gs://``, a local
    file to ``az://``, ...); returns the bytes copied.

    Inside one S3 bucket, Azure container or GCS bucket the store copies the object itself
    (CopyObject up to 5 GiB, Copy Blob with an account key or SAS, GCS rewrite); otherwise it is streamed in ``part_size`` parts, so memory stays near
    ``max_concurrency`` x ``part_size`` whatever the size. The destination appears whole or not
    at all."""
    return _core.copy(src_uri, dst_uri, _native(config))


def copy_tree(
    src_uri: str,
    dst_uri: str,
    *,
    only: Iterable[str] | None = None,
    config: StorageConfig | None = None,
) -> int:
    """Copy every object under the prefix ``src_uri`` to the same relative keys under
    ``dst_uri``, between any two schemes; returns the object count.

    The prefix is a directory, as for :func:`delete_prefix`: ``copy_tree("s3://b/ds", ...)``
    copies ``ds/...``, never ``ds2/...``. Folder markers are not copied. ``only`` limits the copy
    to these relative keys (``"a/b.bin"`` for ``<src_uri>/a/b.bin``); one that is not under
    ``src_uri`` raises :class:`~s3dlio.exceptions.NotFoundError` naming it, before anything is
    copied."""
    keys = None if only is None else _list(_uris(only, "copy_tree(only=) takes a sequence of keys"))
    return _core.copy_tree(src_uri, dst_uri, keys, _native(config))


def delete_many(
    uris: Iterable[str], *, max_concurrency: int | None = None, config: StorageConfig | None = None
) -> int:
    """Delete exactly these objects; returns how many were deleted. A missing object is not an
    error (as for :func:`delete`). They go in batches per store (S3 DeleteObjects: up to 1,000 keys
    a request), at most ``max_concurrency`` (default ``config.max_concurrency``) batches in flight;
    the URIs may name several buckets and schemes. A failure raises an error naming its URI."""
    return _core.delete_many(
        _uris(uris, "delete_many() takes a sequence of URIs"), _concurrency(max_concurrency), _native(config)
    )


def create_bucket(uri: str, *, config: StorageConfig | None = None) -> None:
    """Create a bucket (``s3://name``) or a directory (``file://``/``direct://``)."""
    _core.create_bucket(uri, _native(config))


def delete_bucket(uri: str, *, config: StorageConfig | None = None) -> None:
    """Delete an empty bucket (or an empty directory)."""
    _core.delete_bucket(uri, _native(config))


# ---------------------------------------------------------------------------------------------
# asyncio twins: same arguments, same errors, awaitable. Cancelling the awaiting task cancels
# the Rust work.
# ---------------------------------------------------------------------------------------------


async def get_async(
    uri: str, *, range_engine: RangeEngineConfig | None = None, config: StorageConfig | None = None
) -> Buffer:
    """Async :func:`get`."""
    return await _core.get_async(uri, _range(range_engine), _native(config))


async def get_range_async(
    uri: str, offset: int, length: int | None = None, *, config: StorageConfig | None = None
) -> Buffer:
    """Async :func:`get_range`."""
    _check_range(uri, offset, length)
    return await _core.get_range_async(uri, offset, length, _native(config))


async def get_many_async(
    uris: Iterable[str], *, max_concurrency: int | None = None, config: StorageConfig | None = None
) -> _list[Buffer]:
    """Async :func:`get_many`."""
    return await _core.get_many_async(_uris(uris), _concurrency(max_concurrency), _native(config))


async def stat_async(uri: str, *, config: StorageConfig | None = None) -> ObjectInfo:
    """Async :func:`stat`."""
    return await _core.stat_async(uri, _native(config))


async def exists_async(uri: str, *, config: StorageConfig | None = None) -> bool:
    """Async :func:`exists`."""
    return await _core.exists_async(uri, _native(config))


async def list_async(
    uri: str, *, recursive: bool = True, pattern: str | None = None, config: StorageConfig | None = None
) -> _list[ObjectInfo]:
    """Async :func:`list`."""
    return await _core.list_async(uri, recursive, pattern, _native(config))


async def put_async(uri: str, data: BufferLike, *, config: StorageConfig | None = None) -> None:
    """Async :func:`put`."""
    await _core.put_async(uri, data, _native(config))


async def put_many_async(
    items: Iterable[tuple[str, BufferLike]],
    *,
    max_concurrency: int | None = None,
    config: StorageConfig | None = None,
) -> None:
    """Async :func:`put_many`."""
    await _core.put_many_async(_items(items), _concurrency(max_concurrency), _native(config))


async def delete_async(uri: str, *, config: StorageConfig | None = None) -> None:
    """Async :func:`delete`."""
    await _core.delete_async(uri, _native(config))


async def delete_prefix_async(
    uri: str, *, max_concurrency: int | None = None, config: StorageConfig | None = None
) -> int:
    """Async :func:`delete_prefix`."""
    return await _core.delete_prefix_async(uri, _concurrency(max_concurrency), _native(config))


async def copy_async(src_uri: str, dst_uri: str, *, config: StorageConfig | None = None) -> int:
    """Async :func:`copy`."""
    return await _core.copy_async(src_uri, dst_uri, _native(config))


async def copy_tree_async(
    src_uri: str,
    dst_uri: str,
    *,
    only: Iterable[str] | None = None,
    config: StorageConfig | None = None,
) -> int:
    """Async :func:`copy_tree`."""
    keys = None if only is None else _list(_uris(only, "copy_tree(only=) takes a sequence of keys"))
    return await _core.copy_tree_async(src_uri, dst_uri, keys, _native(config))


async def delete_many_async(
    uris: Iterable[str], *, max_concurrency: int | None = None, config: StorageConfig | None = None
) -> int:
    """Async :func:`delete_many`."""
    return await _core.delete_many_async(
        _uris(uris, "delete_many() takes a sequence of URIs"), _concurrency(max_concurrency), _native(config)
    )


async def upload_async(
    local_dir: str | os.PathLike[str], uri: str, *, config: StorageConfig | None = None
) -> int:
    """Async :func:`upload`."""
    return await _core.upload_async(_path(local_dir), uri, _native(config))


async def download_async(
    uri: str, local_dir: str | os.PathLike[str], *, config: StorageConfig | None = None
) -> int:
    """Async :func:`download`."""
    return await _core.download_async(uri, _path(local_dir), _native(config))


async def create_bucket_async(uri: str, *, config: StorageConfig | None = None) -> None:
    """Async :func:`create_bucket`."""
    await _core.create_bucket_async(uri, _native(config))


async def delete_bucket_async(uri: str, *, config: StorageConfig | None = None) -> None:
    """Async :func:`delete_bucket`."""
    await _core.delete_bucket_async(uri, _native(config))
