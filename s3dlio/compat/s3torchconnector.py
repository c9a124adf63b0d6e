"""A drop-in replacement for AWS's ``s3torchconnector`` (1.5 API), running on s3dlio.

Switching is one import line::

    # from s3torchconnector import S3MapDataset, S3IterableDataset, S3Checkpoint, S3ClientConfig
    from s3dlio.compat.s3torchconnector import S3MapDataset, S3IterableDataset, S3Checkpoint, S3ClientConfig

    ds = S3MapDataset.from_prefix("s3://bucket/train/", region="us-east-1", transform=decode)
    ckpt = S3Checkpoint(region="us-east-1")
    with ckpt.writer("s3://bucket/ckpt.pt") as f:
        torch.save(model.state_dict(), f)
    state = torch.load(ckpt.reader("s3://bucket/ckpt.pt"))

Every name keeps its s3torchconnector signature and meaning: ``S3Client`` (``get_object``,
``put_object``, ``head_object``, ``list_objects``, ``delete_object``, ``copy_object``),
``S3Reader`` (``SequentialS3Reader`` and ``RangedS3Reader``, chosen with
``S3ReaderConstructor.sequential()`` / ``range_based(buffer_size)``), ``S3Writer``,
``S3MapDataset`` / ``S3IterableDataset`` (``from_prefix`` / ``from_objects``, ``transform``,
``enable_sharding``: rank first, then DataLoader worker), ``S3Checkpoint``, ``S3ClientConfig``
and ``S3Exception``. The I/O underneath is s3dlio's: a per-process native client (fork, forkserver
and spawn workers are safe), Ctrl-C answered during every wait, listings streamed page by page.

Where this module differs from s3torchconnector, on purpose:

* ``S3Exception`` is a subclass of :class:`s3dlio.exceptions.S3dlioError`. Each error is raised
  as a class that is both ``S3Exception`` and the matching s3dlio class, so ``except
  S3Exception``, ``except FileNotFoundError`` (missing object) and ``except ValueError`` (a bad
  URI or option) all work.
* ``S3ClientConfig``: ``part_size`` (multipart part size, and the reader's range size),
  ``max_attempts``, ``profile`` and ``force_path_style`` map to :class:`s3dlio.StorageConfig`
  (``force_path_style=False`` means "not forced": s3dlio then uses path style exactly when an
  ``endpoint`` is given, which is what local and on-premise servers need).
  ``throughput_target_gbps`` has no equivalent (s3dlio's concurrency is set by
  ``StorageConfig.max_concurrency``): a value other than the default warns. ``unsigned=True``
  (anonymous requests) is not supported and raises.
* An ``S3Writer`` left by an exception inside ``with``, or garbage collected without
  ``close()``, is aborted: nothing is published (s3torchconnector publishes on garbage
  collection, which can leave a truncated object).
* Dataset listings skip folder markers (zero-byte keys ending in ``/``, as the AWS console
  creates), which s3torchconnector would hand to ``transform`` as empty objects.
* ``S3ReaderConstructor.dcp_optimized()`` is not provided: use :mod:`s3dlio.dcp` for
  distributed checkpoints. A reader constructor must be one made by ``S3ReaderConstructor``
  (s3torchconnector's constructor protocol passes a CRT stream, which does not exist here).
* ``put_object(storage_class=...)``: only ``None`` / ``"STANDARD"`` are accepted; other
  classes raise. ``S3Client(user_agent=...)`` is accepted and has no effect (s3dlio sends its own
  user agent): a value other than ``None`` warns.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import s3dlio
from s3dlio import exceptions
from s3dlio.config import StorageConfig
from s3dlio.files import PublishOnCleanExit
from s3dlio.options import RangeEngineConfig

if TYPE_CHECKING:
    from typing_extensions import Buffer as BufferLike

    _MapBase = object
    _IterBase = object
else:
    try:  # torch's Dataset / IterableDataset, so torch's DataLoader treats the datasets natively
        from torch.utils.data import Dataset as _MapBase
        from torch.utils.data import IterableDataset as _IterBase
    except ImportError:
        _MapBase = object
        _IterBase = object

__all__ = [
    "HeadObjectResult",
    "ListObjectResult",
    "ListObjectStream",
    "ObjectInfo",
    "RangedS3Reader",
    "S3Checkpoint",
    "S3Client",
    "S3ClientConfig",
    "S3Exception",
    "S3IterableDataset",
    "S3MapDataset",
    "S3Reader",
    "S3ReaderConstructor",
    "S3Writer",
    "SequentialS3Reader",
]

MiB = 1024 * 1024
DEFAULT_BUFFER_SIZE = 8 * MiB  # RangedS3Reader's buffer, as s3torchconnector's

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class S3Exception(exceptions.S3dlioError):
    """An error accessing S3, where s3torchconnector raises ``S3Exception``.

    What is actually raised is also the matching s3dlio exception (a ``FileNotFoundError`` for a
    missing object, a ``PermissionError`` for HTTP 403, a ``ValueError`` for a bad URI or option,
    ...), with its ``uri``, ``status``, ``code`` and ``request_id`` fields.
    """


class _NotFound(S3Exception, exceptions.NotFoundError):
    """S3Exception: the object or bucket does not exist."""


class _AccessDenied(S3Exception, exceptions.AccessDeniedError):
    """S3Exception: the server refused the request."""


class _Timeout(S3Exception, exceptions.StorageTimeoutError):
    """S3Exception: a timeout expired."""


class _Throttled(S3Exception, exceptions.ThrottledError):
    """S3Exception: throttled after every retry."""


class _InvalidUri(S3Exception, exceptions.InvalidUriError):
    """S3Exception: a URI that cannot be served."""


class _InvalidConfig(S3Exception, exceptions.InvalidConfigError):
    """S3Exception: a bad option or argument."""


class _Range(S3Exception, exceptions.RangeError):
    """S3Exception: a byte range outside the object."""


class _IO(S3Exception, exceptions.StorageIOError):
    """S3Exception: another I/O, network or server error."""


class _Cancelled(S3Exception, exceptions.CancelledError):
    """S3Exception: the operation was cancelled."""


_MAPPED: dict[type[exceptions.S3dlioError], type[S3Exception]] = {
    exceptions.NotFoundError: _NotFound,
    exceptions.AccessDeniedError: _AccessDenied,
    exceptions.StorageTimeoutError: _Timeout,
    exceptions.ThrottledError: _Throttled,
    exceptions.InvalidUriError: _InvalidUri,
    exceptions.InvalidConfigError: _InvalidConfig,
    exceptions.RangeError: _Range,
    exceptions.StorageIOError: _IO,
    exceptions.CancelledError: _Cancelled,
}


def _translate(e: exceptions.S3dlioError) -> S3Exception:
    """``e`` as an :class:`S3Exception` that is still an instance of ``e``'s s3dlio class (or its
    nearest mapped base)."""
    cls = next((_MAPPED[c] for c in type(e).__mro__ if c in _MAPPED), S3Exception)
    out = cls(str(e), e.uri, e.status, e.code, e.request_id)
    return out.with_traceback(e.__traceback__)


@contextlib.contextmanager
def _s3_errors() -> Iterator[None]:
    """Raise s3dlio's errors as :class:`S3Exception` (keeping their s3dlio class and fields)."""
    try:
        yield
    except S3Exception:
        raise
    except exceptions.S3dlioError as e:
        raise _translate(e) from None


def _invalid(message: str) -> S3Exception:
    return _InvalidConfig(message)


# ---------------------------------------------------------------------------------------------
# Configuration and results
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3ClientConfig:
    """s3torchconnector's client settings, mapped to :class:`s3dlio.StorageConfig`.

    * ``part_size``: ``StorageConfig.part_size`` (multipart uploads; S3 requires 5 MiB to 5 GiB)
      and the readers' range size.
    * ``max_attempts``: ``StorageConfig.max_attempts`` (attempts of one request in all).
    * ``profile``: ``StorageConfig.profile``.
    * ``force_path_style``: ``True`` forces path-style addressing; ``False`` leaves it to s3dlio,
      which uses path style when an ``endpoint`` is given and virtual-hosted style otherwise.
    * ``throughput_target_gbps``: no effect (s3dlio has no throughput target; its concurrency is
      ``StorageConfig.max_concurrency``). A value other than the default warns.
    * ``unsigned``: anonymous (unsigned) requests are not supported: ``True`` raises
      :class:`S3Exception` (a ``ValueError``) when a client is built with it.
    """

    throughput_target_gbps: float = 10.0
    part_size: int = 8 * MiB
    unsigned: bool = False
    force_path_style: bool = False
    max_attempts: int = 10
    profile: str | None = None


def _storage_config(region: str | None, endpoint: str | None, cfg: S3ClientConfig) -> StorageConfig:
    if not isinstance(cfg, S3ClientConfig):
        raise _invalid(f"s3client_config must be an S3ClientConfig, not {type(cfg).__name__}")
    if cfg.unsigned:
        raise _invalid(
            "S3ClientConfig(unsigned=True): s3dlio always signs requests; anonymous access is not "
            "supported (give credentials, or use s3torchconnector for public buckets)"
        )
    if cfg.throughput_target_gbps != S3ClientConfig.throughput_target_gbps:
        warnings.warn(
            f"S3ClientConfig(throughput_target_gbps={cfg.throughput_target_gbps}) has no effect in "
            "s3dlio; concurrency is set by s3dlio.StorageConfig(max_concurrency=...)",
            UserWarning,
            stacklevel=3,
        )
    with _s3_errors():
        return StorageConfig(
            endpoint_url=endpoint,
            region=region,
            profile=cfg.profile,
            force_path_style=True if cfg.force_path_style else None,
            max_attempts=cfg.max_attempts,
            part_size=cfg.part_size,
        )


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing (``ListObjectResult.object_info``). ``last_modified`` is in
    seconds since the Unix epoch; ``storage_class`` and ``restore_status`` are not reported."""

    key: str
    etag: str
    size: int
    last_modified: int
    storage_class: str | None = None
    restore_status: None = None


@dataclass(frozen=True)
class HeadObjectResult:
    """What :meth:`S3Client.head_object` returns."""

    etag: str
    size: int
    last_modified: int
    storage_class: str | None = None
    restore_status: None = None


@dataclass(frozen=True)
class ListObjectResult:
    """One page of a listing: the objects, and (with ``delimiter="/"``) the common prefixes."""

    object_info: list[ObjectInfo] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)


class _HasSize(Protocol):
    @property
    def size(self) -> int: ...


class S3BucketKeyData(NamedTuple):
    """One object of a dataset: its bucket, key and (from a listing) its info."""

    bucket: str
    key: str
    object_info: ObjectInfo | None = None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as ``(bucket, key)``; anything else raises ``ValueError``."""
    checked: object = uri  # untyped callers
    if not isinstance(checked, str) or not uri.startswith("s3://"):
        raise ValueError("Only s3:// URIs are supported")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError("Bucket name must be non-empty")
    return bucket, key


def _seconds(t: float | None) -> int:
    return 0 if t is None else int(t)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


class S3Reader(io.BufferedIOBase):
    """A read-only, seekable file object over one S3 object (``bucket``, ``key``).

    As in s3torchconnector: ``read(size)`` returns ``size`` bytes or up to the end (``None`` or
    a negative size reads to the end); a seek past the end stays at the end; a seek before the
    start raises ``ValueError``; ``whence`` is ``SEEK_SET``, ``SEEK_CUR`` or ``SEEK_END``. Nothing
    is requested until the first read (or a seek that needs the object's size).
    """

    def __init__(
        self, bucket: str, key: str, *, client: S3Client, object_info: _HasSize | None = None
    ) -> None:
        super().__init__()
        if not bucket:
            raise ValueError("Bucket should be specified")
        self._bucket = bucket
        self._key = key
        self._client = client
        self._uri = f"s3://{bucket}/{key}"
        self._size: int | None = None if object_info is None else int(object_info.size)
        self._position = 0

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def key(self) -> str:
        return self._key

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        """The current position."""
        return self._position

    # --- what the two readers implement ---

    def _get_size(self) -> int:
        raise NotImplementedError

    def _fetch(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (inside the object)."""
        raise NotImplementedError

    def _fetch_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the bytes at ``offset`` (inside the object)."""
        raise NotImplementedError

    # --- shared semantics ---

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self._uri}")

    def _at_end(self) -> bool:
        return self._size is not None and self._position >= self._size

    def read(self, size: int | None = None) -> bytes:
        """Read up to ``size`` bytes from the current position (``None`` or negative: to the end).

        Raises:
            S3Exception: an error accessing S3.
        """
        if size is not None and not isinstance(size, int):
            raise TypeError(f"argument should be integer or None, not {type(size)!r}")
        self._check_open()
        if self._at_end() or size == 0:
            return b""
        with _s3_errors():
            total = self._get_size()
            end = total if size is None or size < 0 else min(self._position + size, total)
            if end <= self._position:
                return b""
            data = self._fetch(self._position, end - self._position)
        self._position = end
        return data

    def readinto(self, buf: Any) -> int:
        """Read up to ``len(buf)`` bytes into a writable buffer; returns how many (0 at the end).

        Raises:
            S3Exception: an error accessing S3.
        """
        try:
            view = memoryview(buf)
        except TypeError:
            raise TypeError(
                f"argument must be a writable bytes-like object, not {type(buf).__name__}"
            ) from None
        if view.readonly:
            raise TypeError(f"argument must be a writable bytes-like object, not {type(buf).__name__}")
        self._check_open()
        view = view.cast("B")
        if view.nbytes == 0 or self._at_end():
            return 0
        with _s3_errors():
            end = min(self._position + view.nbytes, self._get_size())
            n = end - self._position
            if n <= 0:
                return 0
            self._fetch_into(view[:n], self._position)
        self._position = end
        return n

    def readall(self) -> bytes:
        return self.read()

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto1(self, buf: Any) -> int:
        return self.readinto(buf)

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        """Move to ``offset`` relative to ``whence``; past the end stays at the end.

        Raises:
            ValueError: the position would be negative, or ``whence`` is not 0, 1 or 2.
            S3Exception: an error accessing S3 (finding the object's size).
        """
        if not isinstance(offset, int):
            raise TypeError(f"integer argument expected, got {type(offset)!r}")
        self._check_open()
        with _s3_errors():
            if whence == os.SEEK_END:
                if offset >= 0:
                    self._position = self._get_size()
                    return self._position
                offset += self._get_size()
            elif whence == os.SEEK_CUR:
                if self._at_end() and offset >= 0:
                    return self._position
                offset += self._position
            elif whence == os.SEEK_SET:
                pass
            elif isinstance(whence, int):
                raise ValueError("Seek must be passed SEEK_CUR, SEEK_SET, or SEEK_END")
            else:
                raise TypeError(f"integer argument expected, got {type(whence)!r}")
            if offset < 0:
                raise ValueError(f"negative seek value {offset}")
            if offset > 0:
                offset = min(offset, self._get_size())
        self._position = offset
        return offset

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._uri!r}>"


class SequentialS3Reader(S3Reader):
    """The default reader, for whole-object and sequential reads: a streaming s3dlio reader
    (:func:`s3dlio.open`) that keeps chunks in flight ahead of the position (readahead), so a
    full read is a few concurrent ranged GETs. Seeking elsewhere drops the readahead.
    """

    def __init__(
        self, bucket: str, key: str, *, client: S3Client, object_info: _HasSize | None = None
    ) -> None:
        super().__init__(bucket, key, client=client, object_info=object_info)
        self._native: s3dlio.ObjectReader | None = None

    def prefetch(self) -> None:
        """Start fetching the object now (the first chunk, which also gives its size).

        Raises:
            S3Exception: an error accessing S3.
        """
        self._check_open()
        with _s3_errors():
            self._reader()

    def _reader(self) -> s3dlio.ObjectReader:
        if self._native is None:
            self._native = s3dlio.open(
                self._uri,
                "rb",
                size=self._size,
                range_engine=self._client._range_engine,
                config=self._client._config,
            )
            self._size = self._native.size
        return self._native

    def _get_size(self) -> int:
        if self._size is None:
            self._reader()
        assert self._size is not None
        return self._size

    def _fetch(self, offset: int, length: int) -> bytes:
        r = self._reader()
        if r.tell() != offset:
            r.seek(offset)
        data = r.read(length)
        while len(data) < length:  # a short read only at the end; the object is known to be longer
            more = r.read(length - len(data))
            if not more:
                raise exceptions.StorageIOError(f"{self._uri} ended at {offset + len(data)} bytes", self._uri)
            data += more
        return data

    def _fetch_into(self, view: memoryview, offset: int) -> None:
        r = self._reader()
        if r.tell() != offset:
            r.seek(offset)
        done = 0
        while done < view.nbytes:
            n = r.readinto(view[done:])
            if n == 0:
                raise exceptions.StorageIOError(f"{self._uri} ended at {offset + done} bytes", self._uri)
            done += n

    def close(self) -> None:
        if self._native is not None:
            self._native.close()
            self._native = None
        super().close()


class RangedS3Reader(S3Reader):
    """A reader for sparse reads of large objects: each read is a ranged GET of what it needs.

    Reads smaller than ``buffer_size`` (default 8 MiB) fetch ``buffer_size`` bytes into a buffer
    that later small reads are served from; larger reads go straight to S3. ``buffer_size=0``
    disables the buffer. The object's size comes from the listing, else from one HEAD.
    """

    def __init__(
        self,
        bucket: str,
        key: str,
        *,
        client: S3Client,
        object_info: _HasSize | None = None,
        buffer_size: int | None = None,
    ) -> None:
        super().__init__(bucket, key, client=client, object_info=object_info)
        if buffer_size is not None and (isinstance(buffer_size, bool) or not isinstance(buffer_size, int)):
            raise TypeError(f"buffer_size must be an int or None, not {type(buffer_size).__name__}")
        self._buffer_size = DEFAULT_BUFFER_SIZE if buffer_size is None else buffer_size
        self._window: memoryview | None = None  # zero-copy view of the buffered range
        self._window_start = 0

    def _get_size(self) -> int:
        if self._size is None:
            self._size = s3dlio.stat(self._uri, config=self._client._config).size
        return self._size

    def _range(self, offset: int, length: int) -> memoryview:
        """``length`` bytes at ``offset``: from the buffer, a new buffer, or straight from S3."""
        w, start = self._window, self._window_start
        if w is not None and start <= offset and offset + length <= start + len(w):
            return w[offset - start : offset - start + length]
        if length >= self._buffer_size or self._buffer_size <= 0:
            return memoryview(s3dlio.get_range(self._uri, offset, length, config=self._client._config))
        n = min(self._buffer_size, self._get_size() - offset)
        self._window = memoryview(s3dlio.get_range(self._uri, offset, n, config=self._client._config))
        self._window_start = offset
        return self._window[:length]

    def _fetch(self, offset: int, length: int) -> bytes:
        return bytes(self._range(offset, length))  # COPY: read() returns bytes

    def _fetch_into(self, view: memoryview, offset: int) -> None:
        # COPY: s3dlio.get_range returns a new buffer; this is the copy into the caller's.
        view[:] = self._range(offset, view.nbytes)

    def close(self) -> None:
        if self._window is not None:
            self._window.release()
            self._window = None
        super().close()


class S3ReaderConstructor:
    """Chooses the reader each ``get_object`` (and each dataset item) gets:
    ``S3ReaderConstructor.sequential()`` (the default) or ``range_based(buffer_size=None)``."""

    @staticmethod
    def sequential() -> Callable[..., S3Reader]:
        """Readers for full and sequential reads (:class:`SequentialS3Reader`)."""
        return partial(SequentialS3Reader)

    @staticmethod
    def range_based(buffer_size: int | None = None) -> Callable[..., S3Reader]:
        """Readers for sparse partial reads (:class:`RangedS3Reader`); ``buffer_size`` bytes are
        fetched for small reads (default 8 MiB; 0: no buffer)."""
        return partial(RangedS3Reader, buffer_size=buffer_size)

    @staticmethod
    def default() -> Callable[..., S3Reader]:
        """The sequential reader."""
        return S3ReaderConstructor.sequential()

    @staticmethod
    def dcp_optimized(*args: object, **kwargs: object) -> Callable[..., S3Reader]:
        """Not provided: use :mod:`s3dlio.dcp` (``StorageReader`` coalesces ranges itself)."""
        raise NotImplementedError(
            "S3ReaderConstructor.dcp_optimized() is not provided by s3dlio.compat; "
            "use s3dlio.dcp.StorageReader for torch.distributed.checkpoint"
        )

    @staticmethod
    def get_reader_type_string(constructor: Callable[..., S3Reader] | None) -> str:
        """``"sequential"``, ``"range_based"`` or ``"unknown"``."""
        if constructor is None:
            return "sequential"
        func = constructor.func if isinstance(constructor, partial) else constructor
        if func is SequentialS3Reader:
            return "sequential"
        if func is RangedS3Reader:
            return "range_based"
        return "unknown"


def _check_constructor(constructor: object) -> Callable[..., S3Reader]:
    func = constructor.func if isinstance(constructor, partial) else constructor
    if not (isinstance(func, type) and issubclass(func, S3Reader)):
        raise TypeError(
            "reader_constructor must come from s3dlio.compat.s3torchconnector.S3ReaderConstructor "
            f"(sequential() or range_based()), not {constructor!r}"
        )
    return constructor  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


class S3Writer(PublishOnCleanExit, io.BufferedIOBase):
    """A write-only file object publishing one S3 object on ``close()``.

    Bytes stream out in ``part_size`` parts while you write (s3dlio's streaming writer, see
    :func:`s3dlio.open`); ``close()`` (or a clean ``with`` exit) completes the upload. An
    exception inside ``with``, or garbage collection without ``close()``, aborts it: the
    previous version of the key (if any) stays.
    """

    def __init__(self, stream: s3dlio.ObjectWriter) -> None:
        super().__init__()
        self.stream = stream
        self._position = 0
        self._lock = threading.Lock()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.stream.uri}")

    def write(self, data: BufferLike) -> int:
        """Append ``data`` (bytes, memoryview or any buffer); returns its length.

        Raises:
            S3Exception: an error accessing S3.
            ValueError: the writer is closed.
        """
        self._check_open()
        with _s3_errors():
            n = self.stream.write(data)
        self._position += n
        return n

    def close(self) -> None:
        """Complete the upload (idempotent).

        Raises:
            S3Exception: an error accessing S3 (the upload is aborted).
        """
        with self._lock:
            if self.closed:
                return
            try:
                with _s3_errors():
                    self.stream.close()
            finally:
                super().close()

    def abort(self) -> None:
        """Discard everything written; nothing is published (idempotent)."""
        with self._lock:
            if self.closed:
                return
            try:
                with _s3_errors():
                    self.stream.abort()
            finally:
                super().close()

    def flush(self) -> None:
        """No-op: parts are sent as they fill."""

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return not self.closed

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        """Bytes written so far."""
        return self._position

    def __repr__(self) -> str:
        return f"<S3Writer {self.stream.uri!r}>"


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


class ListObjectStream:
    """Pages (:class:`ListObjectResult`, up to ``max_keys`` objects each) of one listing, fetched
    as they are consumed."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, delimiter: str, max_keys: int) -> None:
        if delimiter not in ("", "/"):
            raise _invalid(f"delimiter {delimiter!r}: s3dlio lists with no delimiter or with '/'")
        n: object = max_keys  # untyped callers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _invalid(f"max_keys must be an int of at least 1, got {max_keys!r}")
        self.bucket, self.prefix, self.delimiter, self.max_keys = bucket, prefix, delimiter, max_keys
        self._client = client
        self._entries: Iterator[s3dlio.ObjectInfo] | None = None
        self.complete = False

    def __iter__(self) -> ListObjectStream:
        return self

    def __next__(self) -> ListObjectResult:
        if self.complete:
            raise StopIteration
        with _s3_errors():
            if self._entries is None:
                self._entries = s3dlio.list_iter(
                    f"s3://{self.bucket}/{self.prefix}",
                    recursive=self.delimiter == "",
                    config=self._client._config,
                )
            page = ListObjectResult()
            base = len(f"s3://{self.bucket}/")
            for entry in self._entries:
                key = entry.uri[base:]
                if entry.is_dir and self.delimiter and key != self.prefix:
                    page.common_prefixes.append(key)
                else:
                    page.object_info.append(
                        ObjectInfo(key, entry.etag or "", entry.size, _seconds(entry.last_modified))
                    )
                if len(page.object_info) + len(page.common_prefixes) >= self.max_keys:
                    return page
        self.complete = True
        if page.object_info or page.common_prefixes:
            return page
        raise StopIteration


class S3Client:
    """s3torchconnector's client: object operations on ``bucket``/``key`` through s3dlio.

    Holds only picklable settings; s3dlio builds the native client per process, so a client
    (or a dataset holding one) can go to DataLoader workers started by fork, forkserver or spawn.
    ``endpoint`` is ``StorageConfig.endpoint_url``; ``region`` is ``StorageConfig.region``.
    """

    def __init__(
        self,
        region: str,
        *,
        endpoint: str | None = None,
        user_agent: object | None = None,
        s3client_config: S3ClientConfig | None = None,
    ) -> None:
        if user_agent is not None:
            warnings.warn("S3Client(user_agent=...) has no effect in s3dlio", UserWarning, stacklevel=2)
        self._region = region
        self._endpoint = endpoint
        self._s3client_config = s3client_config or S3ClientConfig()
        self._config = _storage_config(region, endpoint, self._s3client_config)
        part = self._s3client_config.part_size
        with _s3_errors():
            self._range_engine = RangeEngineConfig(chunk_size=part, min_split_size=max(32 * MiB, part))

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint(self) -> str | None:
        return self._endpoint

    @property
    def s3client_config(self) -> S3ClientConfig:
        return self._s3client_config

    @property
    def storage_config(self) -> StorageConfig:
        """The :class:`s3dlio.StorageConfig` every request of this client uses."""
        return self._config

    def get_object(
        self,
        bucket: str,
        key: str,
        *,
        object_info: _HasSize | None = None,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> S3Reader:
        """A reader of ``s3://bucket/key`` (nothing is requested until it is read). With
        ``object_info`` (from a listing) its size is trusted and checked, never asked for."""
        make = _check_constructor(reader_constructor or S3ReaderConstructor.default())
        return make(bucket, key, client=self, object_info=object_info)

    def put_object(self, bucket: str, key: str, storage_class: str | None = None) -> S3Writer:
        """A writer publishing ``s3://bucket/key`` on ``close()``."""
        if storage_class not in (None, "STANDARD"):
            raise _invalid(f"storage_class={storage_class!r}: s3dlio writes the bucket's default class only")
        if not bucket:
            raise ValueError("Bucket should be specified")
        with _s3_errors():
            return S3Writer(s3dlio.open(f"s3://{bucket}/{key}", "wb", config=self._config))

    def list_objects(
        self, bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000
    ) -> ListObjectStream:
        """Pages of the keys under ``prefix`` in S3's order (with ``delimiter="/"``: one level,
        deeper keys as common prefixes)."""
        return ListObjectStream(self, bucket, prefix, delimiter, max_keys)

    def head_object(self, bucket: str, key: str) -> HeadObjectResult:
        """Size, ETag and last-modified time of one object."""
        with _s3_errors():
            info = s3dlio.stat(f"s3://{bucket}/{key}", config=self._config)
        return HeadObjectResult(info.etag or "", info.size, _seconds(info.last_modified))

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete one object (a missing object is not an error)."""
        with _s3_errors():
            s3dlio.delete(f"s3://{bucket}/{key}", config=self._config)

    def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> None:
        """Copy one object (server-side inside one endpoint)."""
        with _s3_errors():
            s3dlio.copy(f"s3://{src_bucket}/{src_key}", f"s3://{dst_bucket}/{dst_key}", config=self._config)

    def __repr__(self) -> str:
        return f"S3Client(region={self._region!r}, endpoint={self._endpoint!r})"


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def identity(obj: S3Reader) -> S3Reader:
    """The default transform: the reader itself."""
    return obj


def get_objects_from_uris(object_uris: str | Iterable[str], client: S3Client) -> Iterator[S3BucketKeyData]:
    """The objects named by one URI or many (parsed as they are consumed)."""
    uris = [object_uris] if isinstance(object_uris, str) else object_uris
    return (S3BucketKeyData(*parse_s3_uri(uri)) for uri in uris)


def get_objects_from_prefix(s3_uri: str, client: S3Client) -> Iterator[S3BucketKeyData]:
    """The objects under a prefix in listing order (folder markers skipped), with their sizes."""
    bucket, prefix = parse_s3_uri(s3_uri)
    for page in client.list_objects(bucket, prefix):
        for info in page.object_info:
            if not (info.key.endswith("/") and info.size == 0):
                yield S3BucketKeyData(bucket, info.key, info)


ObjectsFn = Callable[[S3Client], Iterable[S3BucketKeyData]]
Transform = Callable[[S3Reader], Any]


class _S3Dataset:
    """What both datasets share: the client settings, the transform and the reader choice."""

    def _init_common(
        self,
        region: str,
        get_dataset_objects: ObjectsFn,
        endpoint: str | None,
        transform: Transform,
        s3client_config: S3ClientConfig | None,
        reader_constructor: Callable[..., S3Reader] | None,
    ) -> None:
        self._get_dataset_objects = get_dataset_objects
        if not callable(transform):
            raise TypeError(f"transform must be callable, not {type(transform).__name__}")
        self._transform = transform
        self._region = region
        self._endpoint = endpoint
        self._s3client_config = s3client_config
        self._reader_constructor = _check_constructor(reader_constructor or S3ReaderConstructor.default())
        self._client = S3Client(region, endpoint=endpoint, s3client_config=s3client_config)

    @property
    def region(self) -> str:
        return self._region

    @property
    def endpoint(self) -> str | None:
        return self._endpoint

    def _get_client(self) -> S3Client:
        return self._client

    def _get_object(self, obj: S3BucketKeyData) -> S3Reader:
        return self._client.get_object(
            obj.bucket, obj.key, object_info=obj.object_info, reader_constructor=self._reader_constructor
        )

    def _get_transformed_object(self, obj: S3BucketKeyData) -> Any:
        return self._transform(self._get_object(obj))


class S3MapDataset(_S3Dataset, _MapBase):
    """A map-style dataset of S3 objects: ``ds[i]`` is ``transform(reader of object i)``.

    Build it with :meth:`from_prefix` (listed once, on first use, in listing order) or
    :meth:`from_objects`. ``len(ds)`` is the number of objects.
    """

    def __init__(
        self,
        region: str,
        get_dataset_objects: ObjectsFn,
        endpoint: str | None = None,
        transform: Transform = identity,
        s3client_config: S3ClientConfig | None = None,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> None:
        self._init_common(
            region, get_dataset_objects, endpoint, transform, s3client_config, reader_constructor
        )
        self._bucket_key_pairs: list[S3BucketKeyData] | None = None

    @classmethod
    def from_objects(
        cls,
        object_uris: str | Iterable[str],
        *,
        region: str,
        endpoint: str | None = None,
        transform: Transform = identity,
        s3client_config: S3ClientConfig | None = None,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> S3MapDataset:
        """The objects named by ``object_uris`` (one ``s3://`` URI or many), in that order."""
        return cls(
            region,
            partial(get_objects_from_uris, object_uris),
            endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
        )

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: str,
        endpoint: str | None = None,
        transform: Transform = identity,
        s3client_config: S3ClientConfig | None = None,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> S3MapDataset:
        """Every object whose key starts with the prefix of ``s3_uri``, in listing order."""
        return cls(
            region,
            partial(get_objects_from_prefix, s3_uri),
            endpoint,
            transform=transform,
            s3client_config=s3client_config,
            reader_constructor=reader_constructor,
        )

    @property
    def _dataset_bucket_key_pairs(self) -> list[S3BucketKeyData]:
        if self._bucket_key_pairs is None:
            with _s3_errors():
                self._bucket_key_pairs = list(self._get_dataset_objects(self._client))
        return self._bucket_key_pairs

    def __getitem__(self, i: int) -> Any:
        return self._get_transformed_object(self._dataset_bucket_key_pairs[i])

    def __len__(self) -> int:
        return len(self._dataset_bucket_key_pairs)


class S3IterableDataset(_S3Dataset, _IterBase):
    """An iterable dataset of S3 objects: each item is ``transform(reader)``, in listing order
    (:meth:`from_prefix` lists again on every iteration) or in the order given
    (:meth:`from_objects`).

    With ``enable_sharding=True`` objects are dealt round-robin first across torch.distributed
    ranks (read when the dataset is built), then across the DataLoader's workers; without it
    every worker yields every object.
    """

    def __init__(
        self,
        region: str,
        get_dataset_objects: ObjectsFn,
        endpoint: str | None = None,
        transform: Transform = identity,
        s3client_config: S3ClientConfig | None = None,
        enable_sharding: bool = False,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> None:
        self._init_common(
            region, get_dataset_objects, endpoint, transform, s3client_config, reader_constructor
        )
        self._enable_sharding = enable_sharding
        self._rank, self._world_size = 0, 1
        try:
            import torch.distributed as dist
        except ImportError:
            pass
        else:
            if dist.is_available() and dist.is_initialized():
                self._rank, self._world_size = int(dist.get_rank()), int(dist.get_world_size())

    @classmethod
    def from_objects(
        cls,
        object_uris: str | Iterable[str],
        *,
        region: str,
        endpoint: str | None = None,
        transform: Transform = identity,
        s3client_config: S3ClientConfig | None = None,
        enable_sharding: bool = False,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> S3IterableDataset:
        """The objects named by ``object_uris`` (one ``s3://`` URI or many), in that order."""
        return cls(
            region,
            partial(get_objects_from_uris, object_uris),
            endpoint,
            transform=transform,
            s3client_config=s3client_config,
            enable_sharding=enable_sharding,
            reader_constructor=reader_constructor,
        )

    @classmethod
    def from_prefix(
        cls,
        s3_uri: str,
        *,
        region: str,
        endpoint: str | None = None,
        transform: Transform = identity,
        s3client_config: S3ClientConfig | None = None,
        enable_sharding: bool = False,
        reader_constructor: Callable[..., S3Reader] | None = None,
    ) -> S3IterableDataset:
        """Every object whose key starts with the prefix of ``s3_uri``, in listing order."""
        return cls(
            region,
            partial(get_objects_from_prefix, s3_uri),
            endpoint,
            transform=transform,
            s3client_config=s3client_config,
            enable_sharding=enable_sharding,
            reader_constructor=reader_constructor,
        )

    def __iter__(self) -> Iterator[Any]:
        worker, workers = 0, 1
        if self._enable_sharding:
            import sys

            data = sys.modules.get("torch.utils.data")
            info = data.get_worker_info() if data is not None else None
            if info is not None:
                worker, workers = int(info.id), int(info.num_workers)
        rank, world = (self._rank, self._world_size) if self._enable_sharding else (0, 1)
        # First across ranks, then across this rank's workers, both round-robin in listing order.
        mine = (obj for i, obj in enumerate(self._objects()) if i % world == rank)
        for i, obj in enumerate(mine):
            if i % workers == worker:
                yield self._get_transformed_object(obj)

    def _objects(self) -> Iterator[S3BucketKeyData]:
        """The dataset's objects, listed as they are consumed, errors as :class:`S3Exception`."""
        with _s3_errors():
            objects = iter(self._get_dataset_objects(self._client))
        while True:
            with _s3_errors():
                obj = next(objects, None)
            if obj is None:
                return
            yield obj


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


class S3Checkpoint:
    """Checkpoints as single objects: ``torch.save(sd, ckpt.writer(uri))`` (inside ``with``)
    and ``torch.load(ckpt.reader(uri))``."""

    def __init__(
        self, region: str, endpoint: str | None = None, s3client_config: S3ClientConfig | None = None
    ) -> None:
        self.region = region
        self.endpoint = endpoint
        self._client = S3Client(region, endpoint=endpoint, s3client_config=s3client_config)

    def reader(self, s3_uri: str) -> S3Reader:
        """A reader of the checkpoint at ``s3_uri`` (``s3://bucket/key``)."""
        bucket, key = parse_s3_uri(s3_uri)
        return self._client.get_object(bucket, key)

    def writer(self, s3_uri: str) -> S3Writer:
        """A writer publishing the checkpoint at ``s3_uri`` on ``close()``."""
        bucket, key = parse_s3_uri(s3_uri)
        return self._client.put_object(bucket, key)
