"""File objects on any backend: :func:`s3dlio.open` and :func:`s3dlio.open_async`.

``open(uri, "wb")`` is a streaming writer: bytes go into part-sized buffers in Rust, and full
parts upload concurrently while the caller keeps writing. Nothing is published until ``close()``
(or a clean ``with`` exit); an exception inside ``with``, Ctrl-C, or garbage collection without
``close()`` aborts, leaving the previous version of the key in place.

``open(uri, "rb")`` is a seekable, buffered reader with readahead through concurrent ranged GETs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

from . import _core, exceptions
from .config import StorageConfig, native_config
from .options import RangeEngineConfig

if TYPE_CHECKING:
    from typing import Self

    from typing_extensions import Buffer as BufferLike

__all__ = ["AsyncObjectReader", "AsyncObjectWriter", "ObjectReader", "ObjectWriter", "open", "open_async"]

_U64 = 1 << 64


def _count(name: str, v: object, *, low: int = 1) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v < _U64:
        raise exceptions.InvalidConfigError(f"{name} must be an int of at least {low}, got {v!r}")
    return v


def _uri(uri: str | os.PathLike[str]) -> str:
    """A URI as given; a plain local path (no ``scheme://``) as its ``file://`` URI."""
    u = os.fspath(uri)
    return u if "://" in u else "file://" + os.path.abspath(u)


def _mode(mode: str) -> str:
    m = "".join(sorted(mode))
    if m in ("br", "r"):
        if "b" not in mode:
            raise exceptions.InvalidConfigError(
                f"mode {mode!r}: s3dlio.open is binary only; use 'rb' (wrap it in io.TextIOWrapper for text)"
            )
        return "rb"
    if m in ("bw", "w"):
        if "b" not in mode:
            raise exceptions.InvalidConfigError(f"mode {mode!r}: s3dlio.open is binary only; use 'wb'")
        return "wb"
    raise exceptions.InvalidConfigError(f"mode must be 'rb' or 'wb', got {mode!r}")


class _ObjectFile(io.BufferedIOBase):
    """What both file objects share: the URI as their name, and the closed-file check."""

    _native: _core.Writer | _core.Reader

    @property
    def uri(self) -> str:
        """The object's URI."""
        return self._native.uri

    @property
    def name(self) -> str:
        """The object's URI (as ``io`` file objects name their file)."""
        return self._native.uri

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.uri}")


class PublishOnCleanExit:
    """The ``with`` protocol of s3dlio's writers: a clean exit publishes (``close()``); an
    exception aborts (``abort()``), so nothing half-written is ever published."""

    if TYPE_CHECKING:  # each writer defines them: close() publishes, abort() discards, and
        # _check_open() raises ValueError once closed

        def close(self) -> object: ...
        def abort(self) -> None: ...
        def _check_open(self) -> None: ...
        @property
        def closed(self) -> bool: ...

    def __enter__(self) -> Self:
        self._check_open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # Garbage collected without close(): abort. (io.IOBase.__del__ would close(), which here
        # would publish a possibly half-written object.)
        try:
            if not self.closed:
                self.abort()
        except Exception:  # noqa: S110 - nothing to report to at GC time; the abort is best effort
            pass


class ObjectWriter(PublishOnCleanExit, _ObjectFile):
    """A streaming writer to one object (``s3dlio.open(uri, "wb")``).

    Memory is bounded by ``part_size * max_parts_in_flight``: ``write`` blocks (GIL released,
    Ctrl-C answered) while that many part buffers are alive. ``write`` takes any buffer (bytes,
    bytearray, memoryview, numpy array) and copies it once, into the part buffer.

    ``close()`` publishes the object: below one part a single PUT, else the multipart upload is
    completed and verified (size, parts' checksums). ``abort()`` discards it. After ``close()``,
    :attr:`size` and :attr:`crc32c` describe what was written.
    """

    def __init__(self, native: _core.Writer) -> None:
        super().__init__()
        self._w = self._native = native
        self._result: tuple[int, int, int] | None = None
        self._aborted = False

    @property
    def mode(self) -> str:
        return "wb"

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, b: BufferLike) -> int:
        """Append ``b`` (any buffer); returns its length."""
        self._check_open()
        return self._w.write(b)

    def flush(self) -> None:
        """No-op while open: parts are sent as they fill, and the rest on ``close()``."""
        self._check_open()

    def tell(self) -> int:
        """Bytes written so far."""
        return self._w.tell()

    def close(self) -> None:
        """Publish the object (idempotent). If publishing fails, the upload is aborted and the
        error raised; the file is closed either way."""
        if self.closed:
            return
        try:
            if not self._aborted:
                self._result = self._w.close()
        finally:
            super().close()

    def abort(self) -> None:
        """Discard everything written; nothing is published (idempotent)."""
        if self.closed:
            return
        self._aborted = True
        try:
            self._w.abort()
        finally:
            super().close()

    @property
    def size(self) -> int:
        """Bytes in the published object (after ``close()``)."""
        return self._done()[0]

    @property
    def crc32c(self) -> int:
        """CRC32C (Castagnoli) of the published object (after ``close()``)."""
        return self._done()[1]

    @property
    def parts(self) -> int:
        """Parts uploaded (0 when the object was written with a single PUT)."""
        return self._done()[2]

    def _done(self) -> tuple[int, int, int]:
        if self._result is None:
            raise ValueError(f"{self.uri} has not been published (close() it first)")
        return self._result

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<s3dlio.ObjectWriter {self.uri!r} {state}>"


class ObjectReader(_ObjectFile):
    """A seekable, buffered reader of one object (``s3dlio.open(uri, "rb")``).

    The first request (a ranged GET of the first chunk) tells the object's size and version;
    every later range is pinned to that version, so an object replaced while it is read is an
    error, never a mix. Reading sequentially keeps ``readahead`` chunks in flight; a seek
    elsewhere drops them. A large ``read``/``readinto`` is fetched as concurrent ranges straight
    into the destination.
    """

    def __init__(self, native: _core.Reader) -> None:
        super().__init__()
        self._r = self._native = native

    @property
    def mode(self) -> str:
        return "rb"

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._r.size

    @property
    def etag(self) -> str | None:
        """The version being read (its ETag), where the store has one."""
        return self._r.etag

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        return self._r.read(size)

    def read1(self, size: int = -1) -> bytes:
        self._check_open()
        return bytes(self._r.read1(size))  # COPY: io requires bytes; readinto avoids it

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, b: Any) -> int:
        """Read into a writable buffer (no intermediate copy for large reads)."""
        self._check_open()
        return self._r.readinto(b)

    def readinto1(self, b: Any) -> int:
        return self.readinto(b)

    def readline(self, size: int | None = -1) -> bytes:
        self._check_open()
        return self._r.readline(size)

    def peek(self, size: int = 0) -> bytes:
        self._check_open()
        return self._r.peek(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        return self._r.seek(offset, whence)

    def tell(self) -> int:
        self._check_open()
        return self._r.tell()

    def close(self) -> None:
        if not self.closed:
            self._r.close()
        super().close()

    def __repr__(self) -> str:
        return f"<s3dlio.ObjectReader {self.uri!r} size={self._r.size}>"


@overload
def open(  # noqa: A001
    uri: str | os.PathLike[str],
    mode: Literal["rb"] = ...,
    *,
    readahead: int | None = ...,
    range_engine: RangeEngineConfig | None = ...,
    size: int | None = ...,
    config: StorageConfig | None = ...,
) -> ObjectReader: ...


@overload
def open(  # noqa: A001
    uri: str | os.PathLike[str],
    mode: Literal["wb"],
    *,
    part_size: int | None = ...,
    max_parts_in_flight: int | None = ...,
    fsync: bool | None = ...,
    config: StorageConfig | None = ...,
) -> ObjectWriter: ...


def open(  # noqa: A001 - mirrors the builtin, as file objects on object storage
    uri: str | os.PathLike[str],
    mode: str = "rb",
    *,
    part_size: int | None = None,
    max_parts_in_flight: int | None = None,
    fsync: bool | None = None,
    readahead: int | None = None,
    range_engine: RangeEngineConfig | None = None,
    size: int | None = None,
    config: StorageConfig | None = None,
) -> ObjectReader | ObjectWriter:
    """Open an object as a binary file: ``"rb"`` (a seekable reader) or ``"wb"`` (a streaming
    writer). Works on every scheme: ``s3://``, ``file://``, ``direct://``, and plain paths.

    Writer options: ``part_size`` (default ``config.part_size``, 8 MiB), ``max_parts_in_flight``
    (default 8: part buffers alive at once, so memory is at most ``part_size *
    max_parts_in_flight``), ``fsync`` (local files: the file and its directory are flushed to
    stable storage when the temp file is renamed into place; default True, so a closed file is
    durable; ``StorageConfig.fsync`` is for one-shot puts).

    Reader options: ``readahead`` (chunks fetched ahead while reading sequentially, default 4),
    ``range_engine`` (its ``chunk_size`` is the readahead unit, ``max_concurrent_ranges`` bounds
    a large read), ``size`` (the object's size when known from a listing: checked, never an
    extra request).

    >>> with s3dlio.open("s3://bucket/ckpt.pt", "wb") as f:
    ...     torch.save(model.state_dict(), f)
    >>> state = torch.load(s3dlio.open("s3://bucket/ckpt.pt"))
    """
    uri = _uri(uri)
    if _mode(mode) == "wb":
        _reject(mode, readahead=readahead, range_engine=range_engine, size=size)
        native = _core.open_writer(
            uri,
            _count("part_size", part_size),
            _count("max_parts_in_flight", max_parts_in_flight),
            _bool("fsync", fsync),
            native_config(config),
        )
        return ObjectWriter(native)
    _reject(mode, part_size=part_size, max_parts_in_flight=max_parts_in_flight, fsync=fsync)
    rng = None if range_engine is None else range_engine.to_dict()
    return ObjectReader(
        _core.open_reader(
            uri,
            rng,
            _count("readahead", readahead, low=0),
            _count("size", size, low=0),
            native_config(config),
        )
    )


def _bool(name: str, v: object) -> bool | None:
    if v is not None and not isinstance(v, bool):
        raise exceptions.InvalidConfigError(f"{name} must be a bool or None, got {v!r}")
    return v


def _reject(mode: str, **options: object) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise exceptions.InvalidConfigError(f"{', '.join(given)}: not an option of mode {mode!r}")


# --- asyncio ----------------------------------------------------------------------------------


class AsyncObjectWriter:
    """The asyncio twin of :class:`ObjectWriter` (``await s3dlio.open_async(uri, "wb")``).

    ``async with`` completes on a clean exit and aborts on an exception or cancellation.
    """

    def __init__(self, native: _core.Writer) -> None:
        self._w = native
        self._result: tuple[int, int, int] | None = None
        self.closed = False

    @property
    def uri(self) -> str:
        return self._w.uri

    async def write(self, b: BufferLike) -> int:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.uri}")
        return await self._w.write_async(b)

    def tell(self) -> int:
        """Bytes written so far (after ``close()``: the object's size)."""
        return self._result[0] if self._result is not None else self._w.tell()

    async def close(self) -> None:
        """Publish the object (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._result = await self._w.close_async()

    async def abort(self) -> None:
        """Discard everything written (idempotent)."""
        if self.closed:
            return
        self.closed = True
        await self._w.abort_async()

    @property
    def size(self) -> int:
        return self._done()[0]

    @property
    def crc32c(self) -> int:
        return self._done()[1]

    @property
    def parts(self) -> int:
        return self._done()[2]

    def _done(self) -> tuple[int, int, int]:
        if self._result is None:
            raise ValueError(f"{self.uri} has not been published (close() it first)")
        return self._result

    # Dropped unclosed, the native writer's own drop aborts the upload.

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()


class AsyncObjectReader:
    """The asyncio twin of :class:`ObjectReader`: ``await f.read(n)`` returns a :class:`Buffer`."""

    def __init__(self, native: _core.Reader) -> None:
        self._r = native
        self.closed = False

    @property
    def uri(self) -> str:
        return self._r.uri

    @property
    def size(self) -> int:
        return self._r.size

    @property
    def etag(self) -> str | None:
        return self._r.etag

    async def read(self, size: int | None = -1) -> _core.Buffer:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.uri}")
        return await self._r.read_async(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._r.seek(offset, whence)

    def tell(self) -> int:
        return self._r.tell()

    async def close(self) -> None:
        self.closed = True
        self._r.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Opening:
    """What :func:`open_async` returns: await it for the file, or use it in ``async with``."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._make = make
        self._file: AsyncObjectReader | AsyncObjectWriter | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._make().__await__()

    async def __aenter__(self) -> Any:
        self._file = await self._make()
        return self._file

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            await self._file.__aexit__(exc_type, exc, tb)


def open_async(
    uri: str | os.PathLike[str],
    mode: str = "rb",
    *,
    part_size: int | None = None,
    max_parts_in_flight: int | None = None,
    fsync: bool | None = None,
    readahead: int | None = None,
    range_engine: RangeEngineConfig | None = None,
    size: int | None = None,
    config: StorageConfig | None = None,
) -> Any:
    """Async :func:`open`: ``f = await s3dlio.open_async(uri, "wb")`` or
    ``async with s3dlio.open_async(uri, "wb") as f: await f.write(b)``. Same options."""
    uri = _uri(uri)
    if _mode(mode) == "wb":
        _reject(mode, readahead=readahead, range_engine=range_engine, size=size)
        args = (
            uri,
            _count("part_size", part_size),
            _count("max_parts_in_flight", max_parts_in_flight),
            _bool("fsync", fsync),
            native_config(config),
        )

        async def make_writer() -> AsyncObjectWriter:
            return AsyncObjectWriter(await _core.open_writer_async(*args))

        return _Opening(make_writer)
    _reject(mode, part_size=part_size, max_parts_in_flight=max_parts_in_flight, fsync=fsync)
    rng = None if range_engine is None else range_engine.to_dict()
    rargs = (
        uri,
        rng,
        _count("readahead", readahead, low=0),
        _count("size", size, low=0),
        native_config(config),
    )

    async def make_reader() -> AsyncObjectReader:
        return AsyncObjectReader(await _core.open_reader_async(*rargs))

    return _Opening(make_reader)
