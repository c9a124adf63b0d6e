"""Type stub of the native extension ``s3dlio._core`` (Rust, pyo3). Checked by ``mypy.stubtest``.

Users call the wrappers in :mod:`s3dlio`; this module is the thin native layer underneath.
"""

import builtins
import os
from collections.abc import Awaitable, Sequence
from typing import Any, final

from typing_extensions import Buffer as _BufferProtocol

__version__: str

@final
class Buffer:
    """Read-only bytes owned by Rust, exported through the buffer protocol without a copy.

    ``memoryview(buf)``, ``numpy.frombuffer(buf, dtype)`` and ``torch.frombuffer(buf, dtype=...)``
    share this memory; it stays alive as long as any view of it does.
    """

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    @property
    def address(self) -> int:
        """Address of the first byte (for zero-copy checks)."""

@final
class ObjectInfo:
    """One object, or (``is_dir``) a common prefix of a one-level listing or a folder marker."""

    @property
    def uri(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str | None: ...
    @property
    def last_modified(self) -> float | None:
        """Seconds since the Unix epoch."""
    @property
    def is_dir(self) -> bool: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Config:
    """Validated storage configuration. Built by :class:`s3dlio.StorageConfig`."""

    def __new__(cls, **kwargs: Any) -> Config: ...
    def to_dict(self) -> dict[str, Any]:
        """The settings (secrets redacted, the access key id shown by its last 4 characters)."""
    @staticmethod
    def schema() -> builtins.list[tuple[str, str, Any, bool, str]]:
        """Every field's declaration, in order: ``(name, type, default, secret, doc)``."""

@final
class ListIter:
    """Streams a listing page by page from a background task; closed when exhausted or dropped."""

    def __iter__(self) -> ListIter: ...
    def __next__(self) -> ObjectInfo: ...
    def close(self) -> None:
        """Stop the listing task now (idempotent)."""

def get(uri: str, range_engine: dict[str, Any] | None = None, config: Config | None = None) -> Buffer: ...
def get_range(uri: str, offset: int, length: int | None = None, config: Config | None = None) -> Buffer: ...
def get_many(
    uris: Sequence[str], max_concurrency: int | None = None, config: Config | None = None
) -> builtins.list[Buffer]: ...
def stat(uri: str, config: Config | None = None) -> ObjectInfo: ...
def exists(uri: str, config: Config | None = None) -> bool: ...
def list(
    uri: str, recursive: bool = True, pattern: str | None = None, config: Config | None = None
) -> builtins.list[ObjectInfo]: ...
def list_iter(
    uri: str, recursive: bool = True, pattern: str | None = None, config: Config | None = None
) -> ListIter: ...
def put(uri: str, data: _BufferProtocol, config: Config | None = None) -> None: ...
def put_many(
    items: Sequence[tuple[str, _BufferProtocol]],
    max_concurrency: int | None = None,
    config: Config | None = None,
) -> None: ...
def delete(uri: str, config: Config | None = None) -> None: ...
def delete_prefix(uri: str, max_concurrency: int | None = None, config: Config | None = None) -> int: ...
def upload(local_dir: str, uri: str, config: Config | None = None) -> int: ...
def download(uri: str, local_dir: str, config: Config | None = None) -> int: ...
def copy(src_uri: str, dst_uri: str, config: Config | None = None) -> int: ...
def copy_tree(
    src_uri: str, dst_uri: str, only: Sequence[str] | None = None, config: Config | None = None
) -> int: ...
def delete_many(
    uris: Sequence[str], max_concurrency: int | None = None, config: Config | None = None
) -> int: ...
def create_bucket(uri: str, config: Config | None = None) -> None: ...
def delete_bucket(uri: str, config: Config | None = None) -> None: ...
def get_async(
    uri: str, range_engine: dict[str, Any] | None = None, config: Config | None = None
) -> Awaitable[Buffer]: ...
def get_range_async(
    uri: str, offset: int, length: int | None = None, config: Config | None = None
) -> Awaitable[Buffer]: ...
def get_many_async(
    uris: Sequence[str], max_concurrency: int | None = None, config: Config | None = None
) -> Awaitable[builtins.list[Buffer]]: ...
def stat_async(uri: str, config: Config | None = None) -> Awaitable[ObjectInfo]: ...
def exists_async(uri: str, config: Config | None = None) -> Awaitable[bool]: ...
def list_async(
    uri: str, recursive: bool = True, pattern: str | None = None, config: Config | None = None
) -> Awaitable[builtins.list[ObjectInfo]]: ...
def put_async(uri: str, data: _BufferProtocol, config: Config | None = None) -> Awaitable[None]: ...
def put_many_async(
    items: Sequence[tuple[str, _BufferProtocol]],
    max_concurrency: int | None = None,
    config: Config | None = None,
) -> Awaitable[None]: ...
def delete_async(uri: str, config: Config | None = None) -> Awaitable[None]: ...
def delete_prefix_async(
    uri: str, max_concurrency: int | None = None, config: Config | None = None
) -> Awaitable[int]: ...
def upload_async(local_dir: str, uri: str, config: Config | None = None) -> Awaitable[int]: ...
def download_async(uri: str, local_dir: str, config: Config | None = None) -> Awaitable[int]: ...
def copy_async(src_uri: str, dst_uri: str, config: Config | None = None) -> Awaitable[int]: ...
def copy_tree_async(
    src_uri: str, dst_uri: str, only: Sequence[str] | None = None, config: Config | None = None
) -> Awaitable[int]: ...
def delete_many_async(
    uris: Sequence[str], max_concurrency: int | None = None, config: Config | None = None
) -> Awaitable[int]: ...
def create_bucket_async(uri: str, config: Config | None = None) -> Awaitable[None]: ...
def delete_bucket_async(uri: str, config: Config | None = None) -> Awaitable[None]: ...

@final
class CancelToken:
    """A cancellation token shared between loaders; cancelling it stops every loader made with it."""

    def __new__(cls) -> CancelToken: ...
    def cancel(self) -> None: ...
    @property
    def cancelled(self) -> bool: ...
    def child(self) -> CancelToken:
        """A token cancelled with this one (but cancellable on its own)."""

@final
class BatchStream:
    """One epoch of batches from the Rust pool: ``(positions, indices, buffers)`` per batch."""

    def __new__(
        cls,
        uris: Sequence[str],
        order: Sequence[int],
        options: dict[str, Any],
        pool: dict[str, Any],
        range_engine: dict[str, Any],
        sizes: Sequence[int | None] | None = None,
        config: Config | None = None,
        token: CancelToken | None = None,
        scope: LoaderScope | None = None,
        source: SampleSource | None = None,
    ) -> BatchStream: ...
    def __iter__(self) -> BatchStream: ...
    def __next__(self) -> tuple[builtins.list[int], builtins.list[int], builtins.list[Buffer]]: ...
    def close(self) -> None:
        """Cancel, then wait until every task of the stream has ended. Idempotent."""
    def cancel(self) -> None:
        """Cancel without waiting."""
    def live_tasks(self) -> int: ...
    def stats(self) -> tuple[int, int, int]:
        """(requests_started, requests_finished, bytes) so far."""

@final
class SampleSource:
    """Samples that are byte ranges of objects: ``items`` packs (object, start, length) as
    little-endian u64 triples; a batch's ranges within ``max_gap`` of each other in one object
    share a GET of at most ``max_range`` bytes."""

    def __new__(
        cls,
        uris: Sequence[str],
        items: bytes,
        sizes: Sequence[int | None] | None = None,
        max_gap: int = ...,
        max_range: int = ...,
        parts: int = 1,
        cache_bytes: int = 0,
        block_size: int = ...,
    ) -> SampleSource: ...
    def cache_stats(self) -> tuple[int, int, int] | None: ...
    def __len__(self) -> int: ...
    @property
    def parts(self) -> int: ...
    @property
    def objects(self) -> int: ...
    @property
    def coalesce(self) -> tuple[int, int]: ...

@final
class LoaderScope:
    """One loader's counters, stall times and adaptive limit, shared by its epochs' streams."""

    def __new__(cls, pool: dict[str, Any], range_engine: dict[str, Any]) -> LoaderScope: ...
    def stats(self, reset: bool = False) -> dict[str, Any]:
        """The loader's counters (see ``DataLoader.stats``)."""

def validate_loader_options(options: dict[str, Any]) -> None: ...
def validate_pool_config(pool: dict[str, Any]) -> None: ...
def validate_range_config(range_engine: dict[str, Any]) -> None: ...
def pool_from_loader_options(options: dict[str, Any]) -> dict[str, Any]: ...
def epoch_indices(
    n: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    even: str = "pad",
) -> builtins.list[int]: ...

@final
class Writer:
    """The native streaming writer behind ``s3dlio.open(uri, "wb")``."""

    @property
    def uri(self) -> str: ...
    def write(self, data: _BufferProtocol) -> int: ...
    def close(self) -> tuple[int, int, int]:
        """Publish; returns ``(size, crc32c, parts)``."""
    def abort(self) -> None: ...
    def tell(self) -> int: ...
    def write_async(self, data: _BufferProtocol) -> Awaitable[int]: ...
    def close_async(self) -> Awaitable[tuple[int, int, int]]: ...
    def abort_async(self) -> Awaitable[None]: ...

@final
class Reader:
    """The native seekable reader behind ``s3dlio.open(uri, "rb")``."""

    @property
    def uri(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str | None: ...
    def readinto(self, buf: Any) -> int: ...
    def read(self, n: int | None = None) -> bytes: ...
    def read1(self, n: int | None = None) -> Buffer: ...
    def peek(self, n: int = 0) -> bytes: ...
    def readline(self, limit: int | None = None) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...
    def read_async(self, n: int | None = None) -> Awaitable[Buffer]: ...

def open_writer(
    uri: str,
    part_size: int | None = None,
    max_parts_in_flight: int | None = None,
    fsync: bool | None = None,
    config: Config | None = None,
) -> Writer: ...
def open_writer_async(
    uri: str,
    part_size: int | None = None,
    max_parts_in_flight: int | None = None,
    fsync: bool | None = None,
    config: Config | None = None,
) -> Awaitable[Writer]: ...
def open_reader(
    uri: str,
    range_engine: dict[str, Any] | None = None,
    readahead: int | None = None,
    size: int | None = None,
    config: Config | None = None,
) -> Reader: ...
def open_reader_async(
    uri: str,
    range_engine: dict[str, Any] | None = None,
    readahead: int | None = None,
    size: int | None = None,
    config: Config | None = None,
) -> Awaitable[Reader]: ...
def crc32c(data: _BufferProtocol, value: int = 0) -> int:
    """CRC32C (Castagnoli) of any buffer, continuing from ``value``."""

def _asyncio_tasks() -> int:
    """asyncio bridge tasks still running (waited for at interpreter exit)."""

def live_tasks() -> int:
    """Number of tasks s3dlio has running in this process right now (0 when idle)."""

def oplog(path: str | os.PathLike[str] | None = None) -> str | None:
    """Log every request to ``path`` (see ``s3dlio.oplog``)."""

def stats(reset: bool = False) -> dict[str, Any]:
    """This process's transfer counters (see ``s3dlio.stats``)."""

def _debug_cache_sizes() -> tuple[int, int]:
    """(backend instances, S3 clients) cached in this process (tests of the cache bound)."""

def _debug_runtime_pid() -> int:
    """PID the current runtime context was built in (fork-safety tests)."""
