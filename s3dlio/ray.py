"""Ray Data over s3dlio: read objects into a :class:`ray.data.Dataset` and write one back.

:func:`read_objects` lists a prefix once on the driver (or takes a list of URIs) and hands Ray a
:class:`S3dlioDatasource` whose read tasks are balanced by bytes; each task fetches its objects
with :func:`s3dlio.get_many` in the Ray worker process (s3dlio's runtime is per process), a window
of bytes at a time, and yields Arrow tables with the columns of ``ray.data.read_binary_files``:
``bytes`` (binary) and ``path`` (string).

:func:`write_objects` writes one object per row through :class:`S3dlioDatasink`, whose write
tasks call :func:`s3dlio.put_many`.

This module imports ``ray`` (``pip install 's3dlio[ray]'``); ``import s3dlio`` does not.
"""

from __future__ import annotations

import inspect
import os
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped, import-not-found, unused-ignore]
import ray  # type: ignore[import-not-found, unused-ignore]
import ray.data  # type: ignore[import-not-found, unused-ignore]
from ray.data.block import (  # type: ignore[import-not-found, unused-ignore]
    Block,
    BlockAccessor,
    BlockMetadata,
)
from ray.data.datasource import (  # type: ignore[import-not-found, unused-ignore]
    Datasink,
    Datasource,
    ReadTask,
)

from . import get_many, put_many
from . import list as list_objects
from .config import StorageConfig
from .exceptions import InvalidConfigError, NotFoundError

__all__ = ["S3dlioDatasink", "S3dlioDatasource", "read_objects", "write_objects"]

MiB = 1024 * 1024

#: The most bytes one read task holds from a ``get_many`` call at a time (one window).
DEFAULT_WINDOW_BYTES = 64 * MiB
#: The most objects in one window when sizes are unknown (a URI list without ``sizes``).
_WINDOW_OBJECTS_UNKNOWN = 256
#: An Arrow ``binary`` column addresses its data with 32-bit offsets.
_BINARY_LIMIT = 2**31 - 1

_SCHEMA = pa.schema([("bytes", pa.binary()), ("path", pa.string())])
_SCHEMA_NO_PATH = pa.schema([("bytes", pa.binary())])

Transform = Callable[[Any], dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _split_by_bytes(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Cut ``range(len(sizes))`` into ``min(parts, len(sizes))`` contiguous, non-empty runs whose
    byte totals are as even as cutting at the cumulative quantiles ``i * total / parts`` makes
    them (all sizes zero: even counts)."""
    n = len(sizes)
    parts = max(1, min(parts, n))
    if n == 0:
        return []
    cum = np.cumsum(np.asarray(sizes, dtype=np.float64))
    total = float(cum[-1])
    bounds = [0]
    for i in range(1, parts):
        # The first object that ends at or past this quantile closes the run.
        j = int(np.searchsorted(cum, i * total / parts, side="left")) + 1 if total > 0 else (i * n) // parts
        # Keep every run non-empty and leave at least one object for each run still to come.
        j = max(j, bounds[-1] + 1)
        j = min(j, n - (parts - i))
        bounds.append(j)
    bounds.append(n)
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _windows(sizes: Sequence[int | None], window_bytes: int) -> Iterator[tuple[int, int]]:
    """Runs ``[a, b)`` of at most ``window_bytes`` (at least one object each); with unknown sizes,
    at most ``_WINDOW_OBJECTS_UNKNOWN`` objects."""
    a, held = 0, 0
    for i, s in enumerate(sizes):
        if s is None:
            if i - a >= _WINDOW_OBJECTS_UNKNOWN:
                yield a, i
                a, held = i, 0
            continue
        if i > a and held + s > window_bytes:
            yield a, i
            a, held = i, 0
        held += s
    if a < len(sizes):
        yield a, len(sizes)


def _binary_array(bufs: Sequence[Any], uris: Sequence[str]) -> pa.Array:
    """One Arrow ``binary`` array holding the objects' bytes, back to back."""
    lengths = np.fromiter((memoryview(b).nbytes for b in bufs), dtype=np.int64, count=len(bufs))
    offsets = np.zeros(len(bufs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > _BINARY_LIMIT:
        big = int(np.argmax(lengths))
        raise InvalidConfigError(
            f"{uris[big]}: {int(lengths[big])} bytes do not fit an Arrow binary column with the "
            "rest of its window (2 GiB at most); read objects that large with s3dlio.get or "
            "s3dlio.open",
            uris[big],
        )
    # COPY: Arrow wants one contiguous data buffer; the objects' Buffers are joined once here.
    data = b"".join(bufs)
    return pa.Array.from_buffers(
        pa.binary(), len(bufs), [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    )


def _read_task_fn(
    uris: list[str],
    sizes: list[int | None],
    config: StorageConfig | None,
    max_concurrency: int,
    window_bytes: int,
    include_paths: bool,
    transform: Transform | None,
) -> Callable[[], Iterator[Block]]:
    """The function a read task runs in a Ray worker: one ``get_many`` per window, one table per
    window."""

    def read() -> Iterator[Block]:
        for a, b in _windows(sizes, window_bytes):
            window = uris[a:b]
            bufs = get_many(window, max_concurrency=max_concurrency, config=config)
            if transform is not None:
                rows = []
                for uri, buf in zip(window, bufs, strict=True):
                    row = dict(transform(buf))
                    if include_paths:
                        row["path"] = uri
                    rows.append(row)
                yield _rows_block(rows)
                continue
            columns: dict[str, pa.Array] = {"bytes": _binary_array(bufs, window)}
            if include_paths:
                columns["path"] = pa.array(window, type=pa.string())
            del bufs
            yield pa.Table.from_pydict(columns)

    return read


def _rows_block(rows: list[dict[str, Any]]) -> Block:
    """A block from the rows a ``transform`` returned, built as Ray builds ``from_items`` blocks
    (numpy arrays become tensor columns)."""
    from ray.data._internal.delegating_block_builder import DelegatingBlockBuilder  # type: ignore[import-not-found, unused-ignore]

    builder = DelegatingBlockBuilder()  # type: ignore[no-untyped-call, unused-ignore]
    for row in rows:
        builder.add(row)
    return builder.build()


def _metadata(num_rows: int, size_bytes: int | None, input_files: list[str]) -> BlockMetadata:
    """``BlockMetadata`` across Ray versions (its fields changed over 2.x); fields this module
    knows nothing of are left ``None``."""
    known: dict[str, Any] = {"num_rows": num_rows, "size_bytes": size_bytes, "input_files": input_files}
    kwargs = {f.name: known.get(f.name) for f in fields(BlockMetadata)}
    return BlockMetadata(**kwargs)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfigError(f"{name} must be an int of at least 1, got {value!r}")


def _read_task_takes(name: str) -> bool:
    return name in inspect.signature(ReadTask.__init__).parameters


class S3dlioDatasource(Datasource):  # type: ignore[misc, unused-ignore]
    """A Ray Data source over a fixed set of objects (URIs and, where known, sizes).

    :meth:`get_read_tasks` cuts the objects, in the order given, into as many read tasks as Ray
    asks for (at most one per object), each a contiguous run holding about the same number of
    bytes. Use :func:`read_objects` rather than building one by hand.
    """

    def __init__(
        self,
        uris: Sequence[str],
        sizes: Sequence[int | None] | None = None,
        *,
        config: StorageConfig | None = None,
        max_concurrency: int = 64,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        include_paths: bool = True,
        transform: Transform | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call, unused-ignore]
        if isinstance(uris, str):
            raise InvalidConfigError("uris must be a sequence of URIs, not a single string")
        self.uris = [str(u) for u in uris]
        self.sizes: list[int | None] = [None] * len(self.uris) if sizes is None else list(sizes)
        if len(self.sizes) != len(self.uris):
            raise InvalidConfigError(f"{len(self.sizes)} sizes given for {len(self.uris)} URIs")
        if config is not None and not isinstance(config, StorageConfig):
            raise InvalidConfigError(f"config must be an s3dlio.StorageConfig, not {type(config).__name__}")
        _check_positive("max_concurrency", max_concurrency)
        _check_positive("window_bytes", window_bytes)
        if transform is not None and not callable(transform):
            raise InvalidConfigError("transform must be callable (buffer -> dict of column values)")
        self.config = config
        self.max_concurrency = max_concurrency
        self.window_bytes = window_bytes
        self.include_paths = include_paths
        self.transform = transform

    def get_name(self) -> str:
        return "S3dlio"

    def _sizes_known(self) -> bool:
        return all(s is not None for s in self.sizes)

    def _block_bytes(self, a: int, b: int) -> int | None:
        """The size Arrow reports (``Table.nbytes``, what Ray counts) of rows ``[a, b)`` without a
        transform: the objects' bytes and 4 offset bytes a row, and the paths likewise."""
        if self.transform is not None or not self._sizes_known():
            return None
        n = b - a
        total = sum(s or 0 for s in self.sizes[a:b]) + 4 * n
        if self.include_paths:
            total += sum(len(u.encode()) for u in self.uris[a:b]) + 4 * n
        return total

    def estimate_inmemory_data_size(self) -> int | None:
        return self._block_bytes(0, len(self.uris))

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None, **_: Any
    ) -> list[ReadTask]:
        weights = [s or 0 for s in self.sizes] if self._sizes_known() else [0] * len(self.uris)
        schema = None if self.transform is not None else _SCHEMA if self.include_paths else _SCHEMA_NO_PATH
        extra: dict[str, Any] = {}
        if per_task_row_limit is not None and _read_task_takes("per_task_row_limit"):
            extra["per_task_row_limit"] = per_task_row_limit
        if schema is not None and _read_task_takes("schema"):
            extra["schema"] = schema
        tasks = []
        for a, b in _split_by_bytes(weights, parallelism):
            uris, sizes = self.uris[a:b], self.sizes[a:b]
            fn = _read_task_fn(
                uris,
                sizes,
                self.config,
                self.max_concurrency,
                self.window_bytes,
                self.include_paths,
                self.transform,
            )
            tasks.append(ReadTask(fn, _metadata(b - a, self._block_bytes(a, b), uris), **extra))
        return tasks


def _num_blocks_arg(n: int | None) -> dict[str, Any]:
    """``override_num_blocks`` under the name this Ray takes (``parallelism`` before Ray 2.10)."""
    if n is None:
        return {}
    _check_positive("override_num_blocks", n)
    params = inspect.signature(ray.data.read_datasource).parameters
    return {"override_num_blocks": n} if "override_num_blocks" in params else {"parallelism": n}


def read_objects(
    source: str | Sequence[str],
    *,
    pattern: str | None = None,
    sizes: Sequence[int] | None = None,
    config: StorageConfig | None = None,
    override_num_blocks: int | None = None,
    max_concurrency: int = 64,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    include_paths: bool = True,
    transform: Transform | None = None,
    **read_args: Any,
) -> ray.data.Dataset:
    """A :class:`ray.data.Dataset` with one row per object: ``bytes`` (binary) and ``path``
    (string, the object's URI), the columns ``ray.data.read_binary_files(...,
    include_paths=True)`` gives.

    ``source`` is a prefix URI (``s3://bucket/train/``, any scheme s3dlio reads), listed once
    here on the driver with :func:`s3dlio.list` (``pattern`` is its glob; folder markers are
    skipped; rows come in key order), or a list of URIs (``sizes``, when given, balances the
    tasks by bytes and fills in Ray's metadata; without it tasks are balanced by count).

    ``override_num_blocks`` asks Ray for that many read tasks (at most one per object; by default
    two per CPU of the cluster, or one per GiB of data when that is more); each is a
    contiguous run of objects holding about the same number of bytes, and yields its rows as one
    block when they fit Ray's target block size. Inside a task, objects are fetched with
    :func:`s3dlio.get_many` (``max_concurrency`` requests in flight) ``window_bytes`` at a time,
    so a task holds about one window of fetched objects plus the Arrow table built from it.

    ``transform`` (optional) runs in the read task on each object's :class:`s3dlio.Buffer` and
    returns a dict of column values for its row (``path`` is added when ``include_paths``), in
    place of the ``bytes`` column. ``config`` (picklable) is shipped to every task; without it
    the workers resolve credentials from their own environment. Other keyword arguments go to
    :func:`ray.data.read_datasource` (``concurrency``, ``ray_remote_args``, ...).

    An empty prefix raises :class:`~s3dlio.exceptions.NotFoundError` here; an error inside a
    read task (an object deleted since the listing, a denied read) reaches the caller wrapped by
    Ray, carrying s3dlio's typed error and its URI.
    """
    if isinstance(source, str):
        if sizes is not None:
            raise InvalidConfigError(
                "sizes= goes with a list of URIs; a prefix's sizes come from its listing"
            )
        infos = [o for o in list_objects(source, pattern=pattern, config=config) if not o.is_dir]
        if not infos:
            what = f"matching {pattern!r} " if pattern else ""
            raise NotFoundError(f"no objects {what}under {source}", source)
        infos.sort(key=lambda o: o.uri)
        uris = [o.uri for o in infos]
        known: list[int | None] = [int(o.size) for o in infos]
    else:
        if pattern is not None:
            raise InvalidConfigError("pattern= filters a prefix listing; it does not apply to a list of URIs")
        uris = list(source)
        if not uris:
            raise InvalidConfigError("read_objects() was given an empty list of URIs")
        known = [None] * len(uris) if sizes is None else [int(s) for s in sizes]
    datasource = S3dlioDatasource(
        uris,
        known,
        config=config,
        max_concurrency=max_concurrency,
        window_bytes=window_bytes,
        include_paths=include_paths,
        transform=transform,
    )
    if override_num_blocks is None and "parallelism" not in read_args:
        override_num_blocks = _default_tasks(known)
    dataset: ray.data.Dataset = ray.data.read_datasource(
        datasource, **_num_blocks_arg(override_num_blocks), **read_args
    )
    return dataset


TASK_BYTES = 1 << 30  # the default gives a read task about this much data at most


def _default_tasks(sizes: Sequence[int | None]) -> int:
    """Read tasks when the caller does not say: two per CPU of the cluster (each task overlaps
    ``max_concurrency`` requests, so a few big tasks beat many small ones, whose per-task overhead
    in Ray dominates), more for data above ``TASK_BYTES`` per task (or 1,000 objects per task when
    sizes are unknown), never more than one per object."""
    resources: dict[str, Any] = ray.cluster_resources() if ray.is_initialized() else {}  # type: ignore[no-untyped-call, unused-ignore]
    cpus = int(resources.get("CPU", os.cpu_count() or 1))
    if all(s is not None for s in sizes):
        by_size = -(-sum(s or 0 for s in sizes) // TASK_BYTES)
    else:
        by_size = -(-len(sizes) // 1000)
    return max(1, min(len(sizes), max(2 * cpus, by_size)))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

_NAME_FIELDS = {"task", "index"}


def _template_fields(name: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(name) if f is not None}


def _values(column: pa.ChunkedArray | pa.Array, what: str) -> Iterator[Any]:
    """The column's values as buffers: binary and string chunks as zero-copy views of the Arrow
    data; other types (lists, tensors, objects) value by value, each of which must be bytes-like."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        t = chunk.type
        if (pa.types.is_binary(t) or pa.types.is_string(t)) and chunk.null_count == 0:
            _, offsets_buf, data_buf = chunk.buffers()
            offsets = np.frombuffer(offsets_buf, dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
            data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
            for i in range(len(chunk)):
                yield data[offsets[i] : offsets[i + 1]]
        elif (pa.types.is_large_binary(t) or pa.types.is_large_string(t)) and chunk.null_count == 0:
            _, offsets_buf, data_buf = chunk.buffers()
            offsets64 = np.frombuffer(offsets_buf, dtype=np.int64)[
                chunk.offset : chunk.offset + len(chunk) + 1
            ]
            data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
            for i in range(len(chunk)):
                yield data[offsets64[i] : offsets64[i + 1]]
        else:
            for v in chunk.to_numpy(zero_copy_only=False):
                if v is None:
                    raise InvalidConfigError(f"column {what!r} has a null value: every row needs bytes")
                if isinstance(v, str):
                    v = v.encode()
                yield v


class S3dlioDatasink(Datasink[dict[str, int]]):  # type: ignore[misc, unused-ignore]
    """Writes one object per row: the row's ``column`` (bytes-like) to ``prefix`` + its key.

    The key is ``name`` formatted with ``task`` (the write task's index, from Ray's
    ``TaskContext``) and ``index`` (the row's position within that task), or, when ``name`` has no
    ``{...}`` field, the row's value in the column ``name``. Each write task writes with
    :func:`s3dlio.put_many` (``max_concurrency`` in flight), ``window_bytes`` at a time, and returns
    ``{"objects": n, "bytes": b}``; :meth:`on_write_complete` adds them up into :attr:`result`.
    """

    def __init__(
        self,
        prefix: str,
        *,
        name: str = "{task:06d}-{index:06d}.bin",
        column: str = "bytes",
        config: StorageConfig | None = None,
        max_concurrency: int = 64,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
    ) -> None:
        if "://" not in str(prefix):
            raise InvalidConfigError(f"prefix must be a URI such as s3://bucket/out/, got {prefix!r}")
        fields_ = _template_fields(name)
        if fields_:
            unknown = fields_ - _NAME_FIELDS
            if unknown:
                raise InvalidConfigError(
                    f"name {name!r} uses {sorted(unknown)}: a key template knows only {{task}} and {{index}}"
                )
            if fields_ != _NAME_FIELDS:
                raise InvalidConfigError(
                    f"name {name!r} must use both {{task}} and {{index}}, or two rows would share a key"
                )
        if config is not None and not isinstance(config, StorageConfig):
            raise InvalidConfigError(f"config must be an s3dlio.StorageConfig, not {type(config).__name__}")
        _check_positive("max_concurrency", max_concurrency)
        _check_positive("window_bytes", window_bytes)
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.name, self.column, self.config = name, column, config
        self.key_column = None if fields_ else name
        self.max_concurrency, self.window_bytes = max_concurrency, window_bytes
        #: ``{"objects": ..., "bytes": ...}`` written, set by :meth:`on_write_complete`.
        self.result: dict[str, int] | None = None

    def get_name(self) -> str:
        return "S3dlio"

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict[str, int]:
        task = int(ctx.task_idx)
        index, objects, written = 0, 0, 0
        pending: list[tuple[str, Any]] = []
        held = 0

        def flush() -> None:
            nonlocal pending, held, objects, written
            if pending:
                put_many(pending, max_concurrency=self.max_concurrency, config=self.config)
                objects += len(pending)
                written += held
                pending, held = [], 0

        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if self.column not in table.column_names:
                raise InvalidConfigError(
                    f"the dataset has no column {self.column!r} (it has {', '.join(table.column_names)})"
                )
            values = _values(table.column(self.column), self.column)
            if self.key_column is None:
                keys: Iterable[str] = (
                    self.name.format(task=task, index=index + i) for i in range(table.num_rows)
                )
            else:
                if self.key_column not in table.column_names:
                    raise InvalidConfigError(f"the dataset has no column {self.key_column!r}")
                keys = (str(k) for k in table.column(self.key_column).to_pylist())
            for key, value in zip(keys, values, strict=True):
                size = memoryview(value).nbytes
                pending.append((self.prefix + key.lstrip("/"), value))
                held += size
                index += 1
                if held >= self.window_bytes:
                    flush()
        flush()
        return {"objects": objects, "bytes": written}

    def on_write_complete(self, write_result: Any) -> None:
        # Ray >= 2.40 passes a WriteResult (its write_returns); older versions a plain list.
        returns = getattr(write_result, "write_returns", write_result)
        self.result = {
            "objects": sum(r["objects"] for r in returns),
            "bytes": sum(r["bytes"] for r in returns),
        }


def write_objects(
    dataset: ray.data.Dataset,
    prefix: str,
    *,
    name: str = "{task:06d}-{index:06d}.bin",
    column: str = "bytes",
    config: StorageConfig | None = None,
    max_concurrency: int = 64,
    window_bytes: int = DEFAULT_WINDOW_BYTES,
    **write_args: Any,
) -> dict[str, int]:
    """Write each row of ``dataset`` as one object under ``prefix``; returns
    ``{"objects": n, "bytes": b}`` written.

    The object's bytes are the row's ``column`` (binary, string, or any bytes-like value). Its key
    under ``prefix`` is ``name`` formatted with ``task`` (Ray's index of the write task) and
    ``index`` (the row's position in that task): unique within one write, whatever Ray's
    scheduling; which rows share a task is Ray's choice. For keys that depend only on the data,
    pass a column name as ``name`` (``name="key"`` writes each row to ``prefix + row["key"]``).
    Each write task calls :func:`s3dlio.put_many` with ``max_concurrency`` writes in flight,
    ``window_bytes`` of rows at a time. Other keyword arguments go to
    :meth:`ray.data.Dataset.write_datasink` (``concurrency``, ``ray_remote_args``).
    """
    sink = S3dlioDatasink(
        prefix,
        name=name,
        column=column,
        config=config,
        max_concurrency=max_concurrency,
        window_bytes=window_bytes,
    )
    dataset.write_datasink(sink, **write_args)
    if sink.result is None:  # an empty dataset: Ray may skip on_write_complete
        return {"objects": 0, "bytes": 0}
    return sink.result
