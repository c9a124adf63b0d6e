"""Rows of HDF5 datasets as byte ranges, so the loader can fetch each row with a ranged GET.

:func:`row_layout` opens a file object with h5py (``pip install 's3dlio[hdf5]'``) and, for each
named dataset, finds the file offset of every row (a row is one index along the first dimension)
where the storage allows it:

- contiguous storage: rows lie one after another from the dataset's offset;
- chunked storage without filters, each chunk spanning whole rows (chunk shape ``(k, *row_shape)``):
  each chunk holds ``k`` consecutive rows, in order, from the chunk's file offset.

Anything else (compression or other filters, chunks that split a row, compact, external or virtual
storage, unallocated storage, variable-length types) gives ``addressable=False`` and a ``reason``;
the caller reads those rows through h5py instead. Once addressable, :func:`decode_row` turns the
fetched bytes of a row into a zero-copy array.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..exceptions import CorruptShardError, InvalidConfigError

__all__ = ["DatasetLayout", "decode_row", "row_layout"]


@dataclass(frozen=True, eq=False)
class DatasetLayout:
    """One dataset's rows. ``row_offsets[r]`` is row ``r``'s first byte in the file, and each row
    is ``row_nbytes`` bytes; both are ``None`` / meaningless unless ``addressable``, and ``reason``
    says why not."""

    name: str
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]
    nrows: int
    row_nbytes: int
    addressable: bool
    reason: str | None = None
    row_offsets: npt.NDArray[np.int64] | None = None


def _h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as e:
        raise ImportError(f"reading HDF5 needs h5py: pip install 's3dlio[hdf5]': {e}") from e


def _layout(h5py: Any, name: str, ds: Any) -> DatasetLayout:
    dtype = np.dtype(ds.dtype)
    row_shape = tuple(int(d) for d in ds.shape[1:])
    nrows = int(ds.shape[0])
    row_nbytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))

    def no(reason: str) -> DatasetLayout:
        return DatasetLayout(name, dtype, row_shape, nrows, row_nbytes, False, reason)

    if dtype.hasobject:
        return no(f"variable-length type {ds.dtype} has no fixed row size")
    if ds.id.get_type().get_size() != dtype.itemsize:
        return no(f"HDF5 type size {ds.id.get_type().get_size()} differs from numpy's {dtype.itemsize}")
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    h5d = h5py.h5d
    if dcpl.get_external_count() > 0:
        return no("external storage")
    if nrows == 0 or row_nbytes == 0:
        return DatasetLayout(
            name, dtype, row_shape, nrows, row_nbytes, True, None, np.zeros(nrows, dtype=np.int64)
        )
    if layout == h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        if offset is None:
            return no("storage not allocated (never written)")
        offsets = int(offset) + np.arange(nrows, dtype=np.int64) * row_nbytes
        return DatasetLayout(name, dtype, row_shape, nrows, row_nbytes, True, None, offsets)
    if layout != h5d.CHUNKED:
        kind = {h5d.COMPACT: "compact"}.get(
            layout, "virtual" if layout == getattr(h5d, "VIRTUAL", -1) else ""
        )
        return no(f"{kind or layout} storage")
    nfilters = dcpl.get_nfilters()
    if nfilters:
        names = [dcpl.get_filter(k)[3].decode("ascii", "replace") for k in range(nfilters)]
        return no(f"filtered chunks ({', '.join(names)})")
    chunks = tuple(int(c) for c in ds.chunks)
    if chunks[1:] != row_shape:
        return no(f"chunk shape {chunks} splits rows of shape {row_shape}")
    per = chunks[0]
    offsets = np.full(nrows, -1, dtype=np.int64)
    chunk_bytes = per * row_nbytes
    infos: list[tuple[int, int, int]] = []

    def visit(info: Any) -> None:
        infos.append((int(info.chunk_offset[0]), int(info.byte_offset), int(info.size)))

    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(visit)
    else:
        for k in range(ds.id.get_num_chunks()):
            visit(ds.id.get_chunk_info(k))
    local = np.arange(per, dtype=np.int64) * row_nbytes
    for first, byte_offset, size in infos:
        if size != chunk_bytes:
            return no(f"chunk at row {first} is {size} bytes, expected {chunk_bytes}")
        n = min(per, nrows - first)
        offsets[first : first + n] = byte_offset + local[:n]
    missing = int(np.count_nonzero(offsets < 0))
    if missing:
        return no(f"{missing} of {nrows} rows lie in unallocated chunks (read as the fill value)")
    return DatasetLayout(name, dtype, row_shape, nrows, row_nbytes, True, None, offsets)


def row_layout(fileobj: Any, names: Sequence[str] | None = None) -> list[DatasetLayout]:
    """The row layout of each dataset ``names`` (default: every top-level dataset, in h5py's
    order) of the HDF5 file ``fileobj`` (a binary file object or a path). The datasets must share
    their first dimension, the row count; otherwise, or for a scalar or missing dataset,
    :class:`~s3dlio.exceptions.InvalidConfigError` names them."""
    h5py = _h5py()
    with h5py.File(fileobj, "r") as f:
        if names is None:
            names = [k for k in f if isinstance(f.get(k, getlink=False), h5py.Dataset)]
            if not names:
                raise InvalidConfigError(f"{f.filename}: no top-level datasets")
        out: list[DatasetLayout] = []
        for name in names:
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise InvalidConfigError(f"{f.filename}: {name!r} is not a dataset")
            if ds.shape is None or len(ds.shape) == 0:
                raise InvalidConfigError(f"{f.filename}: dataset {name!r} is scalar (it has no rows)")
            out.append(_layout(h5py, name, ds))
    if len({d.nrows for d in out}) > 1:
        rows = ", ".join(f"{d.name!r}: {d.nrows}" for d in out)
        raise InvalidConfigError(f"HDF5 datasets differ in their number of rows (first dimension): {rows}")
    return out


def decode_row(buf: Any, layout: DatasetLayout) -> npt.NDArray[Any]:
    """One row of ``layout``'s dataset from ``buf`` holding exactly its ``row_nbytes`` bytes: a
    zero-copy, read-only array of shape ``row_shape``."""
    mv = memoryview(buf).cast("B")
    if len(mv) != layout.row_nbytes:
        raise CorruptShardError(
            f"HDF5 dataset {layout.name!r}: a row is {layout.row_nbytes} bytes, got {len(mv)}"
        )
    if layout.row_nbytes == 0:
        arr = np.zeros(layout.row_shape, dtype=layout.dtype)
    else:
        arr = np.frombuffer(mv, dtype=layout.dtype).reshape(layout.row_shape)
    arr.flags.writeable = False
    return arr
