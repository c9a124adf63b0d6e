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
from .data import DataLoader, ObjectDataset
from .data import default_collate as _loader_default_collate
from .exceptions import CancelledError, InvalidConfigError, S3dlioError
from .options import PoolConfig, RangeEngineConfig

__all__ = ["default_collate", "from_loader", "infer_signature", "make_dataset"]

_log = logging.getLogger("s3dlio.tf")

Collate = Callable[[list[Any]], Any]


# ---------------------------------------------------------------------------------------------
# Collation to numpy (never torch tensors, whatever is installed)
# ---------------------------------------------------------------------------------------------


def default_collate(samples: list[Any]) -> Any:
    """Stack a batch into numpy arrays that ``tf.data`` converts without surprises.

    * Raw :class:`s3dlio.Buffer` samples of equal size: one ``uint8`` array of shape
      (batch, size) (the one copy: into a fresh array). Of unequal sizes: a 1-D object array of
      ``bytes`` (a ``tf.string`` tensor of shape (batch,), e.g. for ``tf.io.decode_jpeg``).
    * numpy arrays and numbers: ``np.stack``. ``bytes`` / ``str``: an object array (``tf.string``).
    * tuples and lists (collated per field, returned as a tuple, which Keras reads as
      ``(x, y)``) and dicts (per key).
    """
    if not samples:
        raise InvalidConfigError("cannot collate an empty batch")
    first = samples[0]
    if isinstance(first, _core.Buffer):
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


class _Source:
    """Owns (or borrows) the DataLoader and yields its batches, one epoch per generator call."""

    def __init__(self, loader: DataLoader[Any], rebuild: Callable[[], DataLoader[Any]] | None) -> None:
        self._loader = loader
        self._rebuild = rebuild  # make_dataset's own loaders come back after Ctrl-C; borrowed ones don't
        self._lock = threading.Lock()
        self._active = 0
        self._interrupted = False

    def interrupt(self) -> None:
        """Ctrl-C (from the watcher thread): cancel the loader of an epoch in progress."""
        with self._lock:
            if self._active == 0:
                return
            self._interrupted = True
            loader = self._loader
        loader.cancel_token.cancel()

    def _next_loader(self) -> DataLoader[Any]:
        with self._lock:
            loader = self._loader
            if self._rebuild is not None and loader.cancel_token.cancelled:
                epoch = loader.epoch
                loader.close()
                loader = self._rebuild()
                loader.set_epoch(epoch)
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
            skip_errors = loader.options.on_error == "continue"
            while True:
                try:
                    batch = next(it)
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
                yield batch
        except CancelledError:
            if not self._interrupted:
                raise
        finally:
            with self._lock:
                self._active -= 1
            if it is not None:
                it.close()  # joins the epoch's tasks: none is left running after an early stop


def _dataset(source: _Source, signature: Any, cardinality: int | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_generator(source.batches, output_signature=signature)
    if cardinality is not None:
        # Keras shows progress and steps per epoch; len(ds) works.
        ds = ds.apply(tf.data.experimental.assert_cardinality(cardinality))
    _watcher.watch(source)
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
    again starts the next epoch with a fresh loader (unless ``cancel_token`` was given: then the
    cancellation stands, as in :class:`s3dlio.DataLoader`). Call it from the main thread so that
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
    source = _Source(loader, None if cancel_token is not None else new_loader)
    return _dataset(source, signature, len(loader) if on_error == "raise" else None)


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
