"""JAX input pipelines: numpy batches from the Rust prefetch pool, ready for ``jax.device_put``.

``import s3dlio.jax`` (it imports jax; ``import s3dlio`` never does). Everything here is a thin layer
over :class:`s3dlio.DataLoader`, which does the fetching, shuffling, sharding and resuming:

* :class:`JaxDataLoader`: iterable, one epoch per ``for``; shards by ``jax.process_index()`` /
  ``jax.process_count()``; ``drop_last=True`` by default so every batch has the same shape (one
  compilation of a jitted step); Grain-style ``get_state()`` / ``set_state()``.
* :meth:`JaxDataLoader.iterator` and :func:`make_iterator`: one iterator across epochs, for
  step-based training loops (``batch = next(it)``).
* :func:`numpy_collate`: the default ``collate_fn``; numpy arrays only, never torch tensors.

Example::

    import jax, s3dlio, s3dlio.jax

    ds = s3dlio.ObjectDataset.from_prefix("s3://bucket/train/", transform=decode)
    with s3dlio.jax.JaxDataLoader(ds, batch_size=128, shuffle=True, seed=0) as loader:
        for epoch in range(10):
            for batch in loader:  # each `for` is the next epoch, reshuffled
                params = train_step(params, jax.device_put(batch))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .data import DataLoader, ObjectDataset
from .exceptions import InvalidConfigError
from .options import PoolConfig, RangeEngineConfig

if TYPE_CHECKING:
    from .data import _EpochIterator

try:
    import jax
except ImportError as e:  # pragma: no cover - exercised only without jax
    raise ImportError("s3dlio.jax needs jax: `pip install 's3dlio[jax]'` (or `pip install jax`)") from e

__all__ = ["JaxDataLoader", "JaxIterator", "make_iterator", "numpy_collate"]

Collate = Callable[[list[Any]], Any]


def numpy_collate(samples: list[Any]) -> Any:
    """Stack a batch into numpy arrays (a pytree that ``jax.device_put`` takes as it is).

    * raw objects (:class:`s3dlio.Buffer`) of equal size: one ``uint8`` array of shape
      (batch, size); of unequal sizes, a list of read-only zero-copy ``uint8`` arrays (give the
      dataset a transform that pads or crops to a fixed shape for jit);
    * numpy arrays, numpy scalars, Python numbers and anything with ``__array__`` (a jax array):
      ``numpy.stack``, keeping the samples' dtype (Python floats become float64, which jax
      turns into float32 unless ``jax_enable_x64`` is on; return float32 arrays to avoid it);
    * dicts, tuples, named tuples and lists: collated per field, keeping the structure;
    * anything else (strings, bytes): a list.

    Torch is never used, even when it is installed.
    """
    if not samples:
        return []
    first = samples[0]
    if isinstance(first, _core.Buffer):
        arrays = [np.frombuffer(s, dtype=np.uint8) for s in samples]
        if len({a.size for a in arrays}) != 1:
            return arrays
        return np.stack(arrays)  # the one collate copy: into a fresh, writable array
    if isinstance(first, Mapping):
        return {k: numpy_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # a named tuple
        return type(first)(*(numpy_collate(list(g)) for g in zip(*samples, strict=True)))
    if isinstance(first, tuple | list):
        return type(first)(numpy_collate(list(g)) for g in zip(*samples, strict=True))
    if isinstance(first, str | bytes | bytearray):
        return list(samples)
    return np.stack([np.asarray(s) for s in samples])


class JaxDataLoader:
    """Batches of numpy arrays for JAX, fetched by s3dlio's Rust pool.

    Built on :class:`s3dlio.DataLoader` (available as :attr:`loader`), so fetching, shuffling,
    sharding and resuming behave exactly as documented there. What differs:

    * ``process_index`` / ``process_count`` default to ``jax.process_index()`` /
      ``jax.process_count()``, read when the loader is made: call ``jax.distributed.initialize()``
      first. Each process reads every ``process_count``-th sample of the epoch's permutation
      (padded with ``even="pad"``, truncated with ``even="drop"``), so every process gets the same
      number of batches, which multi-host ``jit`` needs.
    * ``drop_last=True`` by default: every batch has exactly ``batch_size`` samples, so a jitted
      step compiles once. With ``drop_last=False`` the last batch of an epoch may be smaller
      (and trigger one more compilation).
    * ``collate_fn`` defaults to :func:`numpy_collate` (numpy only, never torch).
    * ``seed`` is the shuffle seed; epoch ``e`` uses the permutation of ``(seed, e)``, the same on
      every process. Each ``for`` over the loader is the next epoch; :meth:`set_epoch` picks one.

    ``num_workers`` threads run ``transform`` and ``collate_fn`` (0: the iterating thread);
    ``prefetch_factor`` batches per worker are read ahead. ``timeout`` (seconds per batch),
    ``in_order``, ``on_error``, ``even``, ``pool``, ``range_engine`` and ``cancel_token`` are
    passed to :class:`s3dlio.DataLoader` unchanged.

    Use one iterator at a time: starting a new one (a new ``for``) closes the previous one.
    ``close()``, leaving a ``with`` block and Ctrl-C stop every s3dlio task of the loader.
    """

    def __init__(
        self,
        dataset: ObjectDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = True,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        collate_fn: Collate | None = None,
        timeout: float | None = None,
        in_order: bool = True,
        on_error: str = "raise",
        even: str = "pad",
        pool: PoolConfig | None = None,
        range_engine: RangeEngineConfig | None = None,
        cancel_token: _core.CancelToken | None = None,
    ) -> None:
        rank = int(jax.process_index()) if process_index is None else int(process_index)
        world = int(jax.process_count()) if process_count is None else int(process_count)
        self._dl: DataLoader[Any] = DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
            num_workers=num_workers, prefetch_factor=prefetch_factor,
            collate_fn=collate_fn or numpy_collate, timeout=timeout or 0, in_order=in_order,
            on_error=on_error, even=even, pool=pool, range_engine=range_engine,
            cancel_token=cancel_token, rank=rank, world_size=world,
        )  # fmt: skip

    @property
    def loader(self) -> DataLoader[Any]:
        """The underlying :class:`s3dlio.DataLoader`."""
        return self._dl

    @property
    def dataset(self) -> ObjectDataset:
        """The dataset read."""
        return self._dl.dataset

    @property
    def batch_size(self) -> int:
        """Samples per batch."""
        return self._dl.batch_size

    @property
    def drop_last(self) -> bool:
        """Whether the last, short batch of each epoch is dropped (static batch shapes)."""
        return self._dl.drop_last

    @property
    def process_index(self) -> int:
        """The process whose share this loader reads."""
        return self._dl.shard()[0]

    @property
    def process_count(self) -> int:
        """How many processes share each epoch."""
        return self._dl.shard()[1]

    @property
    def epoch(self) -> int:
        """The epoch the next iteration starts (or resumes)."""
        return self._dl.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (its permutation)."""
        self._dl.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this process."""
        return len(self._dl)

    def __iter__(self) -> JaxIterator:
        """An iterator over the next epoch (or the rest of the epoch :meth:`set_state` restored)."""
        return JaxIterator(self, num_epochs=None, one_epoch=True)

    def iterator(self, num_epochs: int | None = None) -> JaxIterator:
        """One iterator across epochs, for step-based loops: it goes on from the current position
        into the following epochs, each reshuffled, until epoch ``num_epochs`` (counted from 0, so
        a restored state keeps the same end) or forever when ``num_epochs`` is None. When an epoch
        has no batch at all (fewer samples per process than ``batch_size``, with ``drop_last``),
        the iterator is empty rather than endless."""
        if num_epochs is not None and num_epochs < 0:
            raise InvalidConfigError(f"num_epochs must be >= 0 or None, not {num_epochs}")
        return JaxIterator(self, num_epochs=num_epochs, one_epoch=False)

    # --- Grain-style state ---------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Where iteration stands: a small JSON-serialisable dict (``json.dumps`` works), O(1) in
        the dataset's size. It is :meth:`s3dlio.DataLoader.state_dict`: seed, shuffle, dataset
        length, process count, epoch and samples yielded. With ``in_order=True`` every process
        has the same state at the same step, so saving one process's state is enough."""
        return self._dl.state_dict()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`get_state` on the next iteration: exactly the batches not yet
        yielded, no replay and no skip. The seed, shuffle, dataset length and process count must
        match (:class:`~s3dlio.exceptions.InvalidConfigError` otherwise); ``batch_size`` and
        ``num_workers`` may differ."""
        self._dl.load_state_dict(dict(state))

    # --- shutdown ------------------------------------------------------------------------------

    def live_tasks(self) -> int:
        """Rust tasks this loader has alive right now (0 when idle or closed)."""
        return self._dl.live_tasks()

    def close(self) -> None:
        """Cancel the loader's token, wait for its tasks to end, stop its worker threads. The loader
        cannot be iterated again (make a new one; :meth:`set_state` resumes). Idempotent."""
        self._dl.close()

    def __enter__(self) -> JaxDataLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"JaxDataLoader({len(self.dataset)} objects, batch_size={self.batch_size}, "
            f"process {self.process_index} of {self.process_count}, epoch={self.epoch})"
        )


class JaxIterator:
    """Batches from a :class:`JaxDataLoader`, with Grain-style :meth:`get_state` /
    :meth:`set_state`.

    From ``iter(loader)`` it covers one epoch; from :meth:`JaxDataLoader.iterator` or
    :func:`make_iterator` it goes on across epochs. Only one iterator of a loader is live at a
    time: starting another one closes this one's epoch.
    """

    def __init__(
        self, loader: JaxDataLoader, *, num_epochs: int | None, one_epoch: bool, owns_loader: bool = False
    ) -> None:
        self._loader = loader
        self._num_epochs = num_epochs
        self._one_epoch = one_epoch
        self._owns_loader = owns_loader
        self._it: _EpochIterator[Any] | None = None
        self._done = False

    @property
    def loader(self) -> JaxDataLoader:
        """The loader this iterator reads from."""
        return self._loader

    def __iter__(self) -> JaxIterator:
        return self

    def __next__(self) -> Any:
        try:
            while True:
                if self._it is None:
                    self._it = self._start()
                    if self._it is None:
                        raise StopIteration
                try:
                    return next(self._it)
                except StopIteration:
                    # Drop the finished epoch at once: the loader's state then points at the start
                    # of the next epoch, and the epoch's resources are released.
                    self._it = None
                    if self._one_epoch:
                        self._done = True
        except KeyboardInterrupt:
            # The DataLoader cancels its token when Ctrl-C reaches it inside next(); this covers
            # the instants spent here, outside it.
            self._loader.loader.cancel_token.cancel()
            self._release()
            raise

    def _start(self) -> _EpochIterator[Any] | None:
        if self._done:
            return None
        limit = self._num_epochs
        if limit is not None and self._loader.epoch >= limit:
            self._done = True
            return None
        if not self._one_epoch and len(self._loader) == 0:  # every epoch empty: never spin on them
            self._done = True
            return None
        it = iter(self._loader.loader)
        if limit is not None and it.epoch >= limit:  # a state saved at the very end of the last epoch
            it.close()
            self._done = True
            return None
        return it

    def _release(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch this iterator yielded (see
        :meth:`JaxDataLoader.get_state`): JSON-serialisable, O(1)."""
        return self._loader.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``: the next batch is the one that followed when ``state`` was
        taken. A one-epoch iterator then finishes that epoch; a multi-epoch one goes on to its
        ``num_epochs``."""
        self._release()
        self._loader.set_state(state)
        self._done = False

    def close(self) -> None:
        """Stop this iterator's epoch and its tasks (and the loader too, when the iterator came from
        :func:`make_iterator`). Idempotent."""
        self._release()
        self._done = True
        if self._owns_loader:
            self._loader.close()

    def __enter__(self) -> JaxIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_iterator(
    dataset: ObjectDataset, batch_size: int, *, num_epochs: int | None = None, **kwargs: Any
) -> JaxIterator:
    """A :class:`JaxDataLoader` and one iterator across its epochs, in one call: ``batch =
    next(it)`` in a step loop, ``it.get_state()`` / ``it.set_state(state)`` to checkpoint and
    resume, ``it.close()`` (or ``with``) to stop it and its loader. ``kwargs`` are
    :class:`JaxDataLoader`'s (``shuffle``, ``seed``, ``drop_last``, ``num_workers``,
    ``process_index``, ...); ``num_epochs`` as in :meth:`JaxDataLoader.iterator`."""
    if num_epochs is not None and num_epochs < 0:
        raise InvalidConfigError(f"num_epochs must be >= 0 or None, not {num_epochs}")
    loader = JaxDataLoader(dataset, batch_size, **kwargs)
    return JaxIterator(loader, num_epochs=num_epochs, one_epoch=False, owns_loader=True)
