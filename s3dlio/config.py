"""Storage configuration: where the server is, how to authenticate, timeouts, retries, transfer sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import _core

__all__ = ["StorageConfig", "native_config"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class StorageConfig:
    """Frozen, picklable storage settings, validated once at construction.

    Every field left ``None`` is resolved from the standard AWS sources when a client is built:
    ``endpoint_url`` from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; ``region`` from
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` / the profile, else ``us-east-1``; credentials from
    the standard chain (environment, profile, web identity, ...). Explicit keys are used as static
    credentials and nothing else is probed.

    Pass it as ``config=`` to any s3dlio call. Bad values raise
    :class:`s3dlio.exceptions.InvalidConfigError` here, not later.
    """

    #: The S3 endpoint, or several (a list, or one string separated by commas) for one store
    #: behind several gateways: requests are spread over them by ``endpoint_policy``, and one that
    #: refuses connections is skipped for a while (see docs/configuration.md).
    endpoint_url: str | Sequence[str] | None = None
    #: ``"round_robin"`` or ``"least_outstanding"`` (fewest requests in flight). ``None``: round robin.
    endpoint_policy: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    #: Path-style addressing (``http://host/bucket/key``). ``None``: on when ``endpoint_url`` is set.
    force_path_style: bool | None = None
    #: Seconds to establish a TCP (and TLS) connection.
    connect_timeout: float = 5.0
    #: Seconds without receiving a byte before a request attempt fails.
    read_timeout: float = 30.0
    #: Seconds for one whole operation (one object read or write, one stat, one delete batch,
    #: one listing page), every attempt, backoff and the body included (``None``: unlimited).
    operation_timeout: float | None = None
    #: Attempts of one request in all (1 = no retries), counted once whether the headers or the
    #: body failed; retries use jittered exponential backoff on 503/SlowDown, 5xx, timeouts and
    #: connection resets.
    max_attempts: int = 5
    #: Base of the retry backoff, in seconds.
    initial_backoff: float = 0.05
    #: Requests in flight for get_many, multipart parts, upload/download and delete_prefix.
    max_concurrency: int = 64
    #: Objects of at least this many bytes are uploaded with multipart.
    multipart_threshold: int = 16 * MiB
    #: Part size of multipart uploads and of streamed upload/download (S3 requires >= 5 MiB).
    part_size: int = 8 * MiB
    #: ``file://`` and ``direct://`` writes are flushed to stable storage (the file and its
    #: directory) before the call returns, like ``cp`` followed by ``sync``. Off by default.
    fsync: bool = False
    #: Bytes of freed read buffers this process keeps for reuse, so the next read of a similar size
    #: takes memory that is already mapped (no page faults, no zeroing). One pool per process,
    #: shared by every store: the value of the config used last wins. ``0`` turns pooling off.
    #: ``None``: ``S3DLIO_BUFFER_POOL_BYTES``, else a sixteenth of physical memory, at most 1 GiB
    #: (see docs/zero-copy.md).
    buffer_pool_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and not isinstance(self.endpoint_url, str):
            if not all(isinstance(e, str) for e in self.endpoint_url):
                from .exceptions import InvalidConfigError

                raise InvalidConfigError("endpoint_url must be a URL, or a list of URLs")
            object.__setattr__(self, "endpoint_url", ",".join(self.endpoint_url))
        object.__setattr__(self, "_native", _core.Config(**self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def native(self) -> _core.Config:
        """The validated native config passed to the Rust core."""
        native: _core.Config = self.__dict__["_native"]
        return native

    def __getstate__(self) -> dict[str, Any]:
        return self._fields()

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self.__post_init__()

    def __repr__(self) -> str:
        # Secrets never appear; the access key id shows at most its last 4 characters, as the AWS
        # CLI does (`aws configure list`), enough to tell two keys apart.
        shown = []
        for k, v in self._fields().items():
            if k in ("secret_access_key", "session_token") and v is not None:
                v = "***"
            elif k == "access_key_id" and v is not None:
                v = _masked_key_id(v)
            shown.append(f"{k}={v!r}")
        return f"StorageConfig({', '.join(shown)})"


def _masked_key_id(key: str) -> str:
    """``'****'`` plus the last 4 characters of ``key``; just ``'****'`` when it has 4 or fewer."""
    return "****" + key[-4:] if len(key) > 4 else "****"


def native_config(config: StorageConfig | None) -> _core.Config | None:
    """The native config to hand to ``s3dlio._core`` (``None``: resolve from the environment)."""
    if config is None:
        return None
    if not isinstance(config, StorageConfig):  # untyped callers
        from .exceptions import InvalidConfigError  # type: ignore[unreachable]

        raise InvalidConfigError(f"config must be an s3dlio.StorageConfig, not {type(config).__name__}")
    return config.native
