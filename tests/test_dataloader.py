"""The data-loading layer: ObjectDataset / ObjectIterableDataset and s3dlio.DataLoader over the
Rust prefetch pool, against local files and the real S3 server (through the fault proxy where a
failure is needed).

Every object encodes its own index (helpers.indexed_payload: the index as 8 little-endian bytes,
then padding derived from it), so every delivered sample is checked: right bytes, right index,
right place in the epoch's order.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import json
import pickle
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import fresh_bucket, indexed_payload, require, wait_until, write_indexed
from s3dlio import DataLoader, ObjectDataset, ObjectIterableDataset, PoolConfig
from s3dlio import exceptions as exc
from s3dlio._core import epoch_indices
from s3dlio.data import default_collate

N = 300  # objects in the shared datasets
SIZE = 64  # bytes per object (helpers.indexed_payload)

HAS_TORCH = importlib.util.find_spec("torch") is not None


# -------------------------------------------------------------------------------------------------
# Data
# -------------------------------------------------------------------------------------------------


def payload(i: int, size: int = SIZE) -> bytes:
    return indexed_payload(i, size)


def index_of(buf: Any) -> int:
    """The index an object encodes, after checking every byte of it. (Module level, so datasets
    using it as their transform pickle.)"""
    raw = bytes(memoryview(buf))
    i = int.from_bytes(raw[:8], "little")
    assert len(raw) >= 8 and raw == indexed_payload(i, len(raw)), f"corrupt sample {raw[:32]!r}"
    return i


def rows_of(batch: np.ndarray) -> list[int]:
    """Indices of a default-collated batch of raw objects: a (batch, SIZE) uint8 array (a tensor
    when torch is installed)."""
    batch = np.asarray(batch)
    assert batch.dtype == np.uint8 and batch.ndim == 2
    return [index_of(np.ascontiguousarray(row)) for row in batch]


def obj_uri(prefix: str, i: int) -> str:
    return f"{prefix}{i:05d}.bin"  # as helpers.write_indexed names them


def all_uris(prefix: str, n: int = N) -> list[str]:
    return [obj_uri(prefix, i) for i in range(n)]


def indexed(prefix: str, n: int = N, **kw: Any) -> ObjectDataset:
    """A map-style dataset whose samples are the objects' indices (checked byte by byte)."""
    return ObjectDataset.from_uris(all_uris(prefix, n), [SIZE] * n, transform=index_of, **kw)


def flat(batches: Iterable[Any]) -> list[int]:
    """Sample indices of an iterable of batches collated from index_of samples (numpy arrays, or
    tensors when torch is installed)."""
    out: list[int] = []
    for b in batches:
        arr = np.asarray(b)
        assert arr.ndim == 1 and arr.dtype.kind == "i", (type(b), arr.dtype)
        out.extend(int(x) for x in arr)
    return out


def take(it: Iterator[Any], k: int) -> list[int]:
    return flat(next(it) for _ in range(k))


def drain(it: Iterator[Any]) -> list[int]:
    """Whatever an iterator still yields; an iteration ended by cancellation counts as ended."""
    out: list[int] = []
    try:
        for b in it:
            out.extend(int(x) for x in b)
    except exc.CancelledError:
        pass
    return out


def no_live_tasks(loader: DataLoader[Any] | None = None) -> bool:
    """Poll (up to 2 s) until no s3dlio task is alive in this process (and in ``loader``)."""
    ok = wait_until(
        lambda: s3dlio.live_tasks() == 0 and (loader is None or loader.live_tasks() == 0), timeout=2.0
    )
    if not ok:  # say what is left in the assertion's report
        print(f"live tasks: process {s3dlio.live_tasks()}, loader {loader and loader.live_tasks()}")
    return ok


@pytest.fixture(scope="module")
def file_prefix(tmp_path_factory: pytest.TempPathFactory) -> str:
    prefix = f"file://{tmp_path_factory.mktemp('dl-data')}/"
    write_indexed(prefix, N, SIZE)
    return prefix


@pytest.fixture(scope="module")
def s3_prefix(s3_server: Any) -> Iterator[str]:
    with fresh_bucket("dl") as name:
        prefix = f"s3://{name}/data/"
        write_indexed(prefix, N, SIZE)
        yield prefix


def _cloud_prefix(scheme: str) -> Iterator[str]:
    """A fresh container (az://) or bucket (gs://) holding the shared dataset; removed after."""
    with fresh_bucket("dl", scheme=scheme) as name:
        prefix = f"{scheme}://{name}/data/"
        write_indexed(prefix, N, SIZE)
        yield prefix


@pytest.fixture(scope="module")
def az_prefix(azurite: Any) -> Iterator[str]:
    yield from _cloud_prefix("az")


@pytest.fixture(scope="module")
def gs_prefix(fake_gcs: Any) -> Iterator[str]:
    yield from _cloud_prefix("gs")


@pytest.fixture(params=["file", "s3", "az", "gs"])
def prefix(request: pytest.FixtureRequest) -> str:
    """A prefix holding objects 00000.bin .. 00299.bin of SIZE bytes, on each backend (file, s3, az, gs)."""
    return str(request.getfixturevalue(f"{request.param}_prefix"))


@pytest.fixture(autouse=True)
def _no_task_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every passing test leaves no s3dlio task behind (after the loaders it dropped are
    collected). A failed test is not blamed twice: its traceback keeps its loaders alive."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        return
    gc.collect()
    assert no_live_tasks(), f"{s3dlio.live_tasks()} s3dlio tasks still alive after the test"


# -------------------------------------------------------------------------------------------------
# torch DataLoader arguments
# -------------------------------------------------------------------------------------------------

TORCH_ONLY = [
    ("sampler", [0, 1, 2], "shuffle"),
    ("batch_sampler", [[0, 1]], "batch_size"),
    ("worker_init_fn", lambda worker_id: None, "thread"),
    ("multiprocessing_context", "spawn", "thread"),
]


@pytest.mark.parametrize(("name", "value", "why"), TORCH_ONLY, ids=[t[0] for t in TORCH_ONLY])
def test_torch_only_arguments_are_refused(file_prefix: str, name: str, value: Any, why: str) -> None:
    """A torch DataLoader argument that means nothing here raises InvalidConfigError naming the
    argument and saying why (never an inert knob)."""
    with pytest.raises(exc.InvalidConfigError, match=name) as info:
        DataLoader(indexed(file_prefix), **{name: value})
    assert why in str(info.value), str(info.value)


def test_pin_memory_device_is_refused(file_prefix: str) -> None:
    """pin_memory_device= raises InvalidConfigError naming it."""
    with pytest.raises(exc.InvalidConfigError, match="pin_memory_device"):
        DataLoader(indexed(file_prefix), pin_memory_device="cuda:0")


def test_pin_memory_without_cuda_is_refused(file_prefix: str) -> None:
    """pin_memory=True without torch+CUDA raises InvalidConfigError saying CUDA is needed
    (instead of silently not pinning)."""
    if HAS_TORCH:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is available here")
    with pytest.raises(exc.InvalidConfigError, match="pin_memory") as info:
        DataLoader(indexed(file_prefix), pin_memory=True)
    assert "CUDA" in str(info.value)


class _Generator:
    """Stands in for a torch.Generator: only initial_seed() is used."""

    def initial_seed(self) -> int:
        return 7


def test_generator_gives_the_seed_and_excludes_seed(file_prefix: str) -> None:
    """generator= seeds the shuffle like torch (its initial_seed()); giving both generator= and
    seed= is an error."""
    dl = DataLoader(indexed(file_prefix), shuffle=True, generator=_Generator())
    assert dl.options.seed == 7
    assert flat(dl) == epoch_indices(N, 7, 0, True)
    with pytest.raises(exc.InvalidConfigError, match="generator"):
        DataLoader(indexed(file_prefix), generator=_Generator(), seed=1)


@pytest.mark.parametrize("kind", ["list", "iterable"])
def test_dataloader_needs_an_object_dataset(file_prefix: str, kind: str) -> None:
    """Anything but an ObjectDataset (a list, an ObjectIterableDataset) raises
    InvalidConfigError pointing to torch.utils.data.DataLoader."""
    data: Any = list(range(10)) if kind == "list" else ObjectIterableDataset(all_uris(file_prefix))
    with pytest.raises(exc.InvalidConfigError, match="ObjectDataset"):
        DataLoader(data)


# -------------------------------------------------------------------------------------------------
# Each LoaderOptions field changes behaviour
# -------------------------------------------------------------------------------------------------


def test_batch_size_sets_batch_shapes(prefix: str) -> None:
    """batch_size=32 over 300 equal 64-byte objects: nine (32, 64) uint8 batches and a last one of
    12, every sample the right object, in dataset order; len() agrees."""
    dl = DataLoader(ObjectDataset.from_uris(all_uris(prefix)), batch_size=32)
    batches = list(dl)
    assert len(dl) == 10 == len(batches)
    assert [b.shape for b in batches] == [(32, SIZE)] * 9 + [(12, SIZE)]
    assert [i for b in batches for i in rows_of(b)] == list(range(N))
    one = list(DataLoader(ObjectDataset.from_uris(all_uris(prefix, 5)), batch_size=1))
    assert [b.shape for b in one] == [(1, SIZE)] * 5


def test_shuffle_permutes_every_sample_once(prefix: str) -> None:
    """shuffle=True yields every sample exactly once in a seeded permutation (not the identity);
    shuffle=False yields dataset order."""
    shuffled = flat(DataLoader(indexed(prefix), batch_size=16, shuffle=True))
    assert shuffled != list(range(N))
    assert sorted(shuffled) == list(range(N))
    assert shuffled == epoch_indices(N, 0, 0, True)
    assert flat(DataLoader(indexed(prefix), batch_size=16)) == list(range(N))


def test_seed_selects_the_permutation(file_prefix: str) -> None:
    """Different seeds give different permutations; the same seed gives the same one again (in a
    new loader)."""
    a = flat(DataLoader(indexed(file_prefix), batch_size=25, shuffle=True, seed=1))
    b = flat(DataLoader(indexed(file_prefix), batch_size=25, shuffle=True, seed=2))
    again = flat(DataLoader(indexed(file_prefix), batch_size=10, shuffle=True, seed=1))
    assert a != b
    assert sorted(a) == sorted(b) == list(range(N))
    assert a == again == epoch_indices(N, 1, 0, True)


def test_each_iteration_is_the_next_epoch(prefix: str) -> None:
    """Each `for` over the loader is the next epoch with a new permutation; set_epoch(e)
    reproduces epoch e, in this loader and in a fresh one."""
    dl = DataLoader(indexed(prefix), batch_size=32, shuffle=True, seed=3)
    assert dl.epoch == 0
    e0 = flat(dl)
    assert dl.epoch == 1
    e1 = flat(dl)
    assert dl.epoch == 2
    assert e0 != e1
    assert sorted(e0) == sorted(e1) == list(range(N))
    assert e0 == epoch_indices(N, 3, 0, True) and e1 == epoch_indices(N, 3, 1, True)
    dl.set_epoch(1)
    assert flat(dl) == e1
    fresh = DataLoader(indexed(prefix), batch_size=32, shuffle=True, seed=3)
    fresh.set_epoch(0)
    assert flat(fresh) == e0


def test_drop_last_drops_and_never_fetches_the_short_batch(prefix: str) -> None:
    """drop_last=True: len() and the batches lose the last short batch, and its objects are never
    even requested (requests_started stops at 288)."""
    dl = DataLoader(indexed(prefix), batch_size=32, drop_last=True)
    assert len(dl) == 9
    it = iter(dl)
    batches = [next(it) for _ in range(9)]
    assert [len(b) for b in batches] == [32] * 9
    assert flat(batches) == list(range(288))
    assert wait_until(lambda: it._stream.stats()[1] == 288)
    assert it._stream.stats()[0] == 288
    with pytest.raises(StopIteration):
        next(it)
    keep = DataLoader(indexed(prefix), batch_size=32, drop_last=False)
    assert len(keep) == 10
    assert [len(b) for b in keep][-1] == 12


@pytest.mark.parametrize("num_workers", [0, 2])
def test_num_workers_runs_transform_and_collate_on_worker_threads(file_prefix: str, num_workers: int) -> None:
    """num_workers=0: transform and collate run on the iterating thread; num_workers>0: they run
    on s3dlio-worker threads, never on the iterating thread. The samples are the same."""
    names: list[str] = []

    def transform(buf: Any) -> int:
        names.append(threading.current_thread().name)
        return index_of(buf)

    def collate(samples: list[int]) -> np.ndarray:
        names.append(threading.current_thread().name)
        return np.asarray(samples)

    ds = ObjectDataset.from_uris(all_uris(file_prefix), transform=transform)
    dl = DataLoader(ds, batch_size=20, num_workers=num_workers, collate_fn=collate)
    assert flat(dl) == list(range(N))
    assert len(names) == N + 15
    me = threading.current_thread().name
    if num_workers == 0:
        assert set(names) == {me}
    else:
        assert all(n.startswith("s3dlio-worker") for n in names), Counter(names)
    dl.close()


@pytest.mark.parametrize("persistent", [True, False])
def test_persistent_workers_keep_threads_across_epochs(file_prefix: str, persistent: bool) -> None:
    """persistent_workers=True: the same worker threads serve the next epoch and stay alive in
    between; False: the epoch's threads end with it and the next epoch gets new ones."""
    seen: list[list[threading.Thread]] = [[], []]
    epoch = [0]

    def transform(buf: Any) -> int:
        seen[epoch[0]].append(threading.current_thread())
        return index_of(buf)

    ds = ObjectDataset.from_uris(all_uris(file_prefix), transform=transform)
    dl = DataLoader(ds, batch_size=10, num_workers=2, persistent_workers=persistent)
    assert flat(dl) == list(range(N))
    first = set(seen[0])
    assert first and all(t.name.startswith("s3dlio-worker") for t in first)
    if persistent:
        assert all(t.is_alive() for t in first)
    else:
        assert wait_until(lambda: not any(t.is_alive() for t in first))
    epoch[0] = 1
    assert flat(dl) == list(range(N))
    second = set(seen[1])
    if persistent:
        # Reused, never replaced: at most num_workers threads over both epochs (the pool may
        # have started its second thread only in the second epoch).
        assert second and len(first | second) <= 2
    else:
        assert second and not second & first
    dl.close()
    assert wait_until(lambda: not any(t.is_alive() for t in first | second))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_prefetch_factor_bounds_the_read_ahead(prefix: str, num_workers: int) -> None:
    """With a consumer that stops after one batch, the pool starts at most about
    (readahead_batches + 2) * batch_size + pool_size requests (a batch of slack allowed), and a
    larger prefetch_factor lets more start. An explicit small pool bounds it further."""
    bs = 4
    started = {}
    for pf in (1, 8):
        with DataLoader(indexed(prefix), batch_size=bs, num_workers=num_workers, prefetch_factor=pf) as dl:
            it = iter(dl)
            assert len(next(it)) == bs
            time.sleep(0.5)  # a stalled consumer: let the pool run as far ahead as it may
            s, f, nbytes = it._stream.stats()
            bound = (dl.pool.readahead_batches + 3) * bs + dl.pool.pool_size
            assert bs <= f <= s <= bound, (pf, dl.pool, (s, f), bound)
            assert nbytes == f * SIZE
            assert s < N  # it did stop: the consumer is not being outrun without limit
            started[pf] = s
    assert started[8] > started[1], started
    pool = PoolConfig(pool_size=2, readahead_batches=1)
    with DataLoader(indexed(prefix), batch_size=bs, num_workers=num_workers, pool=pool) as dl:
        it = iter(dl)
        next(it)
        time.sleep(0.5)
        s, _f, _b = it._stream.stats()
    assert s <= (1 + 3) * bs + 2, (s, started)


def _blackholed_dataset(bucket: str, proxy: FaultProxy, s3_config: Callable[..., Any], n: int = 40) -> Any:
    """n objects written straight to the server; a dataset reading them through the proxy."""
    uris = write_indexed(f"s3://{bucket}/", n, SIZE)
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=1)
    return ObjectDataset.from_uris(uris, [SIZE] * n, transform=index_of, config=cfg)


@pytest.mark.timeout(60)
def test_timeout_raises_storage_timeout(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., Any]
) -> None:
    """timeout=0.5 over a server that stopped answering: next() raises StorageTimeoutError (a
    TimeoutError) within a few seconds, not after the 30 s read timeout; nothing is left running.
    The same loader settings over a healthy server deliver everything."""
    ds = _blackholed_dataset(bucket, proxy, s3_config)
    assert flat(DataLoader(ds, batch_size=4, timeout=5)) == list(range(40))
    proxy.set_mode("blackhole")
    with DataLoader(ds, batch_size=4, timeout=0.5) as dl:
        t0 = time.monotonic()
        with pytest.raises(exc.StorageTimeoutError) as info:
            next(iter(dl))
        elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert "timeout" in str(info.value)
    assert 0.4 <= elapsed < 5, elapsed
    assert no_live_tasks(dl)


@pytest.mark.timeout(60)
def test_pool_request_timeout_fails_the_stuck_object(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., Any]
) -> None:
    """PoolConfig.request_timeout=0.5 bounds each object request: over a server that stopped
    answering, the batch fails with StorageTimeoutError naming the object's URI, within a few
    seconds (not the 30 s read timeout)."""
    ds = _blackholed_dataset(bucket, proxy, s3_config)
    proxy.set_mode("blackhole")
    pool = PoolConfig(pool_size=4, readahead_batches=1, request_timeout=0.5)
    with DataLoader(ds, batch_size=4, pool=pool) as dl:
        t0 = time.monotonic()
        with pytest.raises(exc.StorageTimeoutError) as info:
            next(iter(dl))
        elapsed = time.monotonic() - t0
    assert info.value.uri in ds.uris[:4], info.value.uri
    assert info.value.uri in str(info.value)
    assert 0.4 <= elapsed < 5, elapsed
    assert no_live_tasks(dl)


@pytest.mark.timeout(60)
def test_in_order_false_is_not_held_back_by_a_stuck_object(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., Any]
) -> None:
    """in_order=False yields in completion order: with object 0 stuck, the other batches still
    arrive. in_order=True waits for object 0 first (timeout=1 shows it gets nothing)."""
    ds = _blackholed_dataset(bucket, proxy, s3_config)
    proxy.set_mode("blackhole", match=r"/00000\.bin[ ?]")
    with DataLoader(ds, batch_size=4, in_order=False) as dl:
        it = iter(dl)
        got = take(it, 9)  # 36 of the 39 readable samples: only the batch holding object 0 waits
    assert len(got) == len(set(got)) == 36 and 0 not in got and set(got) <= set(range(40))
    assert no_live_tasks(dl)
    with DataLoader(ds, batch_size=4, in_order=True, timeout=1.0) as dl, pytest.raises(exc.S3dlioError):
        next(iter(dl))
    assert no_live_tasks(dl)


def test_in_order_true_is_exactly_the_epoch_order(prefix: str) -> None:
    """in_order=True (with workers too) yields exactly epoch_indices' order."""
    for nw in (0, 3):
        dl = DataLoader(indexed(prefix), batch_size=9, shuffle=True, seed=4, num_workers=nw)
        assert flat(dl) == epoch_indices(N, 4, 0, True)
        dl.close()


def test_in_order_false_yields_every_sample_once(prefix: str) -> None:
    """in_order=False yields every sample exactly once (order may differ), with full batches
    except the last."""
    dl = DataLoader(indexed(prefix), batch_size=16, shuffle=True, in_order=False, num_workers=2)
    batches = list(dl)
    got = flat(batches)
    assert sorted(got) == list(range(N))
    assert [len(b) for b in batches] == [16] * 18 + [12]
    dl.close()


def _with_missing(prefix: str, missing: Sequence[int]) -> tuple[ObjectDataset, list[str]]:
    uris = all_uris(prefix)
    gone = [f"{prefix}missing-{i:05d}" for i in missing]
    for i, g in zip(missing, gone, strict=True):
        uris[i] = g
    return ObjectDataset.from_uris(uris, transform=index_of), gone


def test_on_error_raise_names_the_uri_and_stops(prefix: str) -> None:
    """on_error="raise": the batches before the failing one are delivered, then NotFoundError (a
    FileNotFoundError) naming the missing URI, then iteration stops."""
    ds, (gone,) = _with_missing(prefix, [100])
    with DataLoader(ds, batch_size=10) as dl:
        it = iter(dl)
        got = take(it, 10)
        assert got == list(range(100))
        with pytest.raises(exc.NotFoundError) as info:
            next(it)
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.uri == gone
        assert gone in str(info.value)
        with pytest.raises(StopIteration):
            next(it)
        assert no_live_tasks(dl)


def test_on_error_continue_raises_in_place_and_goes_on(prefix: str) -> None:
    """on_error="continue": a failed batch's error is raised in place of that batch (naming the
    URI, with .indices), and the next next() goes on with the following batches. Nothing is
    silently dropped: yielded samples + failed batches' indices == the whole dataset."""
    ds, gone = _with_missing(prefix, [37, 205])
    events: list[tuple[str, list[int]]] = []
    errors: list[exc.S3dlioError] = []
    with DataLoader(ds, batch_size=10, on_error="continue") as dl:
        it = iter(dl)
        while len(events) < 40:
            try:
                events.append(("ok", [int(x) for x in next(it)]))
            except StopIteration:
                break
            except exc.S3dlioError as e:
                errors.append(e)
                events.append(("error", list(getattr(e, "indices", []))))
    expected = [("error" if b in (3, 20) else "ok", list(range(10 * b, 10 * b + 10))) for b in range(30)]
    assert events == expected, [(kind, ix[:1]) for kind, ix in events]
    assert [type(e) for e in errors] == [exc.NotFoundError] * 2
    assert [e.uri for e in errors] == gone
    assert all(g in str(e) for g, e in zip(gone, errors, strict=True))
    yielded = [i for kind, ix in events if kind == "ok" for i in ix]
    failed = [i for kind, ix in events if kind == "error" for i in ix]
    assert sorted(yielded + failed) == list(range(N))


# -------------------------------------------------------------------------------------------------
# Default collate (numpy, without torch)
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import torch`` fails for the test (as on a machine without torch), so the numpy collate
    path runs even where torch is installed, as in CI (a skip there would hide it for good)."""
    monkeypatch.setitem(sys.modules, "torch", None)


needs_no_torch = pytest.mark.usefixtures("without_torch")


@needs_no_torch
def test_collate_equal_buffers_stack_into_uint8(file_prefix: str) -> None:
    """Buffers of equal size collate into one writable uint8 array of shape (batch, size)."""
    bufs = s3dlio.get_many(all_uris(file_prefix, 5))
    out = default_collate(bufs)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (5, SIZE)
    assert rows_of(out) == [0, 1, 2, 3, 4]
    assert out.flags.writeable


def test_collate_ragged_buffers_give_a_list(tmp_path: Path) -> None:
    """Buffers of different sizes collate into a list of uint8 arrays, one per sample, each
    sharing the Buffer's memory; a DataLoader over ragged objects yields such lists."""
    prefix = f"file://{tmp_path}/"
    sizes = [8, 16, 24, 8, 32]
    uris = [obj_uri(prefix, i) for i in range(5)]
    for i, (u, n) in enumerate(zip(uris, sizes, strict=True)):
        s3dlio.put(u, payload(i, n))
    bufs = [s3dlio.get(u) for u in uris]
    out = default_collate(bufs)
    assert isinstance(out, list) and [a.size for a in out] == sizes
    assert all(a.dtype == np.uint8 for a in out)
    assert all(a.ctypes.data == b.address for a, b in zip(out, bufs, strict=True))
    batches = list(DataLoader(ObjectDataset.from_uris(uris), batch_size=3))
    assert [type(b) for b in batches] == [list, list]
    assert [index_of(a) for b in batches for a in b] == [0, 1, 2, 3, 4]


@needs_no_torch
def test_collate_nested_samples_per_field() -> None:
    """Dicts, tuples and lists are collated per field; numbers and arrays are stacked with numpy;
    anything else is left as a list."""
    samples = [
        {"x": np.arange(3) + i, "y": i, "f": float(i) / 2, "t": (i, np.float32(i)), "l": [i], "s": f"n{i}"}
        for i in range(4)
    ]
    out = default_collate(samples)
    assert set(out) == {"x", "y", "f", "t", "l", "s"}
    assert out["x"].shape == (4, 3) and out["x"][2].tolist() == [2, 3, 4]
    assert isinstance(out["y"], np.ndarray) and out["y"].tolist() == [0, 1, 2, 3]
    assert out["f"].dtype == np.float64 and out["f"].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert isinstance(out["t"], tuple) and out["t"][0].tolist() == [0, 1, 2, 3]
    assert out["t"][1].dtype == np.float32
    assert isinstance(out["l"], list) and out["l"][0].tolist() == [0, 1, 2, 3]
    assert out["s"] == ["n0", "n1", "n2", "n3"]


@needs_no_torch
def test_loader_collates_transformed_samples(file_prefix: str) -> None:
    """A transform returning (dict, number) tuples gives batches collated per field."""

    def transform(buf: Any) -> tuple[dict[str, Any], int]:
        i = index_of(buf)
        return {"idx": i, "raw": np.frombuffer(buf, dtype=np.uint8)}, i * 2

    dl = DataLoader(ObjectDataset.from_uris(all_uris(file_prefix, 10), transform=transform), batch_size=4)
    batches = list(dl)
    assert len(batches) == 3
    fields, doubled = batches[0]
    assert fields["idx"].tolist() == [0, 1, 2, 3]
    assert fields["raw"].shape == (4, SIZE) and bytes(fields["raw"][3]) == payload(3)
    assert doubled.tolist() == [0, 2, 4, 6]
    assert batches[2][0]["idx"].tolist() == [8, 9]


def test_collate_with_torch_gives_tensors(file_prefix: str) -> None:
    """With torch installed, equal-size Buffers collate into one uint8 tensor (batch, size) and
    other samples go through torch's default_collate (numbers become tensors)."""
    torch = require("torch")
    out = default_collate(s3dlio.get_many(all_uris(file_prefix, 3)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and tuple(out.shape) == (3, SIZE)
    assert rows_of(out.numpy()) == [0, 1, 2]
    nested = default_collate([{"i": i, "x": torch.full((2,), i)} for i in range(3)])
    assert nested["i"].tolist() == [0, 1, 2] and tuple(nested["x"].shape) == (3, 2)


# -------------------------------------------------------------------------------------------------
# Resume
# -------------------------------------------------------------------------------------------------

RESUME = [
    # (workers before, workers after, batch size after, epochs completed before the state)
    (0, 0, 16, 0),
    (0, 2, 16, 0),
    (2, 0, 16, 1),
    (0, 0, 7, 0),
    (2, 3, 50, 1),
]


@pytest.mark.parametrize(("nw", "nw2", "bs2", "epochs"), RESUME, ids=lambda v: str(v))
def test_resume_mid_epoch_yields_exactly_the_rest(
    prefix: str, nw: int, nw2: int, bs2: int, epochs: int
) -> None:
    """state_dict() after k batches, loaded into a NEW loader (also with another num_workers or
    batch_size) yields exactly the samples not yet yielded, in order: no replay, no skip. The
    state is small and JSON-serialisable (no list of indices)."""
    with DataLoader(indexed(prefix), batch_size=16, shuffle=True, seed=11, num_workers=nw) as dl:
        for _ in range(epochs):
            flat(dl)
        it = iter(dl)
        before = take(it, 5)
        state = dl.state_dict()
    encoded = json.dumps(state)
    assert len(encoded) < 500, encoded
    order = epoch_indices(N, 11, epochs, True)
    assert before == order[:80]
    with DataLoader(indexed(prefix), batch_size=bs2, shuffle=True, seed=11, num_workers=nw2) as dl2:
        dl2.load_state_dict(json.loads(encoded))
        assert dl2.epoch == epochs
        assert flat(dl2) == order[80:]
        assert flat(dl2) == epoch_indices(N, 11, epochs + 1, True)  # then the next epoch, from its start


def test_resume_from_the_end_of_an_epoch_starts_the_next(file_prefix: str) -> None:
    """A state taken after a whole epoch resumes at the start of the next epoch."""
    dl = DataLoader(indexed(file_prefix), batch_size=32, shuffle=True, seed=2)
    assert flat(dl) == epoch_indices(N, 2, 0, True)
    state = dl.state_dict()
    dl2 = DataLoader(indexed(file_prefix), batch_size=32, shuffle=True, seed=2)
    dl2.load_state_dict(state)
    assert flat(dl2) == epoch_indices(N, 2, 1, True)


def test_resume_before_any_batch_is_the_whole_epoch(file_prefix: str) -> None:
    """A state taken before iterating (or after set_epoch) resumes that epoch from its start."""
    dl = DataLoader(indexed(file_prefix), batch_size=32, shuffle=True, seed=2)
    dl.set_epoch(4)
    state = dl.state_dict()
    dl2 = DataLoader(indexed(file_prefix), batch_size=32, shuffle=True, seed=2)
    dl2.load_state_dict(state)
    assert flat(dl2) == epoch_indices(N, 2, 4, True)


def test_resume_in_completion_order_is_exact(prefix: str) -> None:
    """With in_order=False the state records what was yielded out of order too: the samples
    yielded before and after the resume are disjoint and together the whole dataset."""
    with DataLoader(indexed(prefix), batch_size=8, shuffle=True, seed=5, in_order=False, num_workers=2) as dl:
        it = iter(dl)
        before = take(it, 7)
        state = json.loads(json.dumps(dl.state_dict()))
    with DataLoader(indexed(prefix), batch_size=8, shuffle=True, seed=5, in_order=False) as dl2:
        dl2.load_state_dict(state)
        after = flat(dl2)
    assert len(before) == 56 and len(after) == N - 56
    assert not set(before) & set(after)
    assert sorted(before + after) == list(range(N))


def test_resume_refuses_a_mismatched_state(file_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_state_dict refuses a state from another seed, shuffle setting, dataset length or world
    size, and anything that is not a loader state, with InvalidConfigError naming the field."""
    dl = DataLoader(indexed(file_prefix), batch_size=8, shuffle=True, seed=1)
    it = iter(dl)
    take(it, 2)
    state = dl.state_dict()
    dl.close()
    with pytest.raises(exc.InvalidConfigError, match="seed"):
        DataLoader(indexed(file_prefix), batch_size=8, shuffle=True, seed=2).load_state_dict(state)
    with pytest.raises(exc.InvalidConfigError, match="shuffle"):
        DataLoader(indexed(file_prefix), batch_size=8, seed=1).load_state_dict(state)
    with pytest.raises(exc.InvalidConfigError, match="dataset_len"):
        DataLoader(indexed(file_prefix, N - 1), batch_size=8, shuffle=True, seed=1).load_state_dict(state)
    with pytest.raises(exc.InvalidConfigError):
        DataLoader(indexed(file_prefix), shuffle=True, seed=1).load_state_dict({"epoch": 0})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(exc.InvalidConfigError, match="world_size"):
        DataLoader(indexed(file_prefix), batch_size=8, shuffle=True, seed=1).load_state_dict(state)


# -------------------------------------------------------------------------------------------------
# Sharding by rank (RANK / WORLD_SIZE)
# -------------------------------------------------------------------------------------------------


def _check_shares(shares: list[list[int]], n: int, seed: int, even: str) -> None:
    world = len(shares)
    perm = epoch_indices(n, seed, 0, True)
    share = -(-n // world) if even == "pad" else n // world
    assert [len(s) for s in shares] == [share] * world
    # Interleaving the shares rebuilds one permutation: every rank cut the same one.
    rebuilt = [shares[r][i] for i in range(share) for r in range(world)]
    if even == "pad":  # DistributedSampler pads with the start of the permutation
        assert rebuilt == (perm + perm)[: share * world]
        assert set(rebuilt) == set(range(n))
        assert sum(c - 1 for c in Counter(rebuilt).values()) == share * world - n
    else:
        assert rebuilt == perm[: share * world]
        assert len(set(rebuilt)) == share * world


@pytest.mark.parametrize("even", ["pad", "drop"])
def test_rank_shares_of_a_dataloader(file_prefix: str, monkeypatch: pytest.MonkeyPatch, even: str) -> None:
    """RANK/WORLD_SIZE=3 over 299 objects: the ranks' shares of one shuffled epoch have equal
    length, are cut from one permutation (the same on every rank), are disjoint except
    DistributedSampler's padding ("pad") or drop the remainder ("drop"), and cover the dataset."""
    n, shares = N - 1, []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        dl = DataLoader(indexed(file_prefix, n), batch_size=7, shuffle=True, seed=5, even=even)
        share = flat(dl)
        assert len(dl) == -(-len(share) // 7)
        shares.append(share)
    _check_shares(shares, n, 5, even)


@pytest.mark.parametrize("even", ["pad", "drop"])
def test_rank_shares_of_an_iterable_dataset(prefix: str, monkeypatch: pytest.MonkeyPatch, even: str) -> None:
    """The same sharding for ObjectIterableDataset iteration (each rank a share of equal length,
    from one permutation, padded or dropped)."""
    n, shares = N - 1, []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        ds = ObjectIterableDataset(
            all_uris(prefix, n), [SIZE] * n, transform=index_of, shuffle=True, seed=5, even=even
        )
        shares.append(list(ds))
    _check_shares(shares, n, 5, even)


def test_explicit_rank_and_world_size(file_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """rank=/world_size= (e.g. from jax.process_index()) override the environment: the shares are
    those the environment would give for the same rank and world, and bad values are refused."""
    n = N - 1
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    shares = [
        flat(DataLoader(indexed(file_prefix, n), batch_size=7, shuffle=True, seed=5, rank=r, world_size=3))
        for r in range(3)
    ]
    _check_shares(shares, n, 5, "pad")
    for bad in ({"rank": 3, "world_size": 3}, {"rank": 0}, {"world_size": 2}, {"rank": -1, "world_size": 2}):
        with pytest.raises(exc.InvalidConfigError):
            DataLoader(indexed(file_prefix), batch_size=8, **bad)  # type: ignore[arg-type]


def test_bad_rank_is_refused(file_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """RANK outside WORLD_SIZE (or not a number) raises InvalidConfigError, not a wrong share."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(exc.InvalidConfigError, match="RANK"):
        iter(DataLoader(indexed(file_prefix), batch_size=8))
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(exc.InvalidConfigError, match="RANK"):
        list(ObjectIterableDataset(all_uris(file_prefix)))


# -------------------------------------------------------------------------------------------------
# ObjectIterableDataset
# -------------------------------------------------------------------------------------------------


def test_iterable_dataset_yields_every_sample(prefix: str) -> None:
    """Iteration yields transform(buffer) for every object in dataset order; without a transform
    the samples are Buffers with the objects' bytes."""
    ds = ObjectIterableDataset(all_uris(prefix), [SIZE] * N, transform=index_of)
    assert list(ds) == list(range(N))
    raw = list(ObjectIterableDataset(all_uris(prefix, 5)))
    assert all(isinstance(b, s3dlio.Buffer) for b in raw)
    assert [bytes(b) for b in raw] == [payload(i) for i in range(5)]


def test_iterable_dataset_new_permutation_every_epoch(file_prefix: str) -> None:
    """With shuffle, each full iteration is the next epoch's permutation; set_epoch(e) selects
    epoch e's permutation."""
    ds = ObjectIterableDataset(all_uris(file_prefix), transform=index_of, shuffle=True, seed=8)
    e0, e1 = list(ds), list(ds)
    assert e0 == epoch_indices(N, 8, 0, True) and e1 == epoch_indices(N, 8, 1, True)
    assert e0 != e1 and sorted(e0) == list(range(N))
    ds.set_epoch(0)
    assert list(ds) == e0
    ds.set_epoch(5)
    assert list(ds) == epoch_indices(N, 8, 5, True)


def test_iterable_dataset_resumes_mid_epoch(prefix: str) -> None:
    """state_dict() after k samples, loaded into a new dataset, yields exactly the rest of that
    epoch (no replay, no skip); the state is O(1) and a state from another seed is refused."""
    ds = ObjectIterableDataset(all_uris(prefix), transform=index_of, shuffle=True, seed=4)
    ds.set_epoch(2)
    gen = iter(ds)
    before = list(itertools.islice(gen, 50))
    state = ds.state_dict()
    gen.close()  # type: ignore[attr-defined]
    assert len(json.dumps(state)) < 200
    order = epoch_indices(N, 4, 2, True)
    assert before == order[:50]
    ds2 = ObjectIterableDataset(all_uris(prefix), transform=index_of, shuffle=True, seed=4)
    ds2.load_state_dict(json.loads(json.dumps(state)))
    assert list(ds2) == order[50:]
    assert list(ds2) == epoch_indices(N, 4, 3, True)
    other = ObjectIterableDataset(all_uris(prefix), transform=index_of, shuffle=True, seed=5)
    with pytest.raises(exc.InvalidConfigError, match="seed"):
        other.load_state_dict(state)


# -------------------------------------------------------------------------------------------------
# Building datasets
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ObjectDataset, ObjectIterableDataset])
def test_from_prefix_lists_in_key_order_with_sizes(prefix: str, cls: type) -> None:
    """from_prefix: every object under the prefix, in key order, with the listing's sizes (so no
    HEAD is needed); pattern= narrows it with a glob."""
    ds = cls.from_prefix(prefix, transform=index_of)
    assert len(ds) == N
    assert ds.uris == all_uris(prefix)
    assert ds.sizes == [SIZE] * N
    some = cls.from_prefix(prefix, pattern="0001?.bin")
    assert some.uris == [obj_uri(prefix, i) for i in range(10, 20)]


def test_from_uris_keeps_the_given_order(prefix: str) -> None:
    """from_uris keeps the URIs in the order given (index i is the i-th URI); sizes are optional."""
    order = [5, 3, 250, 0]
    ds = ObjectDataset.from_uris([obj_uri(prefix, i) for i in order], transform=index_of)
    assert ds.sizes is None
    assert [ds[i] for i in range(4)] == order
    assert flat(DataLoader(ds, batch_size=3)) == order


def test_from_manifest_local_file(file_prefix: str, tmp_path: Path) -> None:
    """A local manifest with "uri<TAB>size", "uri,size" and bare-URI lines, comments and blank
    lines: the listed objects in order, with the sizes given (None where absent)."""
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(
        "# a manifest\n"
        "\n"
        f"{obj_uri(file_prefix, 4)}\t{SIZE}\n"
        f"  {obj_uri(file_prefix, 9)} , {SIZE}  \n"
        "   \n"
        f"{obj_uri(file_prefix, 1)}\n"
        "# done\n"
    )
    ds = ObjectDataset.from_manifest(manifest, transform=index_of)
    assert ds.uris == [obj_uri(file_prefix, i) for i in (4, 9, 1)]
    assert ds.sizes == [SIZE, SIZE, None]
    assert [ds[i] for i in range(3)] == [4, 9, 1]
    it_ds = ObjectIterableDataset.from_manifest(str(manifest), transform=index_of)
    assert list(it_ds) == [4, 9, 1]


def test_from_manifest_stored_in_s3(s3_prefix: str) -> None:
    """A manifest stored as an object is read through its s3:// URI."""
    lines = [f"{obj_uri(s3_prefix, i)}\t{SIZE}" for i in range(0, N, 3)]
    manifest = s3_prefix.replace("/data/", "/manifests/m.tsv")
    s3dlio.put(manifest, ("\n".join(lines) + "\n").encode())
    ds = ObjectDataset.from_manifest(manifest, transform=index_of)
    assert len(ds) == 100 and ds.sizes == [SIZE] * 100
    assert flat(DataLoader(ds, batch_size=16)) == list(range(0, N, 3))


@pytest.mark.parametrize("line", ["s3://b/k\tabc", "s3://b/k,-5", "s3://b/k\t1.5"])
def test_bad_manifest_size_is_refused(tmp_path: Path, line: str) -> None:
    """A manifest size that is not a non-negative integer raises InvalidConfigError naming the
    manifest and line."""
    manifest = tmp_path / "bad.txt"
    manifest.write_text(f"s3://b/ok\t3\n{line}\n")
    with pytest.raises(exc.InvalidConfigError, match=r"bad\.txt:2"):
        ObjectDataset.from_manifest(manifest)


def test_indexing_and_batch_fetch(prefix: str) -> None:
    """ds[i] reads object i (negative indices from the end); out of range is IndexError;
    __getitems__ fetches a batch of indices at once, in the order asked; without a transform a
    sample is the object's Buffer."""
    ds = indexed(prefix)
    assert ds[0] == 0 and ds[123] == 123 and ds[-1] == N - 1 and ds[-N] == 0
    for bad in (N, N + 5, -N - 1):
        with pytest.raises(IndexError):
            ds[bad]
    assert ds.__getitems__([5, 299, 0, 5]) == [5, 299, 0, 5]
    raw = ObjectDataset.from_uris(all_uris(prefix, 4))
    assert isinstance(raw[2], s3dlio.Buffer) and bytes(raw[2]) == payload(2)


def test_missing_object_names_its_uri(prefix: str) -> None:
    """Reading a missing object through a dataset raises NotFoundError naming the URI."""
    ds, (gone,) = _with_missing(prefix, [3])
    with pytest.raises(exc.NotFoundError, match=gone.replace("/", ".")):
        ds[3]
    with pytest.raises(exc.NotFoundError) as info:
        ds.__getitems__([1, 2, 3])
    assert info.value.uri == gone


def test_datasets_pickle(prefix: str, s3_config: Callable[..., Any]) -> None:
    """Both datasets pickle with their URIs, sizes, transform, config and shuffle settings (what
    spawn workers need), and the copies read the same samples."""
    cfg = s3_config() if prefix.startswith("s3://") else None
    ds = ObjectDataset.from_uris(all_uris(prefix), [SIZE] * N, transform=index_of, config=cfg)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert (ds2.uris, ds2.sizes, ds2.config, len(ds2)) == (ds.uris, ds.sizes, ds.config, N)
    assert ds2[17] == 17
    it = ObjectIterableDataset(all_uris(prefix, 30), transform=index_of, config=cfg, shuffle=True, seed=3)
    it.set_epoch(2)
    it2 = pickle.loads(pickle.dumps(it))
    assert (it2.shuffle, it2.seed, it2.epoch) == (True, 3, 2)
    assert list(it2) == epoch_indices(30, 3, 2, True)


def test_dataset_arguments_are_checked(file_prefix: str) -> None:
    """A single string instead of a list of URIs, sizes of the wrong length, a non-callable
    transform, a config that is not a StorageConfig, or a bad even= raise InvalidConfigError."""
    uris = all_uris(file_prefix, 3)
    with pytest.raises(exc.InvalidConfigError, match="sequence"):
        ObjectDataset.from_uris(uris[0])
    with pytest.raises(exc.InvalidConfigError, match="sizes"):
        ObjectDataset.from_uris(uris, [SIZE])
    with pytest.raises(exc.InvalidConfigError, match="transform"):
        ObjectDataset.from_uris(uris, transform=42)  # type: ignore[arg-type]
    with pytest.raises(exc.InvalidConfigError, match="StorageConfig"):
        ObjectDataset.from_uris(uris, config={"region": "x"})  # type: ignore[arg-type]
    with pytest.raises(exc.InvalidConfigError, match="even"):
        ObjectIterableDataset(uris, even="wrap")


# -------------------------------------------------------------------------------------------------
# Shutdown: break, with, close, shared cancel token
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_break_then_gc_stops_every_task(prefix: str, num_workers: int) -> None:
    """An early `break` (then garbage collection) cancels the epoch: live_tasks() reaches 0."""
    dl = DataLoader(indexed(prefix), batch_size=4, num_workers=num_workers)
    alive = 0
    for _ in dl:
        alive = s3dlio.live_tasks()
        break
    assert alive > 0  # the pool was really running ahead
    gc.collect()
    assert no_live_tasks(dl)
    dl.close()


def test_dropping_the_loader_mid_epoch_stops_every_task(prefix: str) -> None:
    """Losing the last reference to a loader and its iterator mid-epoch stops its tasks."""
    dl = DataLoader(indexed(prefix), batch_size=4, num_workers=2)
    it = iter(dl)
    next(it)
    assert s3dlio.live_tasks() > 0
    del it, dl
    gc.collect()
    assert no_live_tasks()


def test_with_block_exit_mid_epoch_stops_every_task(prefix: str) -> None:
    """Leaving a `with DataLoader(...)` block mid-epoch closes the loader: 0 live tasks, and the
    closed loader cannot be iterated again."""
    with DataLoader(indexed(prefix), batch_size=4) as dl:
        it = iter(dl)
        assert len(next(it)) == 4
        assert dl.live_tasks() > 0
    assert dl.live_tasks() == 0
    assert no_live_tasks(dl)
    with pytest.raises(exc.InvalidConfigError, match="closed"):
        iter(dl)


def test_close_mid_epoch_joins_every_task(prefix: str) -> None:
    """close() mid-epoch returns with the loader's tasks joined (dl.live_tasks() == 0 at once,
    process-wide 0 too), the open iterator yields nothing more, further iteration raises
    InvalidConfigError, and close() is idempotent."""
    dl = DataLoader(indexed(prefix), batch_size=4, num_workers=2)
    it = iter(dl)
    next(it)
    assert dl.live_tasks() > 0
    dl.close()
    assert dl.live_tasks() == 0
    assert no_live_tasks(dl)
    try:
        rest = list(it)
    except exc.S3dlioError:
        rest = []
    assert rest == []
    with pytest.raises(exc.InvalidConfigError, match="closed"):
        for _ in dl:
            pass
    dl.close()


def test_shared_cancel_token_stops_every_loader(prefix: str) -> None:
    """One CancelToken shared by two loaders: cancel() ends both iterations early (at most the
    batches already read ahead still arrive) and leaves no task alive."""
    token = s3dlio.CancelToken()
    dls = [
        DataLoader(indexed(prefix), batch_size=4, shuffle=True, seed=s, cancel_token=token) for s in (1, 2)
    ]
    its = [iter(dl) for dl in dls]
    firsts = [take(it, 1) for it in its]
    token.cancel()
    assert token.cancelled
    for dl, it, first in zip(dls, its, firsts, strict=True):
        rest = drain(it)
        assert len(rest) <= (dl.pool.readahead_batches + 1) * 4, len(rest)
        got = first + rest
        assert got == epoch_indices(N, dl.options.seed, 0, True)[: len(got)]
        assert no_live_tasks(dl)
    assert no_live_tasks()


def test_cancelled_token_before_start_fetches_nothing(prefix: str) -> None:
    """A token cancelled before iteration starts: the DataLoader refuses to iterate
    (CancelledError, saying a new loader is needed), and a stream started under it requests no
    object and delivers nothing."""
    token = s3dlio.CancelToken()
    token.cancel()
    dl = DataLoader(indexed(prefix), batch_size=4, cancel_token=token)
    with pytest.raises(exc.CancelledError, match="cancel"):
        iter(dl)
    stream = s3dlio._core.BatchStream(
        all_uris(prefix), list(range(N)), dl.options.to_dict(), dl.pool.to_dict(),
        dl.range_engine.to_dict(), None, None, token,
    )  # fmt: skip
    time.sleep(0.2)
    assert stream.stats() == (0, 0, 0)
    delivered = []
    try:
        delivered = list(stream)
    except exc.CancelledError:
        pass
    assert delivered == []
    stream.close()
    assert no_live_tasks(dl)


@pytest.mark.timeout(60)
def test_close_from_another_thread_while_next_is_blocked(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., Any]
) -> None:
    """While one thread is blocked in next() (the server stopped answering), another thread can
    ask the loader's live_tasks() and close() it: no error, the blocked next() ends promptly
    (without a batch), and no task is left alive."""
    ds = _blackholed_dataset(bucket, proxy, s3_config, n=20)
    proxy.set_mode("blackhole")
    dl = DataLoader(ds, batch_size=4)
    it = iter(dl)
    outcome: list[BaseException | None] = []

    def consume() -> None:
        try:
            next(it)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert wait_until(lambda: proxy.faults_injected >= 1, timeout=10)
        time.sleep(0.2)
        assert consumer.is_alive()
        assert dl.live_tasks() > 0
        dl.close()
        assert dl.live_tasks() == 0
    finally:
        dl.cancel_token.cancel()  # never leave the consumer blocked, even if close() failed
        consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], exc.S3dlioError | StopIteration), outcome
    assert no_live_tasks(dl)


def test_state_after_the_last_full_batch_resumes_at_the_next_epoch(file_prefix: str) -> None:
    """drop_last=True: a state taken after an epoch's last full batch (the iterator still alive)
    resumes at the start of the next epoch, not in the empty rest of the old one."""
    ds = indexed(file_prefix, 10)
    dl = DataLoader(ds, batch_size=4, drop_last=True, shuffle=True, seed=2)
    it = iter(dl)
    first = [next(it), next(it)]
    assert len(first) == 2
    state = dl.state_dict()
    assert (state["epoch"], state["samples_yielded"]) == (0, 8)
    resumed = DataLoader(indexed(file_prefix, 10), batch_size=4, drop_last=True, shuffle=True, seed=2)
    resumed.load_state_dict(state)
    assert flat(resumed) == epoch_indices(10, 2, 1, True)[:8]
