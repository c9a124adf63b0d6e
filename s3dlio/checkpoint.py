"""Checkpoints on object storage: ``torch.save``/``torch.load`` streamed through s3dlio, and a
:class:`CheckpointManager` that publishes sharded, checksummed, crash-safe checkpoints.

* :func:`save` / :func:`load`: one ``torch.save`` object streamed to or from any URI
  (``s3://``, ``file://``, ``direct://``) through :func:`s3dlio.open`; the checkpoint is never held
  whole in memory on the way out, and an exception leaves the previous version in place.
* :class:`CheckpointManager`: ``save(step, state)`` writes one shard per rank, then (rank 0, after
  every rank) a JSON manifest with each shard's size and CRC32C, then the ``latest`` pointer,
  last. Loads trust only a step that has a manifest and verify the shard against it. Old steps
  are deleted only after the new one is published.

State is a torch object (``torch.save`` format), a pytree of numpy arrays and Python scalars (a
pickle-free ``.npz``, for JAX and other torch-free code), or raw bytes. torch is imported only
when a torch checkpoint is written or read; see ``docs/checkpoints.md``.
"""

from __future__ import annotations

import builtins
import io
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import numpy as np

import s3dlio as _s3

from ._core import Buffer
from .config import StorageConfig
from .exceptions import (
    CorruptCheckpointError,
    InvalidConfigError,
    NotFoundError,
    S3dlioError,
    StorageIOError,
)

if TYPE_CHECKING:
    from types import ModuleType

    from typing_extensions import Buffer as BufferLike

__all__ = [
    "CheckpointManager",
    "LatestCheckpoint",
    "SavedObject",
    "StateFormat",
    "load",
    "save",
]

StateFormat = Literal["auto", "torch", "numpy", "raw"]
"""How :class:`CheckpointManager` serialises a state: ``"torch"`` (``torch.save``), ``"numpy"``
(a pickle-free ``.npz`` of a pytree of arrays), ``"raw"`` (bytes written as they are) or
``"auto"`` (raw for bytes-like states, numpy for pytrees of numpy-compatible leaves without torch
tensors, torch otherwise)."""

MANIFEST_FORMAT = "s3dlio.checkpoint/1"
_NUMPY_TREE_FORMAT = "s3dlio.pytree/1"
_FORMATS = ("auto", "torch", "numpy", "raw")
_EXT = {"torch": "pt", "numpy": "npz", "raw": "bin"}
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _torch() -> ModuleType:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this checkpoint needs torch (pip install 's3dlio[torch]'); torch-free states can use "
            "CheckpointManager(..., format='numpy')"
        ) from e
    return torch


def _torch_save(obj: object, w: Any) -> None:
    """``torch.save(obj, w)``, raising the storage error itself when a write fails.

    torch's zip writer answers an exception from ``w.write`` by finishing the archive in its
    ``__exit__``, which fails with its own ``RuntimeError`` ("[enforce fail at
    inline_container.cc] unexpected pos ...") and buries the real cause (access denied, a full
    disk, throttling) in ``__context__``, where DCP's per-rank exception report never shows it.
    """
    try:
        _torch().save(obj, w)
    except RuntimeError as e:
        cause = _storage_cause(e)
        if cause is None:
            raise
        raise cause from None


def _storage_cause(err: BaseException) -> BaseException | None:
    """The s3dlio (or OS) error in ``err``'s context chain that made a torch serialiser fail."""
    seen: set[int] = set()
    e: BaseException | None = err.__cause__ or err.__context__
    while e is not None and id(e) not in seen:
        if isinstance(e, (S3dlioError, OSError)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class SavedObject(NamedTuple):
    """What :func:`save` wrote: the object's URI, its size in bytes and its CRC32C (Castagnoli)."""

    uri: str
    size: int
    crc32c: int


class LatestCheckpoint(NamedTuple):
    """What :meth:`CheckpointManager.load_latest` returns: the step and the state loaded."""

    step: int
    state: Any


# -------------------------------------------------------------------------------------------------
# torch.save / torch.load through s3dlio.open
# -------------------------------------------------------------------------------------------------


def save(
    obj: object,
    uri: str,
    *,
    config: StorageConfig | None = None,
    part_size: int | None = None,
    max_parts_in_flight: int | None = None,
) -> SavedObject:
    """``torch.save(obj)`` streamed to ``uri`` on any backend.

    The bytes go through :func:`s3dlio.open` (``"wb"``): parts upload concurrently while torch
    serialises (at most ``max_parts_in_flight`` parts of ``part_size`` bytes in memory), and the
    object is published only when torch has finished. An exception (or Ctrl-C) aborts the upload
    and leaves any previous version of ``uri`` in place. Returns the URI, size and CRC32C written.
    """
    _torch()  # the ImportError before anything is opened
    with _s3.open(
        uri, "wb", part_size=part_size, max_parts_in_flight=max_parts_in_flight, config=config
    ) as w:
        _torch_save(obj, w)
    return SavedObject(w.uri, w.size, w.crc32c)


def load(uri: str, *, config: StorageConfig | None = None, **torch_load_kwargs: Any) -> Any:
    """``torch.load`` of the object at ``uri``, read through :func:`s3dlio.open` (``"rb"``:
    seekable, with concurrent read-ahead).

    Keyword arguments go to ``torch.load`` unchanged (``map_location``, ``weights_only``, ...);
    ``weights_only`` keeps torch's own default when not given. Works for any file written by
    ``torch.save``, whether by :func:`save` or uploaded from a local file.
    """
    torch = _torch()
    with _s3.open(uri, "rb", config=config) as f:
        return torch.load(f, **torch_load_kwargs)


class _MemoryReader(io.RawIOBase):
    """A seekable, read-only file over a buffer (an :class:`s3dlio.Buffer`, a memoryview): what
    ``torch.load`` and ``numpy.load`` read from without copying the whole buffer first. Each read
    copies only the bytes asked for (``readinto`` straight into the caller's memory)."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._mv = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mv)}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b: Any) -> int:
        dst = memoryview(b).cast("B")
        start = min(self._pos, len(self._mv))
        n = min(len(dst), len(self._mv) - start)
        dst[:n] = self._mv[start : start + n]
        self._pos = start + n
        return n

    def read(self, size: int | None = -1) -> bytes:
        start = min(self._pos, len(self._mv))
        end = len(self._mv) if size is None or size < 0 else min(len(self._mv), start + size)
        self._pos = end
        return bytes(self._mv[start:end])  # COPY: read() returns bytes; readinto() does not copy twice

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            self._mv.release()
        super().close()


# -------------------------------------------------------------------------------------------------
# State formats
# -------------------------------------------------------------------------------------------------


def _is_torch_tensor(x: object) -> bool:
    return type(x).__module__.split(".", 1)[0] == "torch"


def _is_bytes_like(x: object) -> bool:
    return isinstance(x, (bytes, bytearray, memoryview, Buffer))


def _numpy_compatible(x: object) -> bool:
    """True when the pytree ``x`` has only leaves the numpy format stores (arrays, numpy and Python
    scalars, strings, bytes, None) in dicts (str or int keys), lists and tuples."""
    if isinstance(x, Mapping):
        return all(isinstance(k, (str, int)) and _numpy_compatible(v) for k, v in x.items())
    if isinstance(x, (builtins.list, tuple)):
        return all(_numpy_compatible(v) for v in x)
    if x is None or isinstance(x, (bool, int, float, str, np.generic, np.ndarray)) or _is_bytes_like(x):
        return True
    return hasattr(x, "__array__") and not _is_torch_tensor(x)


def _resolve_format(state: object, fmt: StateFormat) -> str:
    if fmt not in _FORMATS:
        raise InvalidConfigError(f"format must be one of {', '.join(map(repr, _FORMATS))}, got {fmt!r}")
    if fmt != "auto":
        if fmt == "raw" and not _is_bytes_like(state):
            raise InvalidConfigError(f"format='raw' takes a bytes-like state, not {type(state).__name__}")
        return fmt
    if _is_bytes_like(state):
        return "raw"
    if _numpy_compatible(state):
        return "numpy"
    return "torch"


def _flatten(x: object, arrays: builtins.list[object]) -> object:
    """The JSON tree of a numpy-format state; array leaves are appended to ``arrays`` unconverted
    (``numpy.savez`` converts each one while it writes, so a large tree is never copied whole)."""
    if isinstance(x, Mapping):
        items = []
        for k, v in x.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise InvalidConfigError(f"the numpy format takes str or int dict keys, not {k!r}")
            items.append([k, _flatten(v, arrays)])
        return {"d": items}
    if isinstance(x, tuple):
        return {"t": [_flatten(v, arrays) for v in x]}
    if isinstance(x, builtins.list):
        return {"l": [_flatten(v, arrays) for v in x]}
    if isinstance(x, np.generic):  # before the Python types: np.float64 is a float
        arrays.append(np.asarray(x))
        return {"s": len(arrays) - 1}
    if x is None or isinstance(x, (bool, int, float, str)):
        return {"v": x}
    if _is_bytes_like(x):
        arrays.append(np.frombuffer(x, dtype=np.uint8))  # type: ignore[call-overload]
        return {"b": len(arrays) - 1}
    if _is_torch_tensor(x) or not hasattr(x, "__array__"):
        raise InvalidConfigError(
            f"the numpy format stores arrays, numpy/Python scalars, str, bytes and None in dicts, "
            f"lists and tuples; got a {type(x).__module__}.{type(x).__qualname__} (use format='torch')"
        )
    arrays.append(x)
    return {"a": len(arrays) - 1}


def _unflatten(node: Any, arrays: Mapping[str, np.ndarray]) -> object:
    (kind, v), *rest = node.items()
    if rest:
        raise ValueError(f"bad tree node {node!r:.80}")
    if kind == "d":
        return {k: _unflatten(sub, arrays) for k, sub in v}
    if kind == "t":
        return tuple(_unflatten(sub, arrays) for sub in v)
    if kind == "l":
        return [_unflatten(sub, arrays) for sub in v]
    if kind == "v":
        return v
    if kind == "a":
        return arrays[f"a{v}"]
    if kind == "s":
        return arrays[f"a{v}"][()]
    if kind == "b":
        return arrays[f"a{v}"].tobytes()
    raise ValueError(f"bad tree node kind {kind!r}")


def _write_numpy(state: object, f: Any) -> None:
    arrays: builtins.list[object] = []
    tree = {"format": _NUMPY_TREE_FORMAT, "tree": _flatten(state, arrays)}
    meta = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    entries: dict[str, Any] = {f"a{i}": a for i, a in enumerate(arrays)}
    np.savez(f, allow_pickle=False, __tree__=meta, **entries)


def _read_numpy(buf: Any, uri: str) -> object:
    with _MemoryReader(buf) as f, np.load(f, allow_pickle=False) as npz:
        try:
            tree = json.loads(npz["__tree__"].tobytes())
            if tree.get("format") != _NUMPY_TREE_FORMAT:
                raise ValueError(f"unknown tree format {tree.get('format')!r}")
            arrays = {k: npz[k] for k in npz.files if k != "__tree__"}
            return _unflatten(tree["tree"], arrays)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(f"not an s3dlio numpy checkpoint: {uri}: {e}", uri) from e


# -------------------------------------------------------------------------------------------------
# CheckpointManager
# -------------------------------------------------------------------------------------------------


def _dist() -> Any:
    """torch.distributed when this process has initialised it (never imports torch)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _count(name: str, v: object, least: int) -> int:
    """``v`` as an int of at least ``least``, else an InvalidConfigError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise InvalidConfigError(f"{name} must be an int of at least {least}, got {v!r}")
    return v


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidConfigError(f"step must be an int of at least 0, got {step!r}")
    return step


class CheckpointManager:
    """Sharded, checksummed checkpoints under one prefix, published atomically.

    Layout under ``uri`` (any backend)::

        step-00000100/rank-00000.pt      one shard per rank (.pt torch, .npz numpy, .bin raw)
        step-00000100/rank-00001.pt
        step-00000100/manifest.json      written by rank 0 after every shard is complete
        latest                           {"step": 100, ...}: written last, atomically

    ``save(step, state)`` runs on every rank: each rank streams its own ``state`` to its shard;
    then rank 0 writes the manifest (step, time, world size, each shard's size and CRC32C, your
    ``metadata``) and then the ``latest`` pointer; then old steps beyond ``keep_last`` are
    deleted. A process killed at any moment leaves ``latest`` on the previous complete
    checkpoint; a step without a manifest is never listed nor loaded, and the next save removes
    it.

    Ranks: ``rank`` and ``world_size`` default to torch.distributed's when it is initialised
    (the barriers and the gathering of shard checksums then use it), else to 0 and 1. Without
    torch.distributed, several ranks (JAX processes, for example) pass ``rank``, ``world_size``
    and a ``barrier`` callable that returns once every rank has called it (for JAX:
    ``lambda: multihost_utils.sync_global_devices("ckpt")``); each rank then also writes a small
    ``rank-NNNNN.json`` with its shard's size and checksum for rank 0 to read.

    ``format``: see :data:`StateFormat`. ``part_size`` and ``max_parts_in_flight`` go to the
    shard writers (:func:`s3dlio.open`).
    """

    def __init__(
        self,
        uri: str,
        keep_last: int | None = None,
        *,
        config: StorageConfig | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        barrier: Callable[[], object] | None = None,
        format: StateFormat = "auto",  # noqa: A002 - the natural name; shadows nothing used here
        part_size: int | None = None,
        max_parts_in_flight: int | None = None,
    ) -> None:
        given: object = uri  # checked at run time whatever the annotation says
        if not isinstance(given, str) or "://" not in given:
            raise InvalidConfigError(f"CheckpointManager takes a URI (s3://, file://, ...), got {uri!r}")
        if keep_last is not None:
            keep_last = _count("keep_last", keep_last, 1)
        if format not in _FORMATS:
            raise InvalidConfigError(
                f"format must be one of {', '.join(map(repr, _FORMATS))}, got {format!r}"
            )
        dist = _dist()
        if world_size is None:
            world_size = int(dist.get_world_size()) if dist is not None else 1
        if rank is None:
            rank = int(dist.get_rank()) if dist is not None else 0
        world_size = _count("world_size", world_size, 1)
        rank = _count("rank", rank, 0)
        if rank >= world_size:
            raise InvalidConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.uri = uri.rstrip("/")
        self.keep_last = keep_last
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.format: StateFormat = format
        self.part_size = part_size
        self.max_parts_in_flight = max_parts_in_flight
        self._barrier_fn = barrier
        self._use_dist = (
            dist is not None and int(dist.get_world_size()) == world_size and int(dist.get_rank()) == rank
        )
        if world_size > 1 and not self._use_dist and barrier is None:
            raise InvalidConfigError(
                f"world_size={world_size} without torch.distributed needs barrier= (a callable every rank "
                "calls, returning once all have)"
            )

    def __repr__(self) -> str:
        return (
            f"CheckpointManager({self.uri!r}, keep_last={self.keep_last!r}, rank={self.rank}, "
            f"world_size={self.world_size}, format={self.format!r})"
        )

    # ----- names -----

    def step_uri(self, step: int) -> str:
        """The prefix of one step's shards and manifest: ``<uri>/step-<step:08d>``."""
        return f"{self.uri}/step-{_check_step(step):08d}"

    def _manifest_uri(self, step: int) -> str:
        return f"{self.step_uri(step)}/manifest.json"

    @property
    def latest_uri(self) -> str:
        """The URI of the ``latest`` pointer object."""
        return f"{self.uri}/latest"

    # ----- coordination -----

    def _barrier(self) -> None:
        if self._use_dist:
            _dist().barrier()
        elif self.world_size > 1 and self._barrier_fn is not None:
            self._barrier_fn()

    def _gather(self, info: dict[str, Any], step_uri: str) -> builtins.list[dict[str, Any]]:
        """Every rank's shard info, in rank order: on every rank with torch.distributed, on rank 0
        only with a barrier (other ranks get [])."""
        if self.world_size == 1:
            return [info]
        if self._use_dist:
            out: builtins.list[Any] = [None] * self.world_size
            _dist().all_gather_object(out, info)
            return out
        _s3.put(f"{step_uri}/rank-{self.rank:05d}.json", json.dumps(info).encode(), config=self.config)
        self._barrier()
        if self.rank != 0:
            return []
        uris = [f"{step_uri}/rank-{r:05d}.json" for r in range(self.world_size)]
        return [json.loads(bytes(b)) for b in _s3.get_many(uris, config=self.config)]

    # ----- save -----

    def save(
        self,
        step: int,
        state: object,
        *,
        metadata: Mapping[str, Any] | None = None,
        format: StateFormat | None = None,  # noqa: A002
    ) -> None:
        """Save this rank's ``state`` as checkpoint ``step`` and, once every rank has, publish it.

        Every rank calls this with its own state (in a single process: the whole state).
        ``metadata`` (JSON-serialisable) is stored in the manifest, see :meth:`manifest`. When
        this returns on rank 0 the checkpoint is complete and ``latest`` names it (with
        torch.distributed or a ``barrier``, every rank returns only then). Saving a step that
        exists already replaces it: its manifest is removed first (and ``latest`` moved to the
        newest other complete step when it named this one), so a crash in between leaves no
        mix of old and new shards.
        """
        step = _check_step(step)
        # Every rank goes through every synchronisation point even after a failure (carried to
        # the others in its shard info), so one rank's error never leaves the others waiting.
        err: Exception | None = None
        fmt = "raw"
        try:
            fmt = _resolve_format(state, self.format if format is None else format)
            if metadata is not None:
                metadata = dict(metadata)
                json.dumps(metadata)  # fail before writing anything
            if self.rank == 0:
                self._clear_step(step)
        except Exception as e:
            err = e
        self._barrier()

        sdir = self.step_uri(step)
        info: dict[str, Any] = {"rank": self.rank}
        if err is None:
            try:
                info.update(self._write_shard(f"{sdir}/rank-{self.rank:05d}.{_EXT[fmt]}", state, fmt))
            except Exception as e:
                err = e
        if err is not None:
            info["error"] = f"{type(err).__name__}: {err}"

        shards = self._gather(info, sdir)
        failed = [s for s in shards if "error" in s]
        try:
            if self.rank == 0 and not failed:
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "step": step,
                    "time": time.time(),
                    "world_size": self.world_size,
                    "state_format": fmt,
                    "shards": sorted(shards, key=lambda s: int(s["rank"])),
                    "metadata": metadata if metadata is not None else {},
                }
                _s3.put(self._manifest_uri(step), json.dumps(manifest, indent=1).encode(), config=self.config)
                self._write_latest(step)
                self._retain(step)
        except Exception as e:
            err = e
        rank0_error = self._agree(
            step, None if err is None or self.rank != 0 else f"{type(err).__name__}: {err}"
        )
        if err is not None:
            raise err
        if failed:
            detail = "; ".join(f"rank {s['rank']}: {s['error']}" for s in failed)
            raise StorageIOError(f"checkpoint step {step} under {self.uri} was not published: {detail}", sdir)
        if rank0_error is not None:
            raise StorageIOError(
                f"checkpoint step {step} under {self.uri} was not published: rank 0: {rank0_error}", sdir
            )

    def _write_shard(self, uri: str, state: object, fmt: str) -> dict[str, Any]:
        with _s3.open(
            uri,
            "wb",
            part_size=self.part_size,
            max_parts_in_flight=self.max_parts_in_flight,
            config=self.config,
        ) as w:
            if fmt == "torch":
                _torch_save(state, w)
            elif fmt == "numpy":
                _write_numpy(state, w)
            else:
                w.write(cast("BufferLike", state))
        return {"path": uri.rsplit("/", 1)[1], "size": w.size, "crc32c": w.crc32c}

    def _agree(self, step: int, rank0_error: str | None) -> str | None:
        """The last synchronisation of a save: every rank learns whether rank 0 published
        (through torch.distributed; with a barrier, by reading ``latest`` afterwards)."""
        if self.world_size == 1:
            return rank0_error
        if self._use_dist:
            out: builtins.list[Any] = [None] * self.world_size
            _dist().all_gather_object(out, rank0_error)
            return cast("str | None", out[0])
        self._barrier()
        if self.rank != 0:
            latest = self.latest_step()
            if latest != step:
                return f"it did not publish the step (latest names {latest})"
        return rank0_error

    def _write_latest(self, step: int | None) -> None:
        if step is None:
            _s3.delete(self.latest_uri, config=self.config)
            return
        pointer = {"format": MANIFEST_FORMAT, "step": step, "manifest": f"step-{step:08d}/manifest.json"}
        _s3.put(self.latest_uri, json.dumps(pointer).encode(), config=self.config)

    def _clear_step(self, step: int) -> None:
        """Remove whatever an earlier save of ``step`` left: the manifest first (so the step stops
        being complete), then the rest; ``latest`` moves off the step first if it named it."""
        sdir = self.step_uri(step)
        if not _s3.list(sdir + "/", config=self.config):
            return
        if self.latest_step() == step:
            others = [s for s in self.list() if s != step]
            self._write_latest(others[-1] if others else None)
        self._delete_step_objects(step)

    def _delete_step_objects(self, step: int) -> None:
        _s3.delete(self._manifest_uri(step), config=self.config)
        _s3.delete_prefix(self.step_uri(step), config=self.config)

    def _retain(self, saved: int) -> None:
        complete = self.list()
        if self.keep_last is not None:
            keep = set(complete[-self.keep_last :]) | {saved}
            for s in complete:
                if s not in keep:
                    self._delete_step_objects(s)
        # Steps without a manifest below the one just published are leftovers of killed saves.
        for s in self._step_dirs():
            if s < saved and s not in complete:
                _s3.delete_prefix(self.step_uri(s), config=self.config)

    def delete(self, step: int) -> None:
        """Delete checkpoint ``step`` (manifest first, then its shards); when ``latest`` named it,
        it is moved to the newest remaining complete step, or removed."""
        step = _check_step(step)
        if self.latest_step() == step:
            others = [s for s in self.list() if s != step]
            self._write_latest(others[-1] if others else None)
        self._delete_step_objects(step)

    # ----- inspect -----

    def list(self) -> builtins.list[int]:
        """The steps of the complete checkpoints (those with a manifest), ascending."""
        steps = set()
        for info in _s3.list(self.uri + "/", pattern="step-*/manifest.json", config=self.config):
            rel = info.uri[len(self.uri) + 1 :]
            d, _, name = rel.partition("/")
            m = _STEP_DIR.match(d)
            if m and name == "manifest.json":
                steps.add(int(m.group(1)))
        return sorted(steps)

    def _step_dirs(self) -> builtins.list[int]:
        out = []
        for info in _s3.list(self.uri + "/", recursive=False, config=self.config):
            m = _STEP_DIR.match(info.uri[len(self.uri) + 1 :].rstrip("/"))
            if info.is_dir and m:
                out.append(int(m.group(1)))
        return sorted(out)

    def latest_step(self) -> int | None:
        """The step ``latest`` names, or None when nothing was published yet."""
        try:
            raw = _s3.get(self.latest_uri, config=self.config)
        except NotFoundError:
            return None
        try:
            pointer = json.loads(bytes(raw))
            return _check_step(pointer["step"])
        except (ValueError, KeyError, TypeError, InvalidConfigError) as e:
            raise CorruptCheckpointError(
                f"unreadable latest pointer: {self.latest_uri}: {e}", self.latest_uri
            ) from e

    def manifest(self, step: int) -> dict[str, Any]:
        """The manifest of complete checkpoint ``step`` (step, time, world_size, state_format,
        shards with size and crc32c, metadata). A step without one is a
        :class:`~s3dlio.exceptions.NotFoundError`."""
        uri = self._manifest_uri(step)
        try:
            raw = _s3.get(uri, config=self.config)
        except NotFoundError as e:
            raise NotFoundError(
                f"no complete checkpoint for step {step} under {self.uri}: {uri} does not exist", uri
            ) from e
        try:
            m = json.loads(bytes(raw))
            if m.get("format") != MANIFEST_FORMAT or m["step"] != step:
                raise ValueError(f"format {m.get('format')!r}, step {m.get('step')!r}")
            if [int(s["rank"]) for s in m["shards"]] != builtins.list(range(int(m["world_size"]))):
                raise ValueError("shards do not cover ranks 0..world_size-1")
            for s in m["shards"]:
                int(s["size"]), int(s["crc32c"]), str(s["path"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(f"unreadable checkpoint manifest: {uri}: {e}", uri) from e
        return dict(m)

    def verify(self, step: int) -> None:
        """Read every shard of ``step`` and check its size and CRC32C against the manifest; a
        mismatch is a :class:`~s3dlio.exceptions.CorruptCheckpointError` naming the shard."""
        m = self.manifest(step)
        for shard in m["shards"]:
            self._fetch_shard(step, shard)

    # ----- load -----

    def _fetch_shard(self, step: int, shard: Mapping[str, Any]) -> Buffer:
        uri = f"{self.step_uri(step)}/{shard['path']}"
        try:
            buf = _s3.get(uri, config=self.config)
        except NotFoundError as e:
            raise CorruptCheckpointError(
                f"checkpoint step {step} is missing shard {uri} (rank {shard['rank']})", uri
            ) from e
        if len(buf) != shard["size"]:
            raise CorruptCheckpointError(
                f"corrupt checkpoint shard {uri}: {len(buf)} bytes, the manifest says {shard['size']}", uri
            )
        crc = _s3.crc32c(buf)
        if crc != shard["crc32c"]:
            raise CorruptCheckpointError(
                f"corrupt checkpoint shard {uri}: CRC32C {crc:#010x}, the manifest says {shard['crc32c']:#010x}",
                uri,
            )
        return buf

    def _check_sizes(self, step: int, m: Mapping[str, Any]) -> None:
        listed = {i.uri: i.size for i in _s3.list(self.step_uri(step) + "/", config=self.config)}
        for shard in m["shards"]:
            uri = f"{self.step_uri(step)}/{shard['path']}"
            if uri not in listed:
                raise CorruptCheckpointError(f"checkpoint step {step} is missing shard {uri}", uri)
            if listed[uri] != shard["size"]:
                raise CorruptCheckpointError(
                    f"corrupt checkpoint shard {uri}: {listed[uri]} bytes, the manifest says {shard['size']}",
                    uri,
                )

    def load(self, step: int, *, rank: int | None = None, **torch_load_kwargs: Any) -> Any:
        """Load this rank's shard (or ``rank``'s) of complete checkpoint ``step``.

        Checks that every shard of the step exists with its recorded size, then reads this
        rank's shard with :func:`s3dlio.get` and checks its size and CRC32C before decoding it.
        A mismatch is a :class:`~s3dlio.exceptions.CorruptCheckpointError` naming the shard. A
        torch shard is decoded by ``torch.load`` straight from the fetched buffer, with
        ``torch_load_kwargs`` (``map_location``, ``weights_only``, ...); a numpy shard comes back
        as the pytree saved (arrays as numpy arrays); a raw shard as an :class:`s3dlio.Buffer`.
        """
        step = _check_step(step)
        rank = self.rank if rank is None else rank
        m = self.manifest(step)
        if not 0 <= rank < m["world_size"]:
            raise InvalidConfigError(
                f"checkpoint step {step} was saved by {m['world_size']} rank(s); rank {rank} has no shard"
            )
        self._check_sizes(step, m)
        shard = m["shards"][rank]
        buf = self._fetch_shard(step, shard)
        fmt = m.get("state_format")
        uri = f"{self.step_uri(step)}/{shard['path']}"
        if fmt == "raw":
            return buf
        if fmt == "numpy":
            return _read_numpy(buf, uri)
        if fmt == "torch":
            with _MemoryReader(buf) as f:
                return _torch().load(f, **torch_load_kwargs)
        raise CorruptCheckpointError(f"unknown state_format {fmt!r} in {self._manifest_uri(step)}", uri)

    def load_latest(self, *, rank: int | None = None, **torch_load_kwargs: Any) -> LatestCheckpoint:
        """``(step, state)`` of the checkpoint ``latest`` names, loaded and verified as
        :meth:`load` does. No checkpoint yet is a :class:`~s3dlio.exceptions.NotFoundError`."""
        step = self.latest_step()
        if step is None:
            raise NotFoundError(
                f"no checkpoint under {self.uri} ({self.latest_uri} does not exist)", self.latest_uri
            )
        try:
            state = self.load(step, rank=rank, **torch_load_kwargs)
        except NotFoundError as e:
            raise CorruptCheckpointError(
                f"{self.latest_uri} names step {step}, which has no manifest: {e}", self.latest_uri
            ) from e
        return LatestCheckpoint(step, state)
