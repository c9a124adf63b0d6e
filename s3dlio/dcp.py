"""``torch.distributed.checkpoint`` (DCP) storage on any s3dlio URI (``s3://``, ``file://``,
``direct://``).

>>> import torch.distributed.checkpoint as dcp
>>> dcp.save(state_dict, storage_writer=s3dlio.dcp.StorageWriter("s3://bucket/ckpt/step-100"))
>>> dcp.load(state_dict, storage_reader=s3dlio.dcp.StorageReader("s3://bucket/ckpt/step-100"))

Both are DCP's own :class:`~torch.distributed.checkpoint.FileSystemWriter` /
:class:`~torch.distributed.checkpoint.FileSystemReader` (same planners, same file layout, same
``.metadata``) over :class:`S3dlioFileSystem`, with three changes:

* every rank writes its own files at once, ``thread_count`` files per rank in parallel, each
  streamed through :func:`s3dlio.open` (concurrent multipart parts); a failure in any writer
  thread fails the save (DCP's own writer threads lose their exceptions);
* ``.metadata`` is written directly by the coordinator after every rank's files are complete
  (one atomic PUT or rename-into-place, never a temporary object copied afterwards), and an
  overwrite removes the old ``.metadata`` before any data file is replaced, so a crash never
  leaves a ``.metadata`` naming a mix of old and new data;
* reads coalesce: the items of one file are sorted by offset, neighbours closer than
  ``max_gap`` are merged into ranges of up to ``max_range_size`` bytes, and the ranges are
  fetched concurrently (``max_concurrency``, at most ``max_inflight_bytes`` held) with
  :func:`s3dlio.get_range`; DCP then reads each item from a slice of the fetched buffer.

Importing this module imports torch.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future as CFuture
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO, Any, cast

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint import filesystem as _fs
from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

import s3dlio as _s3

from .checkpoint import _count, _MemoryReader, _storage_cause
from .config import StorageConfig
from .exceptions import InvalidConfigError, StorageIOError

__all__ = ["S3dlioFileSystem", "StorageReader", "StorageWriter"]

MiB = 1024 * 1024
_SCHEMES = ("s3://", "az://", "gs://", "file://", "direct://")


def _to_uri(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if "://" in p:
        return p.rstrip("/")
    return "file://" + os.path.abspath(p)  # a local path: file://


class S3dlioFileSystem(FileSystemBase):
    """DCP's filesystem interface over s3dlio URIs: streams from :func:`s3dlio.open`, paths joined
    with ``/``, ``exists``/``rm_file`` as object operations, no directories to create.
    ``part_size``, ``max_parts_in_flight`` and ``fsync`` go to every writer."""

    def __init__(
        self,
        *,
        config: StorageConfig | None = None,
        part_size: int | None = None,
        max_parts_in_flight: int | None = None,
        fsync: bool | None = None,
    ) -> None:
        self.config = config
        self.part_size = part_size
        self.max_parts_in_flight = max_parts_in_flight
        self.fsync = fsync

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        """A reader (``"rb"``) or writer (``"wb"``) from :func:`s3dlio.open`. A writer is
        published when the block ends cleanly and aborted when it raises."""
        uri = _to_uri(path)
        if mode == "wb":
            with _s3.open(
                uri,
                "wb",
                part_size=self.part_size,
                max_parts_in_flight=self.max_parts_in_flight,
                fsync=self.fsync,
                config=self.config,
            ) as w:
                yield cast(io.IOBase, w)
        elif mode == "rb":
            with _s3.open(uri, "rb", config=self.config) as r:
                yield cast(io.IOBase, r)
        else:
            raise InvalidConfigError(f"create_stream takes mode 'rb' or 'wb', got {mode!r}", uri)

    def concat_path(self, path: str | os.PathLike[str], suffix: str) -> str:
        """``path/suffix``."""
        return f"{_to_uri(path)}/{suffix}"

    def init_path(self, path: str | os.PathLike[str]) -> str:
        """The URI of a checkpoint (a local path becomes ``file://``; a trailing ``/`` is dropped)."""
        return _to_uri(path)

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        """Copy then delete (objects have no rename). Not atomic on object stores; the writer
        here never needs it."""
        src, dst = _to_uri(path), _to_uri(new_path)
        _s3.put(dst, _s3.get(src, config=self.config), config=self.config)
        _s3.delete(src, config=self.config)

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        """Nothing to do: writers create the parent directories of local files themselves."""

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True for ``s3://``, ``file://`` and ``direct://`` URIs."""
        return isinstance(checkpoint_id, str) and checkpoint_id.startswith(_SCHEMES)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether the object exists."""
        return _s3.exists(_to_uri(path), config=self.config)

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        """Delete the object (a missing one is no error)."""
        _s3.delete(_to_uri(path), config=self.config)

    def ls(self, path: str | os.PathLike[str]) -> list[str]:
        """URIs of the objects under ``path/``."""
        return [i.uri for i in _s3.list(_to_uri(path) + "/", config=self.config)]


class StorageWriter(FileSystemWriter):
    """A DCP storage writer to ``uri``: ``dcp.save(sd, storage_writer=StorageWriter(uri))``.

    ``thread_count`` files per rank are written in parallel (DCP splits each rank's items into
    that many files, balanced by size); every rank writes at once. ``part_size`` and
    ``max_parts_in_flight`` go to each file's :func:`s3dlio.open` writer; ``sync_files``
    becomes its ``fsync`` (local files flushed to stable storage before they are renamed into
    place; default: the config's ``fsync``). Other keyword arguments go to
    :class:`~torch.distributed.checkpoint.FileSystemWriter` (``overwrite``,
    ``single_file_per_rank``, ``per_thread_copy_ahead``, ...).
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        thread_count: int = 1,
        config: StorageConfig | None = None,
        part_size: int | None = None,
        max_parts_in_flight: int | None = None,
        sync_files: bool | None = None,
        **kwargs: Any,
    ) -> None:
        thread_count = _count("thread_count", thread_count, 1)
        super().__init__(path=_to_uri(uri), thread_count=thread_count, sync_files=False, **kwargs)
        self.fs = S3dlioFileSystem(  # type: ignore[assignment, unused-ignore]
            config=config, part_size=part_size, max_parts_in_flight=max_parts_in_flight, fsync=sync_files
        )
        self.path = self.fs.init_path(uri)
        self.sync_files = False  # FileSystemWriter's os.fsync(fileno()): the writer's fsync does it
        self._is_coordinator = True

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Record the rank and whether this one writes ``.metadata`` (DCP calls this)."""
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        self._is_coordinator = is_coordinator

    def _metadata_uri(self) -> str:
        if not self.use_collectives and self.rank is not None:
            return str(self._get_metadata_path(self.rank))
        return str(self._get_metadata_path())

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """As FileSystemWriter's, except that an overwrite first deletes the old ``.metadata``
        (on the rank that writes it, before any rank writes data), so an interrupted save leaves
        no checkpoint rather than old metadata over new data."""
        if self._metadata_exists():
            if not self.overwrite:
                raise RuntimeError(f"Checkpoint already exists at {self.path} and overwrite=False.")
            if self._is_coordinator or not self.use_collectives:
                self.fs.rm_file(self._metadata_uri())
        if self.rank is not None and not self.use_collectives:
            plan = dataclasses.replace(plan, storage_data=_fs._StoragePrefix(f"__{self.rank}_"))
        return plan

    def _write_data(self, planner: SavePlanner, file_queue: Any) -> Future[list[WriteResult]]:
        """``thread_count`` threads drain the file queue (DCP's per-file writer); unlike
        FileSystemWriter's threads, an exception in any of them fails the save."""
        import queue

        result_queue: queue.Queue[list[WriteResult]] = queue.Queue()

        def drain() -> None:
            try:
                write_files()
            except RuntimeError as e:
                # torch.save buries a failed write (access denied, a full store) under its own
                # "unexpected pos" error; DCP's report of the rank's failure would show only that.
                cause = _storage_cause(e)
                if cause is None:
                    raise
                raise cause from None

        def write_files() -> None:
            _fs._write_files_from_queue(
                create_stream=self.fs.create_stream,
                file_queue=file_queue,
                result_queue=result_queue,
                planner=planner,
                transforms=self.transforms,
                inflight_threshhold=self.per_thread_copy_ahead,
                use_fsync=False,
                thread_count=self.thread_count,
                serialization_format=self.serialization_format,
            )

        with ThreadPoolExecutor(self.thread_count, thread_name_prefix="s3dlio-dcp-write") as pool:
            futures = [pool.submit(drain) for _ in range(self.thread_count)]
            for f in futures:
                f.result()
        res: list[WriteResult] = []
        while not result_queue.empty():
            res += result_queue.get_nowait()
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(res)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Write ``.metadata`` (DCP calls this on the coordinator once every rank's files are
        complete): one object written in place, never a temporary renamed afterwards."""
        metadata.version = _fs.CURRENT_DCP_VERSION
        storage_md = {}
        for wr_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in wr_list})
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        with self.fs.create_stream(self._metadata_uri(), "wb") as f:
            pickle.dump(metadata, cast(IO[bytes], f))

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True for the URIs s3dlio serves (``s3://``, ``file://``, ``direct://``)."""
        return S3dlioFileSystem.validate_checkpoint_id(checkpoint_id)


@dataclasses.dataclass
class _Range:
    """One ranged read of a file covering several items, ``[start, end)``."""

    uri: str
    start: int
    end: int
    items: list[tuple[ReadItem, Any]]


def coalesce(
    items: Sequence[tuple[ReadItem, Any]], uri_of: Callable[[str], str], max_gap: int, max_range_size: int
) -> list[_Range]:
    """Group ``(read_item, storage_info)`` pairs by file, sort each file's by offset and merge
    neighbours whose gap is at most ``max_gap`` bytes while the merged range stays within
    ``max_range_size`` (a single larger item is a range of its own)."""
    per_file: dict[str, list[tuple[ReadItem, Any]]] = {}
    for item, info in items:
        per_file.setdefault(info.relative_path, []).append((item, info))
    out: list[_Range] = []
    for rel, group in per_file.items():
        group.sort(key=lambda p: (p[1].offset, p[1].length))
        cur: _Range | None = None
        for item, info in group:
            start, end = info.offset, info.offset + info.length
            if (
                cur is not None
                and start - cur.end <= max_gap
                and max(end, cur.end) - cur.start <= max_range_size
            ):
                cur.end = max(cur.end, end)
                cur.items.append((item, info))
            else:
                cur = _Range(uri_of(rel), start, end, [(item, info)])
                out.append(cur)
    return out


class StorageReader(FileSystemReader):
    """A DCP storage reader from ``uri``: ``dcp.load(sd, storage_reader=StorageReader(uri))``.

    Reads are coalesced and concurrent (see the module docstring): ``max_gap`` (default 1 MiB)
    is the largest hole between two items read as one range, ``max_range_size`` (32 MiB) the
    largest merged range, ``max_concurrency`` (8) the ranged reads in flight and
    ``max_inflight_bytes`` (256 MiB) the most fetched-but-unconsumed bytes held at once.
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        config: StorageConfig | None = None,
        max_concurrency: int = 8,
        max_gap: int = 1 * MiB,
        max_range_size: int = 32 * MiB,
        max_inflight_bytes: int = 256 * MiB,
        **kwargs: Any,
    ) -> None:
        max_concurrency = _count("max_concurrency", max_concurrency, 1)
        max_gap = _count("max_gap", max_gap, 0)
        max_range_size = _count("max_range_size", max_range_size, 1)
        max_inflight_bytes = _count("max_inflight_bytes", max_inflight_bytes, 1)
        super().__init__(_to_uri(uri), **kwargs)
        self.fs = S3dlioFileSystem(config=config)  # type: ignore[assignment, unused-ignore]
        self.path = self.fs.init_path(uri)
        self.config = config
        self.max_concurrency = max_concurrency
        self.max_gap = max_gap
        self.max_range_size = max_range_size
        self.max_inflight_bytes = max_inflight_bytes

    def _fetch(self, r: _Range) -> Any:
        n = r.end - r.start
        if n <= self.max_range_size:
            return _s3.get_range(r.uri, r.start, n, config=self.config)
        # One item larger than a range: a reader's large readinto fetches it with concurrent
        # ranged GETs straight into the destination.
        buf = bytearray(n)
        view = memoryview(buf)
        with _s3.open(r.uri, "rb", config=self.config) as f:
            f.seek(r.start)
            got = 0
            while got < n:
                k = f.readinto(view[got:])
                if not k:
                    raise StorageIOError(f"{r.uri}: ended at {r.start + got}, expected {r.end} bytes", r.uri)
                got += k
        return buf

    def _fetched(self, ranges: list[_Range]) -> Iterator[tuple[_Range, Any]]:
        """``(range, buffer)`` in order, fetched ahead concurrently within the byte window."""
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="s3dlio-dcp-read") as pool:
            pending: list[tuple[_Range, CFuture[Any]]] = []
            held = 0
            nxt = 0
            try:
                while nxt < len(ranges) or pending:
                    while nxt < len(ranges) and (
                        not pending or held + (ranges[nxt].end - ranges[nxt].start) <= self.max_inflight_bytes
                    ):
                        r = ranges[nxt]
                        pending.append((r, pool.submit(self._fetch, r)))
                        held += r.end - r.start
                        nxt += 1
                    r, fut = pending.pop(0)
                    buf = fut.result()
                    held -= r.end - r.start
                    yield r, buf
            finally:
                for _, fut in pending:
                    fut.cancel()

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Fetch the plan's items with coalesced, concurrent ranged reads, then hand each to the
        planner (bytes to ``load_bytes``, tensors ``torch.load``-ed, narrowed and copied into
        ``resolve_tensor``'s target), in the calling thread."""
        pairs = [(item, self.storage_data[item.storage_index]) for item in plan.items]
        ranges = coalesce(
            pairs, lambda rel: str(self.fs.concat_path(self.path, rel)), self.max_gap, self.max_range_size
        )
        for r, buf in self._fetched(ranges):
            mv = memoryview(buf)
            for req, info in r.items:
                view = mv[info.offset - r.start : info.offset - r.start + info.length]
                self._load_item(planner, req, info, view)
            mv.release()
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _load_item(self, planner: LoadPlanner, req: ReadItem, info: Any, view: memoryview) -> None:
        raw = cast(IO[bytes], _MemoryReader(view))
        stream = self.transforms.transform_load_stream(req, info.transform_descriptors or (), raw)
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(stream.read(-1)))
            return
        seekable = stream if stream.seekable() else io.BytesIO(stream.read(-1))
        tensor = cast(torch.Tensor, torch.load(seekable, map_location="cpu", weights_only=True))
        tensor = narrow_tensor_by_index(tensor, req.storage_offsets, req.lengths)
        target = planner.resolve_tensor(req).detach()
        if target.size() != tensor.size():
            raise AssertionError(f"req {req.storage_index} mismatch sizes {target.size()} vs {tensor.size()}")
        target.copy_(tensor)
        planner.commit_tensor(req, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        """True for the URIs s3dlio serves (``s3://``, ``file://``, ``direct://``)."""
        return S3dlioFileSystem.validate_checkpoint_id(checkpoint_id)
