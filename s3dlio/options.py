"""The three configuration levels of an s3dlio loader, aligned with PyTorch.

1. :class:`LoaderOptions`: what a ``torch.utils.data.DataLoader`` user sets.
2. :class:`PoolConfig`: requests in flight and batches read ahead. Derived from the
   LoaderOptions (:meth:`PoolConfig.from_loader_options`) unless given.
3. :class:`RangeEngineConfig`: parallel ranged GETs for large objects. Its defaults suit most
   objects.

Each is a frozen, picklable dataclass mirroring a Rust struct, validated once at construction by
the Rust core; unknown keys raise ``TypeError`` and bad values raise
:class:`s3dlio.exceptions.InvalidConfigError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from . import _core

__all__ = ["LoaderOptions", "PoolConfig", "RangeEngineConfig"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class LoaderOptions:
    """Loader settings with torch DataLoader's names and meanings (see docs/configuration.md)."""

    #: Samples per batch.
    batch_size: int = 1
    #: A seeded permutation of the dataset, different every epoch and identical on every rank.
    shuffle: bool = False
    #: Seed of the permutation.
    seed: int = 0
    #: Drop the last, incomplete batch of each epoch (its objects are never fetched).
    drop_last: bool = False
    #: Threads that run ``transform`` and ``collate_fn`` (0: the iterating thread itself).
    num_workers: int = 0
    #: Batches prepared ahead per worker (default 2), as torch's ``prefetch_factor``.
    prefetch_factor: int | None = None
    #: Copy each batch's tensors into page-locked memory (needs torch with CUDA).
    pin_memory: bool = False
    #: Seconds to wait for one batch before raising :class:`~s3dlio.exceptions.StorageTimeoutError`
    #: (``None``: no limit). torch's ``timeout=0`` means the same as ``None``.
    timeout: float | None = None
    #: Keep the worker threads alive across epochs instead of starting them every epoch.
    persistent_workers: bool = False
    #: Yield samples in dataset order (True) or as soon as they arrive (False).
    in_order: bool = True
    #: A failed object raises its error (naming the URI) and ends the epoch (``"raise"``), or
    #: raises it in place of its batch and lets iteration go on (``"continue"``).
    on_error: Literal["raise", "continue"] = "raise"

    def __post_init__(self) -> None:
        _core.validate_loader_options(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def readahead_batches(self) -> int:
        """Batches read ahead: ``prefetch_factor`` (default 2) per worker, at least one worker
        (the Rust core's derivation, as used by :meth:`PoolConfig.from_loader_options`)."""
        return PoolConfig.from_loader_options(self).readahead_batches


@dataclass(frozen=True)
class PoolConfig:
    """Requests in flight and batches buffered ahead of the consumer."""

    #: Object requests in flight at once.
    pool_size: int
    #: Finished batches buffered ahead of the consumer.
    readahead_batches: int
    #: Deadline of one object request, retries included (``None``: the storage timeouts only).
    request_timeout: float | None = None
    #: Adapt the attempts in flight to the store: halve them when it throttles (503 SlowDown, 429)
    #: or stops answering, climb back as requests succeed (``False``: always ``pool_size``).
    adaptive: bool = True
    #: The fewest requests in flight adaptation goes down to (1 to ``pool_size``).
    min_pool_size: int = 1
    #: While the store throttles or does not answer, the seconds a request keeps waiting on the
    #: pool's probes (which cost it none of ``StorageConfig.max_attempts``) before it fails.
    pushback_timeout: float = 60.0

    def __post_init__(self) -> None:
        _core.validate_pool_config(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_loader_options(cls, options: LoaderOptions) -> PoolConfig:
        """The pool a loader with ``options`` gets: ``readahead_batches`` from prefetch_factor and
        num_workers, and enough requests in flight to fill that window (between 16 and 256)."""
        return cls(**_core.pool_from_loader_options(options.to_dict()))


@dataclass(frozen=True)
class RangeEngineConfig:
    """Parallel ranged GETs: objects of known size >= ``min_split_size`` are fetched as
    ``chunk_size`` ranges, ``max_concurrent_ranges`` at a time, straight into one buffer."""

    chunk_size: int = 8 * MiB
    max_concurrent_ranges: int = 16
    min_split_size: int = 32 * MiB
    #: Deadline of one ranged request (``None``: the storage timeouts only).
    range_timeout: float | None = 60.0

    def __post_init__(self) -> None:
        _core.validate_range_config(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
