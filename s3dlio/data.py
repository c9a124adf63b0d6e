"""Datasets over objects, and a torch-compatible DataLoader fed by the Rust prefetch pool.

* :class:`ObjectDataset`: map-style (``len``, ``ds[i]``, ``ds.__getitems__(indices)``).
* :class:`ObjectIterableDataset`: iterable, sharding itself by rank (torch.distributed or
  ``RANK``/``WORLD_SIZE``) and then by torch DataLoader worker.
* :class:`DataLoader`: torch DataLoader's arguments and meanings; objects are fetched by the Rust
  pool (hundreds of requests in flight) while ``transform`` and ``collate_fn`` run on the batches
  already delivered.

Both datasets subclass torch's ``Dataset`` / ``IterableDataset`` when torch is installed and work
without it. Build them from a prefix (one listing), a list of URIs, or a manifest file (no listing
at all).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from . import _core
from .config import StorageConfig
from .config import native_config as _native
from .exceptions import CancelledError, InvalidConfigError, S3dlioError
from .options import LoaderOptions, PoolConfig, RangeEngineConfig

if TYPE_CHECKING:
    _MapBase = object
    _IterBase = object
else:
    try:  # Subclass torch's datasets when torch is installed, so torch's DataLoader treats them natively.
        from torch.utils.data import Dataset as _MapBase
        from torch.utils.data import IterableDataset as _IterBase
    except ImportError:
        _MapBase = object
        _IterBase = object

__all__ = ["DataLoader", "ObjectDataset", "ObjectIterableDataset", "default_collate"]

T = TypeVar("T")
Transform = Callable[[_core.Buffer], Any]

STATE_FORMAT = "s3dlio.DataLoader/1"


def distributed_info() -> tuple[int, int]:
    """(rank, world_size): from torch.distributed when it is initialised, else from the ``RANK``
    and ``WORLD_SIZE`` environment variables, else (0, 1)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise InvalidConfigError(f"RANK / WORLD_SIZE must be integers: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise InvalidConfigError(f"RANK={rank} is not inside WORLD_SIZE={world}")
    return rank, world


def worker_info() -> tuple[int, int]:
    """(worker id, number of workers) inside a torch DataLoader worker, else (0, 1)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return (0, 1) if info is None else (int(info.id), int(info.num_workers))


def _read_manifest(
    manifest: str | os.PathLike[str], config: StorageConfig | None
) -> tuple[list[str], list[int | None]]:
    """Lines of ``uri`` or ``uri<TAB>size`` / ``uri,size``; blank lines and ``#`` comments skipped."""
    path = os.fspath(manifest)
    if "://" in path:
        from . import get

        text = bytes(get(path, config=config)).decode()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    uris: list[str] = []
    sizes: list[int | None] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sep = "\t" if "\t" in line else ("," if "," in line else None)
        if sep is None:
            uris.append(line)
            sizes.append(None)
            continue
        uri, size = (part.strip() for part in line.rsplit(sep, 1))
        try:
            n = int(size)
        except ValueError:
            raise InvalidConfigError(f"{path}:{lineno}: size {size!r} is not an integer") from None
        if n < 0:
            raise InvalidConfigError(f"{path}:{lineno}: size {n} is negative")
        uris.append(uri)
        sizes.append(n)
    return uris, sizes


class _ObjectSource:
    """What both datasets share: the objects (URIs and, where known, sizes), the transform and the
    storage config. Plain picklable data, so the datasets travel to spawn/forkserver workers."""

    def _init_source(
        self,
        uris: Sequence[str],
        sizes: Sequence[int | None] | None,
        transform: Transform | None,
        config: StorageConfig | None,
    ) -> None:
        if isinstance(uris, str):
            raise InvalidConfigError("uris must be a sequence of URIs, not one string")
        self._uris = list(uris)
        if sizes is not None and len(sizes) != len(self._uris):
            raise InvalidConfigError(f"{len(sizes)} sizes given for {len(self._uris)} URIs")
        self._sizes = None if sizes is None or all(s is None for s in sizes) else list(sizes)
        if transform is not None and not callable(transform):
            raise InvalidConfigError("transform must be callable (buffer -> sample)")
        self.transform = transform
        if config is not None and not isinstance(config, StorageConfig):
            raise InvalidConfigError("config must be an s3dlio.StorageConfig")
        self.config = config

    @property
    def uris(self) -> list[str]:
        return self._uris

    @property
    def sizes(self) -> list[int | None] | None:
        """Object sizes from the listing or manifest (``None`` where unknown)."""
        return self._sizes

    def __len__(self) -> int:
        return len(self._uris)

    def _sample(self, buf: _core.Buffer) -> Any:
        return buf if self.transform is None else self.transform(buf)

    def _sample_at(self, index: int, buf: _core.Buffer) -> Any:
        """Sample ``index`` from its fetched bytes (a sharded dataset decodes by index)."""
        return self._sample(buf)

    @classmethod
    def from_prefix(cls: type[T], uri: str, *, pattern: str | None = None, **kwargs: Any) -> T:
        """Every object under a prefix (one streamed listing; sizes kept, so no HEAD per object),
        in key order. ``pattern`` is a glob as in :func:`s3dlio.list`."""
        from . import list as list_objects

        infos = [o for o in list_objects(uri, pattern=pattern, config=kwargs.get("config")) if not o.is_dir]
        infos.sort(key=lambda o: o.uri)
        return cls([o.uri for o in infos], [o.size for o in infos], **kwargs)  # type: ignore[call-arg]

    @classmethod
    def from_uris(
        cls: type[T], uris: Sequence[str], sizes: Sequence[int | None] | None = None, **kwargs: Any
    ) -> T:
        """An explicit list of URIs (and optionally their sizes)."""
        return cls(uris, sizes, **kwargs)  # type: ignore[call-arg]

    @classmethod
    def from_manifest(cls: type[T], manifest: str | os.PathLike[str], **kwargs: Any) -> T:
        """A manifest: a local file or an object, one ``uri`` or ``uri<TAB>size`` (or
        ``uri,size``) per line. Millions of objects, no listing."""
        uris, sizes = _read_manifest(manifest, kwargs.get("config"))
        return cls(uris, sizes, **kwargs)  # type: ignore[call-arg]


class ObjectDataset(_ObjectSource, _MapBase):
    """Map-style dataset: ``ds[i]`` reads object ``i`` and returns ``transform(buffer)`` (the
    zero-copy :class:`s3dlio.Buffer` itself without a transform).

    Inside ``torch.utils.data.DataLoader``, torch >= 2.2 calls :meth:`__getitems__` with a whole
    batch of indices, which s3dlio fetches concurrently in one call.
    """

    def __init__(
        self,
        uris: Sequence[str],
        sizes: Sequence[int | None] | None = None,
        *,
        transform: Transform | None = None,
        config: StorageConfig | None = None,
    ) -> None:
        self._init_source(uris, sizes, transform, config)

    def __getitem__(self, index: int) -> Any:
        n = len(self._uris)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for {n} objects")
        return self._sample(_core.get(self._uris[index], None, _native(self.config)))

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        bufs = _core.get_many([self._uris[i] for i in indices], None, _native(self.config))
        return [self._sample(b) for b in bufs]

    def __repr__(self) -> str:
        return f"ObjectDataset({len(self)} objects)"


class ObjectIterableDataset(_ObjectSource, _IterBase):
    """Iterable dataset that shards itself: first by rank (torch.distributed, or
    ``RANK``/``WORLD_SIZE``; every rank gets the same number of samples, padded or dropped as
    DistributedSampler does), then round-robin by torch DataLoader worker. With ``shuffle`` the
    order is a seeded permutation, new every epoch (:meth:`set_epoch`) and the same on every rank.
    Objects stream from the Rust pool; each sample is ``transform(buffer)``.
    """

    def __init__(
        self,
        uris: Sequence[str],
        sizes: Sequence[int | None] | None = None,
        *,
        transform: Transform | None = None,
        config: StorageConfig | None = None,
        shuffle: bool = False,
        seed: int = 0,
        even: str = "pad",
        pool: PoolConfig | None = None,
        range_engine: RangeEngineConfig | None = None,
    ) -> None:
        self._init_source(uris, sizes, transform, config)
        if even not in ("pad", "drop"):
            raise InvalidConfigError(f"even must be 'pad' or 'drop', not {even!r}")
        self.shuffle, self.seed, self.even = bool(shuffle), int(seed), even
        self.pool = pool or PoolConfig(pool_size=64, readahead_batches=4)
        self.range_engine = range_engine or RangeEngineConfig()
        self.epoch = 0
        self._skip = 0  # samples of this epoch's share already consumed (resume)

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` from the next iteration on."""
        self.epoch = int(epoch)
        self._skip = 0

    def indices(self) -> list[int]:
        """This process's share of the current epoch (after rank and worker sharding)."""
        rank, world = distributed_info()
        worker, workers = worker_info()
        return _core.epoch_indices(
            len(self._uris), self.seed, self.epoch, self.shuffle, rank, world, worker, workers, self.even
        )

    def __iter__(self) -> Iterator[Any]:
        order = self.indices()[self._skip :]
        opts = {"batch_size": 32, "in_order": True}
        stream = _core.BatchStream(
            self._uris, order, opts, self.pool.to_dict(), self.range_engine.to_dict(),
            self._sizes, _native(self.config), None,
        )  # fmt: skip
        try:
            for _positions, _indices, bufs in stream:
                for b in bufs:
                    self._skip += 1
                    yield self._sample(b)
            self._skip = 0
            self.epoch += 1
        finally:
            stream.close()

    def state_dict(self) -> dict[str, Any]:
        """O(1) resume state: the epoch and how many samples of this share were consumed."""
        return {"epoch": self.epoch, "seed": self.seed, "consumed": self._skip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise InvalidConfigError(
                f"state was saved with seed {state['seed']}, this dataset has {self.seed}"
            )
        self.epoch, self._skip = int(state["epoch"]), int(state["consumed"])

    def __repr__(self) -> str:
        return f"ObjectIterableDataset({len(self)} objects, shuffle={self.shuffle}, epoch={self.epoch})"


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def default_collate(samples: list[Any]) -> Any:
    """Stack a batch. Buffers become one ``uint8`` array of shape (batch, size) when their sizes
    agree (a list of zero-copy arrays otherwise). With torch installed, everything else goes
    through ``torch.utils.data.default_collate`` and arrays become tensors; without torch, numpy
    arrays and numbers are stacked with numpy, and tuples, lists and dicts are collated per field.
    """
    torch = _torch()
    if samples and all(isinstance(s, _core.Buffer) for s in samples):
        arrays = [np.frombuffer(s, dtype=np.uint8) for s in samples]
        if len({a.size for a in arrays}) != 1:
            return arrays
        stacked = np.stack(arrays)  # the one collate copy: into a fresh, writable array
        return torch.from_numpy(stacked) if torch is not None else stacked
    if torch is not None:
        return torch.utils.data.default_collate(samples)
    return _numpy_collate(samples)


def _numpy_collate(samples: list[Any]) -> Any:
    first = samples[0]
    if isinstance(first, np.ndarray | np.generic | int | float | bool):
        return np.stack([np.asarray(s) for s in samples])
    if isinstance(first, dict):
        return {k: _numpy_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(_numpy_collate(list(group)) for group in zip(*samples, strict=True))
    return samples


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------

_TORCH_ONLY = {
    "sampler": "s3dlio draws the order itself (shuffle, seed, set_epoch, rank sharding); pass shuffle=/seed=, "
    "or use torch.utils.data.DataLoader with an ObjectDataset for a custom sampler",
    "batch_sampler": "batches are formed by the Rust pool; use batch_size/drop_last, or "
    "torch.utils.data.DataLoader with an ObjectDataset",
    "worker_init_fn": "s3dlio's workers are threads in this process, there is no per-worker process to initialise",
    "multiprocessing_context": "s3dlio's workers are threads in this process; no processes are started",
}


class _Progress:
    """Which positions of the current epoch's order have been yielded: a prefix plus, in completion
    order, a few positions past it. O(readahead window), not O(dataset)."""

    def __init__(self, prefix: int = 0, extra: Iterable[int] = ()) -> None:
        self.prefix = prefix
        self.extra: set[int] = set(extra)

    def add(self, positions: Sequence[int]) -> None:
        self.extra.update(positions)
        while self.prefix in self.extra:
            self.extra.discard(self.prefix)
            self.prefix += 1

    def count(self) -> int:
        return self.prefix + len(self.extra)


class DataLoader(Generic[T]):
    """A torch-compatible DataLoader over an :class:`ObjectDataset`, fed by the Rust pool.

    Arguments have torch's names and meanings (see docs/configuration.md); torch arguments that
    mean nothing here raise :class:`~s3dlio.exceptions.InvalidConfigError` saying why. s3dlio
    additions: ``seed`` (the shuffle seed, identical on every rank; default 0), ``in_order``,
    ``on_error``, ``even`` (rank sharding: "pad" or "drop"), ``pool``, ``range_engine``,
    ``cancel_token`` (a :class:`s3dlio.CancelToken` shared with other loaders) and
    ``rank``/``world_size`` (explicit sharding, e.g. ``jax.process_index()``/``process_count()``;
    by default from torch.distributed or ``RANK``/``WORLD_SIZE``).

    ``state_dict()`` / ``load_state_dict()`` follow torchdata's StatefulDataLoader: a state taken
    mid-epoch resumes exactly after the last batch yielded, whatever ``num_workers`` is then.
    ``close()``, leaving a ``with`` block, an early ``break``, Ctrl-C and garbage collection all
    cancel the loader's token and stop its tasks.
    """

    def __init__(
        self,
        dataset: ObjectDataset,
        batch_size: int = 1,
        shuffle: bool = False,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], T] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Any = None,
        multiprocessing_context: Any = None,
        generator: Any = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        seed: int | None = None,
        on_error: str = "raise",
        even: str = "pad",
        options: LoaderOptions | None = None,
        pool: PoolConfig | None = None,
        range_engine: RangeEngineConfig | None = None,
        cancel_token: _core.CancelToken | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        log_stats: bool = False,
    ) -> None:
        given = {"sampler": sampler, "batch_sampler": batch_sampler, "worker_init_fn": worker_init_fn}
        given["multiprocessing_context"] = multiprocessing_context
        for name, value in given.items():
            if value is not None:
                raise InvalidConfigError(f"{name}= has no meaning in s3dlio.DataLoader: {_TORCH_ONLY[name]}")
        if pin_memory_device:
            raise InvalidConfigError(
                "pin_memory_device= is not supported: pinned memory is for the current CUDA device"
            )
        if not isinstance(dataset, ObjectDataset):
            raise InvalidConfigError(
                f"s3dlio.DataLoader reads an s3dlio.ObjectDataset, not {type(dataset).__name__}; for other "
                "datasets (or ObjectIterableDataset) use torch.utils.data.DataLoader"
            )
        if generator is not None:
            if seed is not None:
                raise InvalidConfigError("pass either generator= or seed=, not both")
            seed = int(generator.initial_seed())
        if options is None:
            options = LoaderOptions(
                batch_size=batch_size, shuffle=shuffle, seed=0 if seed is None else seed, drop_last=drop_last,
                num_workers=num_workers, prefetch_factor=prefetch_factor, pin_memory=pin_memory,
                timeout=timeout or None, persistent_workers=persistent_workers, in_order=in_order,
                on_error=on_error,  # type: ignore[arg-type]
            )  # fmt: skip
        elif not isinstance(options, LoaderOptions):
            raise InvalidConfigError("options must be an s3dlio.LoaderOptions")
        if options.pin_memory:
            torch = _torch()
            if torch is None or not torch.cuda.is_available():
                raise InvalidConfigError(
                    "pin_memory=True needs torch with a CUDA device; none is available here"
                )
        if even not in ("pad", "drop"):
            raise InvalidConfigError(f"even must be 'pad' or 'drop', not {even!r}")
        if collate_fn is not None and not callable(collate_fn):
            raise InvalidConfigError("collate_fn must be callable")
        self.dataset = dataset
        self.options = options
        self.pool = pool or PoolConfig.from_loader_options(options)
        self.range_engine = range_engine or RangeEngineConfig()
        self.collate_fn: Callable[[list[Any]], Any] = collate_fn or default_collate
        self.even = even
        if (rank is None) != (world_size is None):
            raise InvalidConfigError("pass rank= and world_size= together (or neither)")
        if world_size is not None and (world_size < 1 or rank is None or not 0 <= rank < world_size):
            raise InvalidConfigError(f"rank={rank} is not inside world_size={world_size}")
        self._shard = None if rank is None or world_size is None else (int(rank), int(world_size))
        self.cancel_token = cancel_token or _core.CancelToken()
        self._epoch = 0
        self._resume: tuple[int, _Progress] | None = None
        self._active: weakref.ReferenceType[_EpochIterator[T]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.log_stats = bool(log_stats)
        self._scope: tuple[int, _core.LoaderScope] | None = None
        self._epoch_start: tuple[float, dict[str, Any]] | None = None

    # torch-style read-only attributes
    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def num_workers(self) -> int:
        return self.options.num_workers

    @property
    def drop_last(self) -> bool:
        return self.options.drop_last

    @property
    def epoch(self) -> int:
        """The epoch the next iteration starts (or resumes)."""
        return self._resume[0] if self._resume else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at ``epoch`` (its permutation), from its beginning."""
        self._epoch = int(epoch)
        self._resume = None

    def shard(self) -> tuple[int, int]:
        """(rank, world_size) this loader reads for: as given, else from torch.distributed or the
        RANK / WORLD_SIZE environment variables, else (0, 1)."""
        return self._shard if self._shard is not None else distributed_info()

    def _order(self, epoch: int) -> list[int]:
        rank, world = self.shard()
        o = self.options
        return _core.epoch_indices(len(self.dataset), o.seed, epoch, o.shuffle, rank, world, 0, 1, self.even)

    def __len__(self) -> int:
        _rank, world = self.shard()
        n = len(self.dataset)
        share = -(-n // world) if self.even == "pad" else n // world
        bs = self.options.batch_size
        return share // bs if self.options.drop_last else -(-share // bs)

    def __iter__(self) -> _EpochIterator[T]:
        if self._closed:
            raise InvalidConfigError("this DataLoader was closed")
        if self.cancel_token.cancelled:
            raise CancelledError(
                "this DataLoader's cancel_token was cancelled (Ctrl-C, close() or token.cancel()); "
                "make a new DataLoader (load_state_dict resumes where it stopped)"
            )
        previous = self._active() if self._active else None
        if previous is not None:
            previous.close()
        if self._resume is not None:
            epoch, progress = self._resume
            self._resume = None
            order = self._order(epoch)
            bs = self.options.batch_size
            usable = len(order) // bs * bs if self.options.drop_last else len(order)
            if progress.count() >= usable:  # saved at the very end of an epoch: next epoch
                epoch, progress = epoch + 1, _Progress()
                order = self._order(epoch)
        else:
            epoch, progress = self._epoch, _Progress()
            order = self._order(epoch)
        self._epoch = epoch + 1
        it: _EpochIterator[T] = _EpochIterator(self, epoch, order, progress)
        self._active = weakref.ref(it)
        return it

    # --- resume (torchdata StatefulDataLoader protocol) ---------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from: O(1) in dataset size (seed, epoch, samples yielded, plus at
        most a read-ahead window of positions when ``in_order=False``)."""
        active = self._active() if self._active else None
        if active is not None and not active.finished:
            epoch, progress = active.epoch, active.progress
        elif self._resume is not None:
            epoch, progress = self._resume
        elif active is not None:
            epoch, progress = active.epoch, active.progress
        else:
            epoch, progress = self._epoch, _Progress()
        return {
            "format": STATE_FORMAT,
            "seed": self.options.seed,
            "shuffle": self.options.shuffle,
            "dataset_len": len(self.dataset),
            "world_size": self.shard()[1],
            "even": self.even,
            "epoch": epoch,
            "samples_yielded": progress.prefix,
            "yielded_beyond": sorted(progress.extra),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` on the next iteration. The order-defining settings (seed,
        shuffle, dataset length, world size) must match; batch size and num_workers may differ."""
        if state.get("format") != STATE_FORMAT:
            raise InvalidConfigError(f"not an s3dlio.DataLoader state (format {state.get('format')!r})")
        mine = self.state_dict()
        for key in ("seed", "shuffle", "dataset_len", "world_size", "even"):
            if state[key] != mine[key]:
                raise InvalidConfigError(
                    f"cannot resume: state has {key}={state[key]!r}, this loader {mine[key]!r}"
                )
        self._resume = (
            int(state["epoch"]),
            _Progress(int(state["samples_yielded"]), state["yielded_beyond"]),
        )

    # --- workers and shutdown ------------------------------------------------------------------

    def _workers(self) -> ThreadPoolExecutor | None:
        n = self.options.num_workers
        if n == 0:
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(n, thread_name_prefix="s3dlio-worker")
        return self._executor

    def _scope_handle(self) -> _core.LoaderScope:
        """This loader's counters and adaptive limit in this process (a forked child starts its
        own)."""
        if self._scope is None or self._scope[0] != os.getpid():
            self._scope = (os.getpid(), _core.LoaderScope(self.pool.to_dict(), self.range_engine.to_dict()))
        return self._scope[1]

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """This loader's storage counters (every epoch so far, in this process): the keys of
        :func:`s3dlio.stats` counted for this loader's requests only, plus

        * ``wait``: ``consumer_s``, the seconds the consumer (the training loop) waited for a
          batch; ``producer_s``, the seconds finished batches waited for the consumer because the
          read-ahead window was full; ``batches`` delivered. A loop that waits more than its
          batches do is input-bound (see docs/observability.md);
        * ``concurrency``: ``adaptive`` and, when it is, the current ``limit`` on request attempts
          in flight, its ``min`` and ``max``, the attempts ``in_flight`` now and the ``cuts``
          made when the store throttled or stopped answering.

        ``reset=True`` starts the counters again from zero after this read."""
        return self._scope_handle().stats(reset)

    def _epoch_started(self) -> None:
        if self.log_stats:
            self._epoch_start = (time.monotonic(), self.stats())

    def _epoch_done(self) -> None:
        if self._executor is not None and not self.options.persistent_workers:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self.log_stats and self._epoch_start is not None:
            t0, before = self._epoch_start
            self._epoch_start = None
            _log.info(_epoch_summary(self._epoch - 1, time.monotonic() - t0, before, self.stats()))

    def live_tasks(self) -> int:
        """Rust tasks this loader has alive right now (0 when idle or closed)."""
        active = self._active() if self._active else None
        return 0 if active is None else active.live_tasks()

    def close(self) -> None:
        """Cancel the loader's token (and so every loader sharing it), wait for its tasks to end,
        stop its worker threads. Idempotent."""
        self.cancel_token.cancel()
        active = self._active() if self._active else None
        if active is not None:
            active.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._closed = True

    def __enter__(self) -> DataLoader[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: best effort
            active = self._active() if self._active else None
            if active is not None:
                active.cancel()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)


class _EpochIterator(Generic[T]):
    """One epoch of a :class:`DataLoader`. Closing it (or losing the last reference, as an early
    ``break`` does) cancels its stream."""

    def __init__(self, loader: DataLoader[T], epoch: int, order: list[int], progress: _Progress) -> None:
        self.loader = loader
        self.epoch = epoch
        self.progress = progress
        self.finished = False
        o = loader.options
        remaining = [p for p in range(progress.prefix, len(order)) if p not in progress.extra]
        self._positions = remaining  # stream position -> epoch position
        ds = loader.dataset
        self._workers = loader._workers()
        # The read-ahead window (pool.readahead_batches) is shared between batches waiting in the
        # Rust channel and batches being transformed/collated by worker threads, so the bytes held
        # stay within (readahead_batches + 2) x batch_size + pool_size objects with any num_workers.
        readahead = loader.pool.readahead_batches
        self._window = 0 if self._workers is None else max(1, min(o.num_workers, readahead - 1))
        pool = dict(loader.pool.to_dict(), readahead_batches=max(1, readahead - self._window))
        loader._epoch_started()  # before the stream starts fetching
        ranged: _core.SampleSource | None = getattr(ds, "_sample_source", lambda: None)()
        self._parts = ranged.parts if ranged is not None else 1
        self._stream = _core.BatchStream(
            [] if ranged else ds.uris, [order[p] for p in remaining], o.to_dict(), pool,
            loader.range_engine.to_dict(), None if ranged else ds.sizes, _native(ds.config),
            loader.cancel_token, loader._scope_handle(), ranged,
        )  # fmt: skip
        self._pending: collections.deque[tuple[list[int], Future[Any]]] = collections.deque()
        self._exhausted = False
        self._lock = threading.Lock()

    def __iter__(self) -> _EpochIterator[T]:
        return self

    def _process(self, indices: list[int], bufs: list[Any]) -> Any:
        ds = self.loader.dataset
        batch = self.loader.collate_fn([ds._sample_at(i, b) for i, b in zip(indices, bufs, strict=True)])
        if self.loader.options.pin_memory:
            batch = _pin(batch)
        return batch

    def _pull(self) -> tuple[list[int], list[int], list[Any]] | None:
        try:
            positions, indices, bufs = next(self._stream)
        except StopIteration:
            self._exhausted = True
            return None
        if self._parts > 1:  # samples of several ranges (HDF5 rows): one tuple of buffers each
            k = self._parts
            return (
                [self._positions[p] for p in positions],
                indices,
                [tuple(bufs[i : i + k]) for i in range(0, len(bufs), k)],
            )
        return [self._positions[p] for p in positions], indices, bufs

    def __next__(self) -> T:
        return self._next()[1]

    def _next(self) -> tuple[list[int], T]:
        """The next batch and its positions in the epoch's order (what s3dlio.tf tracks)."""
        try:
            if self._workers is None:
                raw = self._pull()
                if raw is None:
                    return self._finish()
                positions, indices, bufs = raw
                batch = self._process(indices, bufs)
            else:
                while not self._exhausted and len(self._pending) < self._window:
                    raw = self._pull()
                    if raw is None:
                        break
                    self._pending.append((raw[0], self._workers.submit(self._process, raw[1], raw[2])))
                if not self._pending:
                    return self._finish()
                positions, fut = self._pending.popleft()
                batch = fut.result()
        except S3dlioError:
            # A failed batch (its error names the URI): the Rust stream itself ends the epoch
            # (on_error="raise") or goes on (on_error="continue"); nothing to cancel here.
            raise
        except KeyboardInterrupt:
            # Ctrl-C stops the loader, not just this epoch: its root token (shared with any other
            # loader made with the same cancel_token) is cancelled and every task joined.
            self.loader.cancel_token.cancel()
            self.close()
            raise
        except BaseException:
            self.cancel()
            raise
        self.progress.add(positions)
        return positions, batch

    def _finish(self) -> tuple[list[int], T]:
        self.finished = True
        self._stream.close()
        self.loader._epoch_done()
        raise StopIteration

    def live_tasks(self) -> int:
        return int(self._stream.live_tasks())

    def cancel(self) -> None:
        """Cancel without waiting (safe anywhere, including ``__del__``)."""
        self._stream.cancel()
        for _, fut in self._pending:
            fut.cancel()

    def close(self) -> None:
        """Cancel and wait until every task of this epoch has ended."""
        with self._lock:
            self.cancel()
            self._pending.clear()
            self._stream.close()

    def __enter__(self) -> _EpochIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Losing the last reference (an early `break`) releases everything, as close() does: the
        # join is brief because cancellation drops the requests in flight at once.
        with contextlib.suppress(Exception):  # interpreter shutdown: best effort
            if sys.is_finalizing():
                self.cancel()
            else:
                self.close()


_log = logging.getLogger("s3dlio")


def _epoch_summary(epoch: int, seconds: float, before: dict[str, Any], after: dict[str, Any]) -> str:
    """One line on an epoch, from the loader's counters before and after it."""

    def d(key: str) -> int:
        return int(after[key]) - int(before[key])

    waited = after["wait"]["consumer_s"] - before["wait"]["consumer_s"]
    held = after["wait"]["producer_s"] - before["wait"]["producer_s"]
    retries = {k: v - before["retries"][k] for k, v in after["retries"].items() if v > before["retries"][k]}
    errors = {k: v - before["errors"][k] for k, v in after["errors"].items() if v > before["errors"][k]}
    mb = d("bytes_read") / 1e6
    share = 100 * waited / seconds if seconds > 0 else 0.0
    line = (
        f"s3dlio epoch {epoch}: {d('objects_read')} objects, {mb:.1f} MB in {seconds:.2f} s "
        f"({mb / seconds if seconds > 0 else 0:.1f} MB/s); the loop waited {waited:.2f} s for data "
        f"({share:.0f}% of the epoch: {'input-bound' if share > 10 else 'not input-bound'}), "
        f"batches waited {held:.2f} s for the loop"
    )
    conc = after["concurrency"]
    if conc.get("adaptive"):
        line += f"; concurrency limit {conc['limit']:.0f} of {conc['max']} ({conc['cuts']} cuts so far)"
    if retries:
        line += "; retries " + ", ".join(f"{k} {v}" for k, v in retries.items())
    if errors:
        line += "; errors " + ", ".join(f"{k} {v}" for k, v in errors.items())
    return line


def _pin(batch: Any) -> Any:
    if hasattr(batch, "pin_memory"):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pin(v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_pin(v) for v in batch)
    return batch
