"""The functions the reference s3dlio release's clients call, on s3dlio's own API.

Code written for the reference s3dlio on PyPI (the DLIO benchmark's s3dlio storage backend,
mlcommons/storage) switches with one import line::

    import s3dlio.compat.reference as s3dlio

    s3dlio.put_bytes("s3://bucket/x.npz", payload)
    data = s3dlio.get("s3://bucket/x.npz")
    part = s3dlio.get_range("s3://bucket/x.npz", offset=0, length=4096)
    for uri, buf in s3dlio.get_many(uris, max_in_flight=64): ...
    uris = s3dlio.list("s3://bucket/train/", recursive=True)
    with s3dlio.MultipartUploadWriter.from_uri("s3://bucket/big.bin") as w:
        w.write(payload)

Every function runs on s3dlio's pool (cancellable, fork-safe, Ctrl-C answered, typed errors), on
every scheme (``s3://``, ``az://``, ``gs://``, ``file://``, ``direct://``). Reads return
s3dlio's zero-copy :class:`~s3dlio.Buffer` where the reference returned its buffer-protocol
``BytesView``: ``bytes(buf)``, ``memoryview(buf)``, ``len(buf)`` and ``numpy.frombuffer(buf)``
work on both.

Where the reference's semantics were unsafe or lossy, this module keeps s3dlio's; each difference
is in the function's docstring, and all of them in docs/migrating.md:

* **Errors are typed, never hidden.** The reference raised ``RuntimeError`` for everything and
  its ``exists`` answered ``False`` on *any* error (access denied, a network failure, a bad
  endpoint). Here a missing object is :class:`~s3dlio.exceptions.NotFoundError` (a
  ``FileNotFoundError`` naming the URI), and ``exists`` raises every error other than not-found.
* **Deletes are exact or boundary-safe.** The reference's ``delete(uri, recursive=True)`` listed
  the URI as a *string prefix* (``data`` also deleted ``data2/...``), and a ``*``/``?`` in the
  URI made it a pattern delete. Here ``recursive=True`` is :func:`s3dlio.delete_prefix` (``data``
  deletes ``data`` and ``data/...``, never ``data2``), and a wildcard is refused.
* **Writers never publish half an object.** The reference's ``MultipartUploadWriter`` completed
  the upload when its ``with`` block raised; this one aborts it (and on garbage collection
  without ``close()``, whatever ``abort_on_drop`` says).
* **Folder markers are not objects.** ``list(..., recursive=True)`` returns objects only;
  a one-level listing returns its sub-prefixes as URIs ending in ``/``.

Not here: the reference's data generators, ``mp_get``, op-log, multi-endpoint stores, checkpoint
classes and the ``_async`` twins (use :mod:`s3dlio`'s own ``get_async``, ``put_async``, ...).
"""

from __future__ import annotations

import builtins
import datetime as _dt
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import s3dlio as _s3
from s3dlio._core import Buffer, ListIter
from s3dlio.exceptions import InvalidConfigError, InvalidUriError, StorageIOError
from s3dlio.files import PublishOnCleanExit

if TYPE_CHECKING:
    from typing_extensions import Buffer as BufferLike

    from s3dlio.files import ObjectWriter

__all__ = [
    "Buffer",
    "MultipartUploadWriter",
    "create_bucket",
    "delete",
    "delete_bucket",
    "exists",
    "get",
    "get_many",
    "get_range",
    "list",
    "mkdir",
    "put_bytes",
    "stat",
]

_LOCAL = ("file://", "direct://")

# The keys of the reference's stat dict, in its order. s3dlio records size, ETag and
# last-modified time; the rest are HTTP headers it does not keep, so they are None ({} for metadata).
_STAT_KEYS = (
    "size",
    "last_modified",
    "etag",
    "content_type",
    "content_language",
    "content_encoding",
    "cache_control",
    "content_disposition",
    "expires",
    "storage_class",
    "server_side_encryption",
    "ssekms_key_id",
    "sse_customer_algorithm",
    "version_id",
    "replication_status",
    "metadata",
)


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


def get(uri: str) -> Buffer:
    """The whole object as a zero-copy :class:`~s3dlio.Buffer` (read-only, buffer protocol).

    The reference returned a ``BytesView``; ``bytes(buf)``, ``memoryview(buf)`` and ``len(buf)``
    work the same. Its ``.memoryview()`` and ``.to_bytes()`` methods are spelled
    ``memoryview(buf)`` and ``bytes(buf)`` here. A missing object raises
    :class:`~s3dlio.exceptions.NotFoundError` (a ``FileNotFoundError``) naming the URI.
    """
    return _s3.get(uri)


def get_range(uri: str, offset: int, length: int | None = None) -> Buffer:
    """``length`` bytes from ``offset`` (to the end when ``length`` is None), as a zero-copy
    :class:`~s3dlio.Buffer`.

    Differs from the reference: a range that is not entirely inside the object raises
    :class:`~s3dlio.exceptions.RangeError` (a ``ValueError``), never the short data the reference
    could return for a range past the end.
    """
    return _s3.get_range(uri, offset, length)


def get_many(uris: Iterable[str], max_in_flight: int = 64) -> builtins.list[tuple[str, Buffer]]:
    """Read many objects concurrently: ``[(uri, buffer), ...]`` in input order, each buffer a
    zero-copy :class:`~s3dlio.Buffer`; at most ``max_in_flight`` requests in flight.

    As in the reference, the first failure is raised; here it is a typed error naming its URI
    and the other requests are cancelled. Unlike the reference, the URIs may mix schemes, and an
    empty list returns ``[]`` instead of raising.
    """
    if isinstance(uris, str):
        raise InvalidConfigError("get_many() takes a sequence of URIs, not a single string", uris)
    todo = builtins.list(uris)
    bufs = _s3.get_many(todo, max_concurrency=max_in_flight)
    return builtins.list(zip(todo, bufs, strict=True))


def stat(uri: str) -> dict[str, Any]:
    """The reference's stat dict: ``size`` (int), ``last_modified`` (an ISO 8601 UTC string such
    as ``"2025-10-08T12:34:56Z"``, or None), ``etag`` (str or None), and the reference's other
    keys (``content_type``, ``storage_class``, ``version_id``, ...), which are always None here
    (``metadata`` is ``{}``): s3dlio does not keep those headers.

    A missing object raises :class:`~s3dlio.exceptions.NotFoundError`; a URI ending in ``/``
    names a prefix, not an object, and raises :class:`~s3dlio.exceptions.InvalidUriError`.
    """
    if uri.endswith("/"):
        raise InvalidUriError(f"invalid URI: {uri}: names a bucket or prefix, not an object", uri)
    info = _s3.stat(uri)
    out: dict[str, Any] = dict.fromkeys(_STAT_KEYS)
    out["size"] = info.size
    out["last_modified"] = _iso(info.last_modified)
    out["etag"] = info.etag
    out["metadata"] = {}
    return out


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    s = _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat()
    return s.removesuffix("+00:00") + "Z"


def exists(uri: str) -> bool:
    """True when the object exists, False when it does not.

    Differs from the reference, which answered False on *any* error: here an access denial, a
    timeout, a refused connection or a bad URI is raised (``PermissionError``, ``TimeoutError``,
    ``OSError``, ``ValueError`` subclasses from :mod:`s3dlio.exceptions`), so a misconfigured
    endpoint is never mistaken for an empty store. A URI ending in ``/`` names a prefix, never an
    object, so it is False without a request (the reference answered True for a folder marker).
    """
    if uri.endswith("/"):
        return False
    return _s3.exists(uri)


def list(  # noqa: A001 - the reference's name
    uri: str, recursive: bool = False, pattern: str | None = None
) -> builtins.list[str]:
    """The URIs under the prefix ``uri``, sorted.

    ``uri`` is a string prefix, as in the reference and :func:`s3dlio.list`: ``s3://b/data``
    also lists ``data2/...``; end it with ``/`` to list a directory. ``recursive=False`` (the
    reference's default) stops at the next ``/`` and returns each sub-prefix once, as a URI ending
    in ``/``; ``recursive=True`` returns every object below. ``pattern`` is a regular expression
    (Python :mod:`re` syntax, the reference's Rust regex in all common cases) searched anywhere in
    each full URI, as the reference did: ``pattern=r"\\.npz$"``.

    Differs from the reference: folder markers (zero-byte keys ending in ``/``) are never returned
    as objects, and the directory being listed is not returned as its own entry. An invalid
    pattern is an :class:`~s3dlio.exceptions.InvalidConfigError` (a ``ValueError``).
    """
    try:
        rx = None if pattern is None else re.compile(pattern)
    except re.error as e:
        raise InvalidConfigError(f"{uri}: pattern {pattern!r} is not a regular expression: {e}", uri) from e
    out = []
    for info in _s3.list_iter(uri, recursive=recursive):
        if info.is_dir and (recursive or info.uri == uri):
            continue  # a folder marker, or the listed directory itself
        if rx is None or rx.search(info.uri):
            out.append(info.uri)
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Writes and deletes
# ---------------------------------------------------------------------------------------------


def put_bytes(uri: str, data: BufferLike) -> None:
    """Write ``data`` (bytes, bytearray, memoryview, a numpy array, a :class:`~s3dlio.Buffer`:
    anything with the buffer protocol) as the object ``uri``: :func:`s3dlio.put`.

    Differs from the reference: no copy is made of ``data`` (the reference copied it into Rust
    first), large objects go up as a concurrent multipart upload that is aborted on any failure,
    and an object without the buffer protocol (only ``__bytes__``) is a ``TypeError``.
    """
    _s3.put(uri, data)


def mkdir(uri: str) -> None:
    """Make ``uri`` usable as a directory.

    ``file://`` and ``direct://``: the directory and its parents are created (an existing one is
    fine). Object stores have no directories: a prefix exists once an object is under it, so
    nothing is written; the bucket (or container) is checked with one listing request, so a
    missing bucket or a refused credential raises here. The reference wrote a zero-byte folder
    marker on some object stores; s3dlio never creates markers.
    """
    if uri.startswith(_LOCAL):
        _s3.create_bucket(uri)
        return
    it = _s3.list_iter(uri if uri.endswith("/") else uri + "/", recursive=False)
    try:
        next(it, None)
    finally:
        if isinstance(it, ListIter):
            it.close()


def delete(uri: str, recursive: bool = False) -> None:
    """Delete an object, or with ``recursive=True`` a whole prefix. Deleting what does not exist
    is not an error.

    * ``delete("s3://b/obj_1")`` deletes exactly that object, never ``obj_10``.
    * ``delete("s3://b/data", recursive=True)`` is :func:`s3dlio.delete_prefix`: the object
      ``data`` (if any), every key under ``data/`` and its folder markers, never ``data2/...``.
      (The reference listed ``data`` as a string prefix and also deleted ``data2/...``.)
    * ``delete("s3://b/data/")`` (a trailing ``/``, not recursive) deletes the objects directly
      under ``data/``, as the reference did; sub-prefixes and folder markers stay.

    Differs from the reference: a ``*`` or ``?`` in the URI is refused with
    :class:`~s3dlio.exceptions.InvalidConfigError` instead of deleting what a pattern matches:
    list with ``list(prefix, pattern=...)`` and delete the URIs you got.
    """
    if "*" in uri or "?" in uri:
        raise InvalidConfigError(
            f"delete() takes one object or (recursive=True) one prefix, not a pattern: {uri}; "
            "list(prefix, pattern=...) and delete each URI",
            uri,
        )
    if recursive:
        _s3.delete_prefix(uri)
    elif uri.endswith("/"):
        for info in _s3.list(uri, recursive=False):
            if not info.is_dir:
                _s3.delete(info.uri)
    else:
        _s3.delete(uri)


def _bucket_uri(name: str) -> str:
    return name.rstrip("/") if "://" in name else "s3://" + name.rstrip("/")


def create_bucket(bucket_name: str) -> None:
    """Create a bucket: a bare name (``"my-bucket"``, as the reference took) is an S3 bucket, a
    URI (``s3://``, ``az://``, ``gs://``, ``file://``) names its scheme. A bucket you already own
    is not an error (HTTP 409 ``BucketAlreadyOwnedByYou``); one owned by someone else is."""
    try:
        _s3.create_bucket(_bucket_uri(bucket_name))
    except StorageIOError as e:
        if e.code != "BucketAlreadyOwnedByYou":
            raise


def delete_bucket(bucket_name: str) -> None:
    """Delete an empty bucket: a bare name is an S3 bucket, a URI names its scheme."""
    _s3.delete_bucket(_bucket_uri(bucket_name))


# ---------------------------------------------------------------------------------------------
# The streaming writer
# ---------------------------------------------------------------------------------------------


def _size(name: str, v: object, uri: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidConfigError(f"{name} must be an int of at least 0, got {v!r}", uri)
    return v


class MultipartUploadWriter(PublishOnCleanExit):
    """The reference's streaming multipart writer, on :func:`s3dlio.open` (``"wb"``).

    ``MultipartUploadWriter.from_uri(uri, part_size=, max_in_flight=)`` (any scheme) or
    ``MultipartUploadWriter(bucket, key, ...)`` (S3). ``write(data)`` streams parts while you
    write; ``close()`` publishes and returns ``{"total_bytes", "parts", "started_at",
    "completed_at"}``; ``abort()`` discards; ``reserve(n)`` / ``commit(nbytes)`` hand out a
    writable buffer to fill. Memory stays near ``part_size * max_in_flight``.

    Differs from the reference:

    * a ``with`` block that raises **aborts** the upload (the reference completed it, publishing
      whatever had been written); an unclosed writer is aborted when garbage collected, whatever
      ``abort_on_drop`` says (``False`` left the upload open on the server, never published);
    * ``part_size`` defaults to ``StorageConfig.part_size`` (8 MiB; the reference's was 16 MiB)
      and ``max_in_flight`` to 8 parts (the reference's 16);
    * an object smaller than one part is written with a single PUT: ``parts`` is 0 then; the
      close dict has no ``"etag"`` (the reference's only had one when the server sent it);
    * ``close()`` is idempotent (a second call returns the same dict), and writing to a closed
      writer raises ``ValueError``; ``flush()`` sends nothing early (parts go as they fill);
    * ``content_type`` is refused (s3dlio does not set Content-Type) rather than ignored;
    * ``commit`` copies the reserved bytes once into the part buffer, as ``write`` does; the
      memoryview ``reserve`` returned stays valid (it is a ``bytearray``), never a dangling view.
    """

    _w: ObjectWriter

    def __init__(
        self,
        bucket: str,
        key: str,
        part_size: int | None = None,
        max_in_flight: int | None = None,
        content_type: str | None = None,
        abort_on_drop: bool | None = None,
    ) -> None:
        self._open(f"s3://{bucket}/{key.lstrip('/')}", part_size, max_in_flight, content_type, abort_on_drop)

    @classmethod
    def from_uri(
        cls,
        uri: str,
        part_size: int | None = None,
        max_in_flight: int | None = None,
        content_type: str | None = None,
        abort_on_drop: bool | None = None,
    ) -> MultipartUploadWriter:
        """A writer of the object ``uri`` (``s3://``, ``az://``, ``gs://``, ``file://``, ``direct://``)."""
        self = cls.__new__(cls)
        self._open(uri, part_size, max_in_flight, content_type, abort_on_drop)
        return self

    def _open(
        self,
        uri: str,
        part_size: int | None,
        max_in_flight: int | None,
        content_type: str | None,
        abort_on_drop: bool | None,
    ) -> None:
        if content_type is not None:
            raise InvalidConfigError(
                "content_type: s3dlio does not set an object's Content-Type (leave it None)", uri
            )
        if abort_on_drop is not None and not isinstance(abort_on_drop, bool):
            raise InvalidConfigError(f"abort_on_drop must be a bool or None, got {abort_on_drop!r}", uri)
        self._pending: bytearray | None = None
        self._info: dict[str, Any] | None = None
        self._started = time.time()
        self._w = _s3.open(uri, "wb", part_size=part_size, max_parts_in_flight=max_in_flight)

    @property
    def uri(self) -> str:
        """The object being written."""
        return self._w.uri

    @property
    def closed(self) -> bool:
        """True after ``close()`` or ``abort()``."""
        return self._w.closed

    def write(self, data: BufferLike) -> int:
        """Append ``data`` (any buffer: bytes, bytearray, memoryview, numpy, Buffer); returns its
        length. Blocks (GIL released, Ctrl-C answered) while ``max_in_flight`` parts are in flight."""
        return self._w.write(data)

    def reserve(self, size: int) -> memoryview:
        """A writable memoryview of ``size`` bytes to fill, then pass to ``commit(nbytes)``. One
        reservation at a time."""
        if self._w.closed:
            raise ValueError(f"I/O operation on closed file {self.uri}")
        if self._pending is not None:
            raise InvalidConfigError("reserve() while a reservation is pending: commit() it first", self.uri)
        self._pending = bytearray(_size("size", size, self.uri))
        return memoryview(self._pending)

    def commit(self, nbytes: int) -> None:
        """Write the first ``nbytes`` of the reserved buffer and end the reservation."""
        buf = self._pending
        if buf is None:
            raise InvalidConfigError("commit() without a reservation: call reserve() first", self.uri)
        n = _size("nbytes", nbytes, self.uri)
        if n > len(buf):
            raise InvalidConfigError(f"commit(nbytes={n}) is more than the {len(buf)} reserved", self.uri)
        self._pending = None
        with memoryview(buf) as view:
            self._w.write(view[:n])

    def flush(self) -> None:
        """Nothing to do: full parts are already on their way, and the rest goes on ``close()``."""
        self._w.flush()

    def close(self) -> dict[str, Any]:
        """Publish the object; returns ``{"total_bytes", "parts", "started_at", "completed_at"}``
        (times in seconds since the epoch). Idempotent. If publishing fails, the upload is
        aborted and the error raised. Raises ``ValueError`` after ``abort()``."""
        if self._info is None:
            self._pending = None
            self._w.close()
            self._info = {
                "total_bytes": self._w.size,  # ValueError after abort(): nothing was published
                "parts": self._w.parts,
                "started_at": self._started,
                "completed_at": time.time(),
            }
        return dict(self._info)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed writer {self.uri}")

    def abort(self) -> None:
        """Discard everything written; nothing is published (idempotent)."""
        self._pending = None
        self._w.abort()

    def __repr__(self) -> str:
        state = "closed" if self._w.closed else "open"
        return f"<s3dlio.compat.reference.MultipartUploadWriter {self.uri!r} {state}>"
