"""TensorFlow input pipelines: a ``tf.data.Dataset`` fed whole batches by the Rust pool.

``import s3dlio.tf`` (TensorFlow is imported here, never by ``import s3dlio``)::

    import s3dlio, s3dlio.tf, tensorflow as tf

    ds = s3dlio.ObjectDataset.from_prefix("s3://bucket/train/", transform=decode)
    train = s3dlio.tf.make_dataset(ds, batch_size=64, shuffle=True).prefetch(tf.data.AUTOTUNE)
    model.fit(train, epochs=10)

* Batches are assembled by :class:`s3dlio.DataLoader` (hundreds of requests in flight, shuffle,
  rank sharding) and handed to TensorFlow **one batch per Python call** through
  ``tf.data.Dataset.from_generator``; a per-sample generator pays the GIL and TensorFlow's
  py-function overhead once per object instead (see docs/benchmarks.md).
* Every iteration of the returned dataset (every ``for``, every Keras epoch) is the loader's next
  epoch: a new permutation when ``shuffle=True``.
* Ctrl-C: TensorFlow runs the generator on one of its own threads, and a main thread blocked
  inside TensorFlow waiting for a batch never sees ``KeyboardInterrupt`` (the handler only runs
  between Python bytecodes). s3dlio learns of the SIGINT through :func:`signal.set_wakeup_fd`,
  cancels the loader's token, and ends the epoch; TensorFlow returns to Python and the
  ``KeyboardInterrupt`` is raised there. No s3dlio task is left running (docs/tensorflow.md).
"""

from __future__ import annotations

import array
import collections
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import numpy as np

try:
    import tensorflow as tf
except ImportError as e:  # pragma: no cover - exercised only without TensorFlow
    raise ImportError(
        "s3dlio.tf needs TensorFlow: pip install 's3dlio[tf]' (or tensorflow / tensorflow-cpu)"
    ) from e

from . import _core
from .data import DataLoader, ObjectDataset, _Progress
from .data import default_collate as _loader_default_collate
from .exceptions import CancelledError, InvalidConfigError, S3dlioError
from .options import PoolConfig, RangeEngineConfig

# StateCallback is public too; it is built on first use (it subclasses keras's Callback, and keras
# is imported only then).
__all__ = [
    "consumed",
    "default_collate",
    "from_loader",
    "infer_signature",
    "make_dataset",
    "state_dict",
]

_log = logging.getLogger("s3dlio.tf")

Collate = Callable[[list[Any]], Any]


# ---------------------------------------------------------------------------------------------
# Collation to numpy (never torch tensors, whatever is installed)
# ---------------------------------------------------------------------------------------------


def default_collate(samples: list[Any]) -> Any:
    """Stack a batch into numpy arrays that ``tf.data`` converts without surprises.

    * Raw :class:`s3dlio.Buffer` (or ``memoryview``) samples of equal size: one ``uint8`` array of shape
      (batch, size) (the one copy: into a fresh array). Of unequal sizes: a 1-D object array of
      ``bytes`` (a ``tf.string`` tensor of shape (batch,), e.g. for ``tf.io.decode_jpeg``).
    * numpy arrays and numbers: ``np.stack``. ``bytes`` / ``str``: an object array (``tf.string``).
    * tuples and lists (collated per field, returned as a tuple, which Keras reads as
      ``(x, y)``) and dicts (per key).
    """
    if not samples:
        raise InvalidConfigError("cannot collate an empty batch")
    first = samples[0]
    if isinstance(first, _core.Buffer | memoryview):  # memoryview: a TFRecord payload, a tar member
        arrays = [np.frombuffer(s, dtype=np.uint8) for s in samples]
        if len({a.size for a in arrays}) == 1:
            return np.stack(arrays)
        return _bytes_array(samples)
    if isinstance(first, bytes | str):
        return _bytes_array(samples)
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, tuple | list):
        return tuple(default_collate(list(group)) for group in zip(*samples, strict=True))
    return np.stack([np.asarray(s) for s in samples])


def _bytes_array(samples: list[Any]) -> np.ndarray[Any, Any]:
    out = np.empty(len(samples), dtype=object)
    for i, s in enumerate(samples):
        out[i] = s if isinstance(s, bytes | str) else bytes(s)  # COPY: tf.string owns its bytes
    return out


def _uint8_collate(samples: list[Any]) -> np.ndarray[Any, Any]:
    """Raw buffers under a ``uint8`` (batch, size) signature: sizes must agree."""
    arrays = [np.frombuffer(s, dtype=np.uint8) for s in samples]
    sizes = sorted({a.size for a in arrays})
    if len(sizes) != 1:
        raise InvalidConfigError(
            f"objects of different sizes {sizes[:4]} in one batch cannot form a uint8 (batch, size) "
            "tensor; pass output_signature=tf.TensorSpec((None,), tf.string) (one bytes string per "
            "object), or a transform / collate_fn that gives them one shape"
        )
    return np.stack(arrays)


def _bytes_collate(samples: list[Any]) -> np.ndarray[Any, Any]:
    """Raw buffers under a ``tf.string`` (batch,) signature."""
    return _bytes_array(samples)


# ---------------------------------------------------------------------------------------------
# Output signature
# ---------------------------------------------------------------------------------------------


def infer_signature(batch: Any) -> Any:
    """The ``output_signature`` of batches shaped like ``batch`` (a nested structure of arrays,
    numbers, strings or tensors): each leaf's dtype and shape, with the first (batch) dimension
    left unknown (``None``), since the last batch of an epoch and each rank's batches may be
    shorter. Dimensions past the first are fixed to the example's: give ``output_signature``
    yourself for samples whose shapes vary (``None`` in those dimensions)."""

    def spec(leaf: Any) -> Any:
        t = tf.convert_to_tensor(leaf)
        shape = list(t.shape)
        if shape:
            shape[0] = None
        return tf.TensorSpec(shape=shape, dtype=t.dtype)

    return tf.nest.map_structure(spec, batch)


def _is_string_spec(signature: Any) -> bool:
    return isinstance(signature, tf.TensorSpec) and signature.dtype == tf.string


# ---------------------------------------------------------------------------------------------
# Ctrl-C while the main thread is blocked inside TensorFlow
# ---------------------------------------------------------------------------------------------


def _tf_exception_init(frame: FrameType | None) -> FrameType | None:
    """The outermost frame of ``frame``'s stack that is the ``__init__`` of a TensorFlow
    exception, if any. TensorFlow's C++ builds its Python exceptions (pybind11) by calling that
    constructor, and an exception raised inside it comes out as ``RuntimeError: ... MISMATCH of
    original and normalized active exception types ... REPLACED BY KeyboardInterrupt``."""
    found = None
    while frame is not None:
        if frame.f_code.co_name == "__init__":
            this = frame.f_locals.get("self")
            if isinstance(this, BaseException) and type(this).__module__.startswith("tensorflow"):
                found = frame
        frame = frame.f_back
    return found


def _raise_after(target: FrameType) -> bool:
    """Raise ``KeyboardInterrupt`` at the first profile event in ``target``'s caller once
    ``target`` has returned (a one-shot :func:`sys.setprofile` hook on this thread). False when a
    profiler is already installed (it is left alone)."""
    if sys.getprofile() is not None:
        return False
    caller = target.f_back
    returned = False

    def hook(frame: FrameType, event: str, _arg: object) -> None:
        nonlocal returned
        if not returned:
            returned = event == "return" and frame is target
            return
        if caller is None or frame is caller:
            sys.setprofile(None)
            raise KeyboardInterrupt

    sys.setprofile(hook)
    return True


def _sigint_handler(signum: int, frame: FrameType | None) -> None:
    """Python's default SIGINT behaviour (raise ``KeyboardInterrupt``), except while TensorFlow
    is constructing an exception from C++ (the end-of-sequence or error that brings the main
    thread back to Python once s3dlio has ended the epoch): then ``KeyboardInterrupt`` is raised
    just after that constructor returns, where TensorFlow's Python code receives the exception."""
    target = _tf_exception_init(frame)
    if target is not None and _raise_after(target):
        return
    raise KeyboardInterrupt


def _raises_keyboard_interrupt(handler: object) -> bool:
    return handler is signal.default_int_handler or handler is _sigint_handler


def _install_handler(*_info: object) -> None:
    """Put :func:`_sigint_handler` in place of Python's default SIGINT handler (main thread). A
    custom handler is the application's business and stays."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _sigint_handler)


def _ipython_shell() -> Any:
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    return get() if get is not None else None


class _InterruptWatcher:
    """Learns of SIGINT through :func:`signal.set_wakeup_fd`, which Python's C-level handler writes
    at the moment the signal arrives, even while the main thread is blocked in TensorFlow. One per
    process; an earlier wakeup fd (asyncio's, for instance) keeps receiving every byte."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._read = self._write = -1
        self._forward = -1
        self._ipython = False
        self._sources: weakref.WeakSet[_Source] = weakref.WeakSet()

    def watch(self, source: _Source) -> None:
        with self._lock:
            self._sources.add(source)
        self._install()

    def _install(self) -> None:
        # set_wakeup_fd and signal.signal may only be called from the main thread; elsewhere an
        # earlier install (or none) stands.
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: its own pipe and thread
                self._read, self._write = os.pipe()
                os.set_blocking(self._write, False)
                self._pid = os.getpid()
                self._forward = -1
                watcher = threading.Thread(
                    target=self._run, args=(self._read,), name="s3dlio-tf-sigint", daemon=True
                )
                watcher.start()
            try:
                previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
            except ValueError:  # not the main interpreter
                return
            if previous not in (-1, self._write):
                self._forward = previous
            _install_handler()
            if not self._ipython:
                # IPython kernels put Python's default handler back before every cell; put ours
                # back in turn (pre_run_cell runs in the main thread, inside the cell's execution).
                shell = _ipython_shell()
                if shell is not None:
                    shell.events.register("pre_run_cell", _install_handler)
                    self._ipython = True

    def _run(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 512)
            except OSError:
                return
            if not data:
                return
            forward = self._forward
            if forward >= 0:
                try:
                    os.write(forward, data)
                except OSError:
                    pass
            # Only a SIGINT whose handler raises KeyboardInterrupt means "stop".
            if signal.SIGINT in data and _raises_keyboard_interrupt(signal.getsignal(signal.SIGINT)):
                with self._lock:
                    sources = list(self._sources)
                for source in sources:
                    source.interrupt()


_watcher = _InterruptWatcher()


# ---------------------------------------------------------------------------------------------
# The generator behind the tf.data.Dataset
# ---------------------------------------------------------------------------------------------


class _Iteration:
    """One iteration (epoch) of a dataset's generator, for exact resume: the progress the model has
    reported consumed, and the positions of the batches yielded to TensorFlow but not yet reported
    (tf.data's prefetch and Keras take batches ahead of the training step)."""

    def __init__(self, epoch: int, start: _Progress) -> None:
        self.epoch = epoch
        self.consumed = _Progress(start.prefix, start.extra)
        self.pending: collections.deque[array.array[int]] = collections.deque()


class _Source:
    """Owns (or borrows) the DataLoader and yields its batches, one epoch per generator call."""

    def __init__(self, loader: DataLoader[Any], rebuild: Callable[[], DataLoader[Any]] | None) -> None:
        self._loader = loader
        self._rebuild = rebuild  # make_dataset's own loaders come back after Ctrl-C; borrowed ones don't
        self._lock = threading.Lock()
        self._active = 0
        self._interrupted = False
        self._iteration: _Iteration | None = None  # the one the training loop is on
        self._yielded = 0
        self._reported = 0

    def interrupt(self) -> None:
        """Ctrl-C (from the watcher thread): cancel the loader of an epoch in progress."""
        with self._lock:
            if self._active == 0:
                return
            self._interrupted = True
            loader = self._loader
        loader.cancel_token.cancel()

    # --- exact resume: what the model has consumed ----------------------------------------------

    def consumed(self, batches: int) -> None:
        """The model has consumed ``batches`` more batches, in the order they were yielded."""
        if batches < 0:
            raise InvalidConfigError(f"batches must be >= 0, got {batches}")
        with self._lock:
            self._reported += batches
            it = self._iteration
            # More reported than yielded (Keras's short last execution with steps_per_execution):
            # clamped to what was yielded.
            while batches > 0 and it is not None and it.pending:
                it.consumed.add(it.pending.popleft())
                batches -= 1

    def state_dict(self) -> dict[str, Any]:
        """The loader state as of the batches reported consumed (``DataLoader.load_state_dict``)."""
        with self._lock:
            state = self._loader.state_dict()
            it = self._iteration
            if it is None:
                return state  # nothing iterated through this dataset yet: the loader's own position
            if self._reported == 0 and self._yielded > 0:
                raise InvalidConfigError(
                    "no consumed batches were reported for this dataset, so its exact position is "
                    "unknown (tf.data takes batches ahead of the training step): pass "
                    "s3dlio.tf.StateCallback(dataset) to model.fit's callbacks, or call "
                    "s3dlio.tf.consumed(dataset) after each training step"
                )
            state.update(
                epoch=it.epoch, samples_yielded=it.consumed.prefix, yielded_beyond=sorted(it.consumed.extra)
            )
            return state

    def _begin(self, epoch: int, start: _Progress) -> _Iteration:
        # A new iteration starts once the previous one was consumed to its end (Keras, a `for`
        # loop) or abandoned (a `break`, a peek with next(iter(...))): either way the training
        # loop is now on this one, and the older ones' unreported batches will never be consumed.
        with self._lock:
            self._iteration = _Iteration(epoch, start)
            return self._iteration

    def _yield(self, it: _Iteration, positions: list[int]) -> None:
        with self._lock:
            it.pending.append(array.array("q", positions))  # 8 bytes a position
            self._yielded += 1

    # --- the generator ---------------------------------------------------------------------------

    def _next_loader(self) -> DataLoader[Any]:
        with self._lock:
            loader = self._loader
        if self._rebuild is not None and loader.cancel_token.cancelled:
            # After Ctrl-C: a fresh loader that starts the interrupted epoch again from its
            # beginning (the dataset's cardinality holds; an exact continuation is state_dict()
            # and make_dataset(state=...)).
            with self._lock:
                epoch = self._iteration.epoch if self._iteration is not None else loader.epoch
            loader.close()
            loader = self._rebuild()
            loader.set_epoch(epoch)
            with self._lock:
                self._loader = loader
        return loader

    def batches(self) -> Iterator[Any]:
        """One epoch of collated batches (called by TensorFlow on its own thread)."""
        with self._lock:
            self._active += 1
            self._interrupted = False
        it = None
        try:
            loader = self._next_loader()
            it = iter(loader)
            record = self._begin(it.epoch, it.progress)
            skip_errors = loader.options.on_error == "continue"
            while True:
                try:
                    positions, batch = it._next()
                except StopIteration:
                    return
                except CancelledError:
                    if self._interrupted:
                        # Ctrl-C: end the epoch quietly; TensorFlow returns to Python in the main
                        # thread, where the pending KeyboardInterrupt is raised.
                        return
                    raise
                except S3dlioError as e:
                    if not skip_errors:
                        raise
                    _log.warning("s3dlio.tf: skipping a batch (on_error='continue'): %s", e)
                    continue
                self._yield(record, positions)
                yield batch
        except CancelledError:
            if not self._interrupted:
                raise
        finally:
            with self._lock:
                self._active -= 1
            if it is not None:
                it.close()  # joins the epoch's tasks: none is left running after an early stop


_sources: weakref.WeakKeyDictionary[Any, _Source] = weakref.WeakKeyDictionary()


def _source_of(dataset: Any) -> _Source:
    source = _sources.get(dataset) if _weakrefable(dataset) else None
    if source is None:
        raise InvalidConfigError(
            "this is not a dataset returned by s3dlio.tf.make_dataset or s3dlio.tf.from_loader: pass "
            "that one (not one derived from it with .map/.prefetch, which TensorFlow makes anew)"
        )
    return source


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def consumed(dataset: tf.data.Dataset, batches: int = 1) -> None:
    """Report that the training loop has consumed ``batches`` more batches of ``dataset`` (the
    dataset :func:`make_dataset` or :func:`from_loader` returned), for :func:`state_dict`. Call it
    after each training step of a manual loop; in ``model.fit`` use :class:`StateCallback`.

    Batches are counted in the order the dataset yields them, across epochs, so transformations
    after it must keep that order: ``.map`` (deterministic, the default), ``.prefetch``,
    ``.take``, ``.apply`` of such; not ``.shuffle``, ``.unbatch``/``.rebatch`` or
    ``deterministic=False``."""
    _source_of(dataset).consumed(int(batches))


def state_dict(dataset: tf.data.Dataset) -> dict[str, Any]:
    """The :class:`s3dlio.DataLoader` state after exactly the batches reported consumed (by
    :class:`StateCallback` or :func:`consumed`): resume with ``make_dataset(..., state=it)`` or
    ``loader.load_state_dict(it)`` then :func:`from_loader`. Raises
    :class:`~s3dlio.exceptions.InvalidConfigError` when batches were iterated but none reported
    (the position would be a guess)."""
    return _source_of(dataset).state_dict()


def _dataset(source: _Source, signature: Any, cardinality: int | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_generator(source.batches, output_signature=signature)
    if cardinality is not None:
        # Keras shows progress and steps per epoch; len(ds) works.
        ds = ds.apply(tf.data.experimental.assert_cardinality(cardinality))
    _watcher.watch(source)
    _sources[ds] = source
    return ds


def _resolve(
    dataset: ObjectDataset, batch_size: int, collate_fn: Collate | None, output_signature: Any
) -> tuple[Collate, Any]:
    """The collate function and the output signature, peeking one batch only when needed."""
    raw = dataset.transform is None and collate_fn is None
    if raw:
        if output_signature is not None:
            chosen = _bytes_collate if _is_string_spec(output_signature) else _uint8_collate
            return chosen, output_signature
        sizes = dataset.sizes
        if sizes is not None and len(sizes) > 0 and all(s is not None for s in sizes):
            if len(set(sizes)) == 1:
                return _uint8_collate, tf.TensorSpec((None, sizes[0]), tf.uint8)
            return _bytes_collate, tf.TensorSpec((None,), tf.string)
    collate = collate_fn or default_collate
    if output_signature is not None:
        return collate, output_signature
    if len(dataset) == 0:
        raise InvalidConfigError("the dataset is empty: pass output_signature= (nothing to infer it from)")
    # Peek: fetch the first batch_size objects (one concurrent get_many), transform and collate
    # them, and read dtypes and shapes off the result. The batch itself is discarded.
    samples = dataset.__getitems__(list(range(min(batch_size, len(dataset)))))
    batch = collate(samples)
    if raw:
        if isinstance(batch, np.ndarray) and batch.dtype == object:
            return _bytes_collate, tf.TensorSpec((None,), tf.string)
        return _uint8_collate, infer_signature(batch)
    return collate, infer_signature(batch)


def make_dataset(
    dataset: ObjectDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    output_signature: Any = None,
    collate_fn: Collate | None = None,
    num_workers: int = 0,
    prefetch_factor: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    even: str = "pad",
    in_order: bool = True,
    timeout: float = 0,
    on_error: str = "raise",
    pool: PoolConfig | None = None,
    range_engine: RangeEngineConfig | None = None,
    cancel_token: _core.CancelToken | None = None,
    state: dict[str, Any] | None = None,
) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` of batches of ``dataset``, assembled by an :class:`s3dlio.DataLoader`
    and handed to TensorFlow one whole batch per Python call.

    The loader arguments (``batch_size``, ``shuffle``, ``seed``, ``drop_last``, ``num_workers``,
    ``prefetch_factor``, ``rank``/``world_size``, ``even``, ``in_order``, ``timeout``,
    ``on_error``, ``pool``, ``range_engine``, ``cancel_token``) mean what they mean there
    (docs/configuration.md). Each iteration of the returned dataset is the next epoch: a new
    permutation with ``shuffle=True``, the same on every rank. With ``rank``/``world_size`` each
    rank reads its own share (``order[rank::world_size]``, padded or dropped by ``even``).
    ``on_error="continue"`` skips (and logs) a batch whose object failed instead of ending the
    epoch with the error.

    ``collate_fn`` turns a list of samples (``transform(buffer)``, or the raw buffers) into one
    batch; the default is :func:`default_collate` (numpy). ``output_signature`` is a
    ``tf.TensorSpec`` or a nested structure of them. When it is not given:

    * raw objects whose sizes are known from the listing or manifest get
      ``TensorSpec((None, size), tf.uint8)`` when they all have one size, else
      ``TensorSpec((None,), tf.string)``, without reading anything;
    * otherwise one batch (the first ``batch_size`` objects) is read, transformed and collated
      now to infer it (:func:`infer_signature`), and discarded.

    Ctrl-C while TensorFlow waits for a batch (a manual loop, ``model.fit``) cancels the loader,
    ends the epoch and raises ``KeyboardInterrupt`` in the main thread; iterating the dataset
    again starts the interrupted epoch over with a fresh loader (unless ``cancel_token`` was
    given: then the cancellation stands, as in :class:`s3dlio.DataLoader`).

    Exact resume: report consumed batches (:class:`StateCallback` in ``model.fit``,
    :func:`consumed` in a manual loop), save :func:`state_dict` with the model's checkpoint, and
    pass it back as ``state=`` to resume after exactly those batches. The dataset's cardinality
    (``len()``, Keras's steps per epoch) is set only without ``state``, since a resumed first
    epoch is shorter. Call it from the main thread so that
    this Ctrl-C hook can be installed: a ``signal.set_wakeup_fd`` watcher, and a SIGINT handler
    equivalent to Python's default one in its place (docs/tensorflow.md says why). Iterate one
    iterator of the dataset at a time: a new iteration ends the previous one.
    """
    if not isinstance(dataset, ObjectDataset):
        raise InvalidConfigError(
            f"s3dlio.tf.make_dataset reads an s3dlio.ObjectDataset, not {type(dataset).__name__}"
        )
    collate, signature = _resolve(dataset, batch_size, collate_fn, output_signature)

    def new_loader() -> DataLoader[Any]:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
            collate_fn=collate, num_workers=num_workers, prefetch_factor=prefetch_factor,
            persistent_workers=num_workers > 0, rank=rank, world_size=world_size, even=even,
            in_order=in_order, timeout=timeout, on_error=on_error, pool=pool, range_engine=range_engine,
            cancel_token=cancel_token,
        )  # fmt: skip

    loader = new_loader()
    if state is not None:
        loader.load_state_dict(state)
    source = _Source(loader, None if cancel_token is not None else new_loader)
    return _dataset(source, signature, len(loader) if on_error == "raise" and state is None else None)


def from_loader(loader: DataLoader[Any], *, output_signature: Any = None) -> tf.data.Dataset:
    """A ``tf.data.Dataset`` over an existing :class:`s3dlio.DataLoader` (to keep a handle on it:
    ``state_dict()``, ``close()``, ``set_epoch()``, ``live_tasks()``).

    Each iteration of the dataset is one ``for`` over the loader (its next epoch). A loader with
    torch's-style default ``collate_fn`` is switched to this module's numpy collation (never torch
    tensors). ``output_signature`` is inferred as in :func:`make_dataset` when not given. After
    Ctrl-C the loader stays cancelled, as :class:`s3dlio.DataLoader` always does: make a new one
    (``load_state_dict`` resumes).
    """
    if not isinstance(loader, DataLoader):
        raise InvalidConfigError(f"from_loader takes an s3dlio.DataLoader, not {type(loader).__name__}")
    default = loader.collate_fn is _loader_default_collate
    collate, signature = _resolve(
        loader.dataset, loader.batch_size, None if default else loader.collate_fn, output_signature
    )
    loader.collate_fn = collate
    # No assert_cardinality here: a loader resumed mid-epoch (load_state_dict) yields fewer batches.
    return _dataset(_Source(loader, None), signature, None)


def _state_callback_class() -> type:
    import keras

    class StateCallback(keras.callbacks.Callback):  # type: ignore[misc]
        """A Keras callback that reports each training step's batches as consumed, so that
        :meth:`state_dict` is the loader state after exactly the batches ``model.fit`` trained on
        (``steps_per_execution`` included), however far ``tf.data`` prefetched::

            train = s3dlio.tf.make_dataset(ds, 64, shuffle=True)
            progress = s3dlio.tf.StateCallback(train)
            model.fit(train.prefetch(tf.data.AUTOTUNE), epochs=10, callbacks=[progress])
            save(progress.state_dict())   # with the model's checkpoint
            ...
            train = s3dlio.tf.make_dataset(ds, 64, shuffle=True, state=saved)

        ``dataset`` is the one :func:`make_dataset` or :func:`from_loader` returned."""

        def __init__(self, dataset: tf.data.Dataset) -> None:
            super().__init__()
            self._source = _source_of(dataset)
            self._begin = 0

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self._begin = batch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self._source.consumed(batch - self._begin + 1)

        def state_dict(self) -> dict[str, Any]:
            """The loader state after the batches trained on so far."""
            return self._source.state_dict()

    StateCallback.__module__ = __name__
    return StateCallback


def __getattr__(name: str) -> Any:
    # Keras is imported only when StateCallback is used.
    if name == "StateCallback":
        cls = _state_callback_class()
        globals()["StateCallback"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
