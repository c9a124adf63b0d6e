"""Exceptions raised by s3dlio.

Every error is an :class:`S3dlioError` *and* the builtin a Python user would already catch:

=============================  ===========================  =========================================
class                          also a                       raised for
=============================  ===========================  =========================================
:class:`NotFoundError`         ``FileNotFoundError``        missing object, bucket, file or directory
:class:`AccessDeniedError`     ``PermissionError``          HTTP 403, bad credentials, EACCES
:class:`StorageTimeoutError`   ``TimeoutError``             connect/read/operation timeouts
:class:`ThrottledError`        ``ConnectionError``          503 SlowDown after all retries
:class:`InvalidUriError`       ``ValueError``               a URI s3dlio cannot parse or serve
:class:`InvalidConfigError`    ``ValueError``               a bad option or argument
:class:`RangeError`            ``ValueError``               a byte range outside the object
:class:`DirectIOUnsupported`   ``OSError``                  ``direct://`` on a filesystem without O_DIRECT
:class:`StorageIOError`        ``OSError``                  other I/O, network or server errors
:class:`CancelledError`        --                           the operation's cancellation token fired
=============================  ===========================  =========================================

Messages name the URI and the cause chain; they never contain a credential.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "CancelledError",
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

    ``uri`` is the object the failing operation was about (``None`` when there is none).
    """

    uri: str | None = None

    def __init__(self, message: str, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[type[S3dlioError], tuple[str, str | None]]:
        # Picklable across multiprocessing workers.
        return (type(self), (str(self), self.uri))


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
    """Any other I/O, network or server error (connection refused, HTTP 5xx after retries, ...)."""


class CancelledError(S3dlioError):
    """The operation was cancelled (its cancellation token fired, e.g. by Ctrl-C or ``close()``)."""
