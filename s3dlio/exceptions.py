"""Exceptions raised by s3dlio.

Every error is an :class:`S3dlioError` *and* the builtin a Python user would already catch:

===============================  =====================  ====================================================
class                            also a                 raised for
===============================  =====================  ====================================================
:class:`NotFoundError`           ``FileNotFoundError``  missing object, bucket, file or directory
:class:`AccessDeniedError`       ``PermissionError``    HTTP 403, bad credentials, EACCES
:class:`StorageTimeoutError`     ``TimeoutError``       connect/read/operation timeouts
:class:`ThrottledError`          ``ConnectionError``    503 SlowDown after all retries
:class:`InvalidUriError`         ``ValueError``         a URI s3dlio cannot parse or serve
:class:`InvalidConfigError`      ``ValueError``         a bad option or argument
:class:`RangeError`              ``ValueError``         a byte range outside the object
:class:`DirectIOUnsupported`     ``OSError``            ``direct://`` on a filesystem without O_DIRECT
:class:`StorageIOError`          ``OSError``            other I/O, network or server errors
:class:`CorruptCheckpointError`  ``OSError``            a checkpoint shard or manifest that fails its checks
:class:`CorruptShardError`       ``OSError``            a dataset shard (tar, TFRecord, zip) that fails to parse or its CRCs
:class:`CancelledError`          --                     the operation's cancellation token fired
===============================  =====================  ====================================================

Messages name the URI and the cause chain; they never contain a credential.

Besides the message, every exception carries structured fields (``None`` where there is none):

- ``uri``: the object the failing operation was about;
- ``status``: the HTTP status the server answered (``404``, ``403``, ``503``, ...);
- ``code``: the S3 error code it gave (``"NoSuchKey"``, ``"NoSuchBucket"``, ``"AccessDenied"``, ...);
- ``request_id``: the server's request id (``x-amz-request-id``), for a support ticket.

They pickle with every field, so they cross ``multiprocessing`` workers intact.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "CancelledError",
    "CorruptCheckpointError",
    "CorruptShardError",
    "DirectIOUnsupported",
    "InvalidConfigError",
    "InvalidUriError",
    "NotFoundError",
    "RangeError",
    "S3dlioError",
    "StorageIOError",
    "StorageTimeoutError",
    "ThrottledError",
]


class S3dlioError(Exception):
    """Base class of every error s3dlio raises.

    ``uri`` is the object the failing operation was about; ``status`` the HTTP status, ``code``
    the S3 error code (``"NoSuchKey"``) and ``request_id`` the server's request id of the failed
    request. Each is ``None`` when there is none (a local file, a connection that never got an
    answer, a bad argument).
    """

    uri: str | None = None
    status: int | None = None
    code: str | None = None
    request_id: str | None = None

    def __init__(
        self,
        message: str,
        uri: str | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.uri = uri
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(
        self,
    ) -> tuple[type[S3dlioError], tuple[str, str | None, int | None, str | None, str | None]]:
        # Picklable across multiprocessing workers, with every structured field.
        return (type(self), (str(self), self.uri, self.status, self.code, self.request_id))


class NotFoundError(S3dlioError, FileNotFoundError):
    """The object, bucket, file or directory does not exist."""


class AccessDeniedError(S3dlioError, PermissionError):
    """The server refused the request (HTTP 403, unknown access key, bad signature)."""


class StorageTimeoutError(S3dlioError, TimeoutError):
    """A connect, read or operation timeout expired."""


class ThrottledError(S3dlioError, ConnectionError):
    """The server kept answering 503 SlowDown / throttling after every retry."""


class InvalidUriError(S3dlioError, ValueError):
    """A URI that s3dlio cannot parse or serve."""


class InvalidConfigError(S3dlioError, ValueError):
    """A bad option, configuration value or argument."""


class RangeError(S3dlioError, ValueError):
    """A requested byte range lies (partly) outside the object; s3dlio never pads."""


class DirectIOUnsupported(S3dlioError, OSError):
    """``direct://`` was used on a filesystem that refuses O_DIRECT (ramfs, procfs, tmpfs before Linux 6.6)."""


class StorageIOError(S3dlioError, OSError):
    """Any other I/O, network or server error (connection refused, HTTP 5xx after retries, ...),
    and an object that changed while it was being read (a large read restarts once when the
    object is replaced mid-read; a second change, or a size that differs from the listing's, is
    this error: never a mix of two versions)."""


class CancelledError(S3dlioError):
    """The operation was cancelled (its cancellation token fired, e.g. by Ctrl-C or ``close()``)."""


class CorruptCheckpointError(StorageIOError):
    """A checkpoint that cannot be trusted: a shard whose size or CRC32C differs from what its
    manifest recorded, a shard or manifest that is missing, or a manifest that cannot be parsed.
    ``uri`` names the offending object (the shard, or the manifest). A :class:`StorageIOError`
    (and so an ``OSError``); raised by :mod:`s3dlio.checkpoint`."""


class CorruptShardError(StorageIOError):
    """A dataset shard that cannot be trusted: a TFRecord record whose length or data CRC does not
    match, a tar header or zip directory that does not parse, an index that points outside its
    shard. ``uri`` names the shard, and the message the record or member. A
    :class:`StorageIOError` (and so an ``OSError``); raised by :mod:`s3dlio.formats` and
    :class:`s3dlio.ShardedDataset`."""
