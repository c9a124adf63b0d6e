"""s3dlio.jax against the real jax (CPU) and the real local S3 server: batch shapes and dtypes,
``jax.device_put`` and jit with static shapes, per-epoch reshuffling, exact resume through
``get_state`` / ``set_state``, sharding across two real ``jax.distributed`` processes, and Ctrl-C
in a child process.

Every object encodes its own index (helpers.indexed_payload), so each delivered sample is checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest

from helpers import require

# A skip outside CI, a failure in CI (CI=true). The JAX runtime itself only ever starts in child
# processes (JAX_CHILD).
jax = require("jax")

import s3dlio  # noqa: E402
import s3dlio.jax as sjax  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from helpers import fresh_bucket, index_of, indexed_payload, wait_until, write_indexed  # noqa: E402
from s3dlio import exceptions as exc  # noqa: E402
from s3dlio.testing import LocalS3Server, free_port  # noqa: E402

N = 100  # objects in the shared dataset
SIZE = 64  # bytes per object
BS = 8  # 100 = 12 full batches of 8 + 4 left over


@pytest.fixture(scope="module")
def uris(s3_server: LocalS3Server) -> Iterator[list[str]]:
    """N objects in a fresh bucket, written once for the module."""
    with fresh_bucket("jax") as name:
        yield write_indexed(f"s3://{name}/", N, SIZE)


@pytest.fixture(autouse=True)
def _no_task_left() -> Iterator[None]:
    yield
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=5), f"{s3dlio.live_tasks()} tasks left"


# This process never starts a JAX backend (see JAX_CHILD below): loaders made here get an explicit
# process_index/process_count instead of asking jax.
ONE_PROCESS: dict[str, Any] = {"process_index": 0, "process_count": 1}


def make_loader(ds: s3dlio.ObjectDataset, batch_size: int, **kwargs: Any) -> sjax.JaxDataLoader:
    return sjax.JaxDataLoader(ds, batch_size, **{**ONE_PROCESS, **kwargs})


def make_iter(ds: s3dlio.ObjectDataset, batch_size: int, **kwargs: Any) -> sjax.JaxIterator:
    return sjax.make_iterator(ds, batch_size, **{**ONE_PROCESS, **kwargs})


def rows(batch: np.ndarray) -> list[int]:
    """Indices of a raw (batch, SIZE) uint8 batch, after checking every byte of every row."""
    out = []
    for row in batch:
        i = int.from_bytes(row[:8].tobytes(), "little")
        assert row.tobytes() == indexed_payload(i, SIZE), f"corrupt row {row[:16]}"
        out.append(i)
    return out


def features(buf: s3dlio.Buffer) -> np.ndarray:
    """A float32 feature vector derived from the object's index."""
    i = index_of(buf)
    return np.array([i, 2 * i, 3 * i], dtype=np.float32)


def as_dict(buf: s3dlio.Buffer) -> dict[str, Any]:
    return {"x": features(buf), "y": index_of(buf)}


class Pair(NamedTuple):
    x: np.ndarray
    y: int


def as_pair(buf: s3dlio.Buffer) -> Pair:
    return Pair(features(buf), index_of(buf))


def epoch_of(loader: Any) -> list[int]:
    """Indices of one epoch of an index_of loader, in delivery order."""
    return [int(i) for batch in loader for i in batch]


# -------------------------------------------------------------------------------------------------
# Shapes and dtypes
# -------------------------------------------------------------------------------------------------


def test_raw_batches_are_uint8_with_static_shapes(uris: list[str]) -> None:
    """Raw objects collate into writable (batch, size) uint8 numpy arrays; drop_last (the default)
    keeps every batch at batch_size, and the short tail is not delivered."""
    ds = s3dlio.ObjectDataset.from_uris(uris)
    with make_loader(ds, BS) as loader:
        assert loader.drop_last and len(loader) == N // BS
        batches = list(loader)
    assert len(batches) == N // BS
    for b in batches:
        assert type(b) is np.ndarray and b.dtype == np.uint8 and b.shape == (BS, SIZE)
        assert b.flags.writeable
    assert [i for b in batches for i in rows(b)] == list(range(N // BS * BS))


def test_drop_last_false_delivers_the_short_batch(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    with make_loader(ds, BS, drop_last=False) as loader:
        assert len(loader) == -(-N // BS)
        shapes = [b.shape for b in loader]
    assert shapes == [(BS,)] * (N // BS) + [(N % BS,)]


def test_float32_transform(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=features)
    with make_loader(ds, BS) as loader:
        b = next(iter(loader))
    assert type(b) is np.ndarray and b.dtype == np.float32 and b.shape == (BS, 3)
    np.testing.assert_array_equal(b[:, 0], np.arange(BS, dtype=np.float32))


def test_dict_and_named_tuple_samples_are_collated_per_field(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=as_dict)
    with make_loader(ds, BS) as loader:
        b = next(iter(loader))
    assert set(b) == {"x", "y"}
    assert b["x"].dtype == np.float32 and b["x"].shape == (BS, 3)
    assert b["y"].dtype == np.int64 and b["y"].tolist() == list(range(BS))

    ds = s3dlio.ObjectDataset.from_uris(uris, transform=as_pair)
    with make_loader(ds, BS) as loader:
        p = next(iter(loader))
    assert isinstance(p, Pair) and p.x.shape == (BS, 3) and p.y.tolist() == list(range(BS))


def test_numpy_collate_never_makes_torch_tensors() -> None:
    """Whether or not torch is installed, the default collate gives numpy arrays and keeps the
    structure; ragged raw objects stay a list of arrays."""
    out = sjax.numpy_collate([(np.ones(2, np.float32), 1.0, "a"), (np.zeros(2, np.float32), 2.0, "b")])
    assert isinstance(out, tuple) and type(out[0]) is np.ndarray and out[0].dtype == np.float32
    assert out[1].tolist() == [1.0, 2.0] and out[2] == ["a", "b"]
    nested = sjax.numpy_collate([{"k": [1, 2]}, {"k": [3, 4]}])
    assert [a.tolist() for a in nested["k"]] == [[1, 3], [2, 4]]


def test_ragged_raw_objects_give_a_list(s3_server: LocalS3Server) -> None:
    with fresh_bucket("jax") as name:
        uris = [f"s3://{name}/{i}.bin" for i in range(3)]
        for i, u in enumerate(uris):
            s3dlio.put(u, indexed_payload(i, 16 + 8 * i))
        with make_loader(s3dlio.ObjectDataset.from_uris(uris), 3) as loader:
            b = next(iter(loader))
    assert isinstance(b, list) and [a.shape for a in b] == [(16,), (24,), (32,)]
    assert all(a.dtype == np.uint8 for a in b)


# -------------------------------------------------------------------------------------------------
# Into jax, in a child process
# -------------------------------------------------------------------------------------------------

# Once a JAX backend exists in a process, every later os.fork() there warns that JAX is
# multithreaded (a RuntimeWarning, an error under this suite's filterwarnings), so the torch and
# fork tests that run after this module would fail. The JAX runtime therefore only ever starts in
# child processes: here, loaders get an explicit process_index/process_count (jax.process_index()
# would start the backend), and device_put, jit and the default sharding run in JAX_CHILD.
JAX_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    import s3dlio, s3dlio.jax
    from helpers import index_of

    bucket, n, bs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    uris = [f"s3://{bucket}/{i:05d}.bin" for i in range(n)]

    def features(buf):
        i = index_of(buf)
        return np.array([i, 2 * i, 3 * i], dtype=np.float32)

    def as_dict(buf):
        return {"x": features(buf), "y": index_of(buf)}

    report = {}
    with s3dlio.jax.JaxDataLoader(s3dlio.ObjectDataset.from_uris(uris), bs) as loader:
        report["shard"] = [loader.process_index, loader.process_count]  # from jax
        batch = next(iter(loader))
        on_device = jax.device_put(batch)
        report["raw"] = {
            "is_jax_array": isinstance(on_device, jax.Array),
            "dtype": str(on_device.dtype),
            "shape": list(on_device.shape),
            "equal": bool(np.array_equal(np.asarray(on_device), batch)),
        }
    equal, dtypes = [], set()
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=as_dict)
    with s3dlio.jax.JaxDataLoader(ds, bs, shuffle=True, seed=1) as loader:
        for batch in loader:
            on_device = jax.device_put(batch)
            dtypes.add((str(on_device["x"].dtype), tuple(on_device["x"].shape)))
            equal.append(
                np.array_equal(np.asarray(on_device["x"]), batch["x"])
                and np.array_equal(np.asarray(on_device["y"]), batch["y"])
            )
    report["dict"] = {"batches": len(equal), "all_equal": all(equal), "x": sorted(map(list, dtypes))}
    for drop_last in (True, False):
        traced = []

        @jax.jit
        def step(x):
            traced.append(x.shape)
            return (x * 2.0).sum()

        total = 0.0
        ds = s3dlio.ObjectDataset.from_uris(uris, transform=features)
        with s3dlio.jax.JaxDataLoader(ds, bs, drop_last=drop_last) as loader:
            for batch in loader:
                total += float(step(jax.device_put(batch)))
        report[f"jit_drop_last_{drop_last}"] = {"traces": len(traced), "total": total}
    report["live_tasks"] = s3dlio.live_tasks()
    print("REPORT " + json.dumps(report), flush=True)
    """
)


def run_children(script: str, argvs: list[list[str]], timeout: float = 120) -> list[dict[str, Any]]:
    """Run ``script`` once per argv, concurrently, with the JAX runtime on CPU; return each
    child's REPORT line (parsed), after checking that every child exited cleanly."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    children = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", script, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    reports = []
    try:
        for c in children:
            out, err = c.communicate(timeout=timeout)
            assert c.returncode == 0, f"rc={c.returncode} stdout={out[-2000:]!r} stderr={err[-4000:]!r}"
            lines = [ln for ln in out.splitlines() if ln.startswith("REPORT ")]
            assert len(lines) == 1, out
            reports.append(json.loads(lines[0].removeprefix("REPORT ")))
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    return reports


@pytest.mark.timeout(150)
def test_batches_in_a_jax_process(uris: list[str]) -> None:
    """In a process running JAX: the default sharding is jax's (0 of 1); jax.device_put of a raw
    batch and of a dict batch gives jax arrays equal to the numpy data, float32 kept; and a jitted
    step is traced once per epoch with drop_last=True (static shapes) but twice with
    drop_last=False (the short last batch)."""
    bucket = uris[0].removeprefix("s3://").split("/", 1)[0]
    (r,) = run_children(JAX_CHILD, [[bucket, str(N), str(BS)]])
    assert r["shard"] == [0, 1]
    assert r["raw"] == {"is_jax_array": True, "dtype": "uint8", "shape": [BS, SIZE], "equal": True}
    assert r["dict"] == {"batches": N // BS, "all_equal": True, "x": [["float32", [BS, 3]]]}
    full = N // BS * BS
    assert r["jit_drop_last_True"] == {"traces": 1, "total": 2.0 * 6 * sum(range(full))}
    assert r["jit_drop_last_False"] == {"traces": 2, "total": 2.0 * 6 * sum(range(N))}
    assert r["live_tasks"] == 0


# -------------------------------------------------------------------------------------------------
# Shuffling
# -------------------------------------------------------------------------------------------------


def test_every_epoch_is_a_new_permutation_and_set_epoch_reproduces_it(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    with make_loader(ds, BS, shuffle=True, seed=5, drop_last=False) as loader:
        e0, e1 = epoch_of(loader), epoch_of(loader)
        assert loader.epoch == 2
    assert sorted(e0) == sorted(e1) == list(range(N))
    assert e0 != e1 and e0 != list(range(N))
    with make_loader(ds, BS, shuffle=True, seed=5, drop_last=False) as again:
        again.set_epoch(1)
        assert epoch_of(again) == e1
        again.set_epoch(0)
        assert epoch_of(again) == e0
    with make_loader(ds, BS, shuffle=True, seed=6, drop_last=False) as other:
        assert epoch_of(other) != e0
    # The multi-epoch iterator walks the same epochs.
    with make_loader(ds, BS, shuffle=True, seed=5, drop_last=False) as loader:
        assert [int(i) for b in loader.iterator(num_epochs=2) for i in b] == e0 + e1


# -------------------------------------------------------------------------------------------------
# Exact resume
# -------------------------------------------------------------------------------------------------


def test_resume_mid_epoch_is_exact(uris: list[str]) -> None:
    """A state taken mid-epoch, saved as JSON and loaded into a new loader, yields exactly the
    batches the first loader had not yet yielded (no replay, no skip), then the same next epoch."""
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    first = make_loader(ds, BS, shuffle=True, seed=11)
    epoch_of(first)  # epoch 0
    it = iter(first)
    seen = [next(it).tolist() for _ in range(5)]
    saved = json.dumps(first.get_state())
    assert len(saved) < 400  # O(1): no index list in it
    rest = [b.tolist() for b in it]
    following = [b.tolist() for b in first]
    first.close()

    with make_loader(ds, BS, shuffle=True, seed=11) as resumed:
        resumed.set_state(json.loads(saved))
        assert resumed.epoch == 1
        assert [b.tolist() for b in resumed] == rest
        assert [b.tolist() for b in resumed] == following
    got = {i for b in seen + rest for i in b}
    assert len(got) == len(seen + rest) * BS  # no sample twice within the epoch


def test_resume_a_step_loop_across_epochs(uris: list[str]) -> None:
    """make_iterator's one iterator across epochs: a state taken after 17 steps (into epoch 1) and
    set on a new iterator continues with step 18, through to the end of the last epoch."""
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    with make_iter(ds, BS, num_epochs=3, shuffle=True, seed=2) as it:
        head = [next(it).tolist() for _ in range(17)]
        state = it.get_state()
        assert state["epoch"] == 1 and state["samples_yielded"] == 5 * BS
        tail = [b.tolist() for b in it]
    assert len(head) + len(tail) == 3 * (N // BS)
    with make_iter(ds, BS, num_epochs=3, shuffle=True, seed=2) as again:
        again.set_state(json.loads(json.dumps(state)))
        assert [b.tolist() for b in again] == tail
    # A state taken after the last full batch of an epoch (drop_last) continues with the next epoch.
    with make_iter(ds, BS, num_epochs=2, shuffle=True, seed=2) as it:
        for _ in range(N // BS):
            next(it)
        end_of_0 = it.get_state()
    with make_loader(ds, BS, shuffle=True, seed=2) as ref:
        ref.set_epoch(1)
        epoch1 = [b.tolist() for b in ref]
    with make_iter(ds, BS, num_epochs=2, shuffle=True, seed=2) as again:
        again.set_state(end_of_0)
        assert [b.tolist() for b in again] == epoch1


def test_iterator_set_state_rewinds_in_place(uris: list[str]) -> None:
    """Grain style: set_state on a live iterator makes its next batch the one after the state."""
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    with make_loader(ds, BS, shuffle=True, seed=4) as loader:
        it = iter(loader)
        next(it)
        state = it.get_state()
        expected = [next(it).tolist() for _ in range(3)]
        it.set_state(state)
        assert [next(it).tolist() for _ in range(3)] == expected
        assert len(list(it)) == N // BS - 4  # a one-epoch iterator ends with its epoch


def test_resume_with_another_process_count_is_refused(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris)
    with make_loader(ds, BS, process_index=0, process_count=1) as one:
        state = one.get_state()
    with (
        make_loader(ds, BS, process_index=1, process_count=2) as two,
        pytest.raises(exc.InvalidConfigError, match="world_size"),
    ):
        two.set_state(state)


# -------------------------------------------------------------------------------------------------
# Sharding
# -------------------------------------------------------------------------------------------------


def test_explicit_process_shards_partition_the_epoch(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    shares = []
    for p in range(3):
        with make_loader(
            ds, 4, shuffle=True, seed=9, drop_last=False, process_index=p, process_count=3
        ) as loader:
            assert (loader.process_index, loader.process_count) == (p, 3)
            shares.append(epoch_of(loader))
    assert {len(s) for s in shares} == {34}  # ceil(100 / 3), padded
    order = [s[k] for k in range(34) for s in shares]  # the interleaved epoch permutation
    assert sorted(order[:N]) == list(range(N)) and order[N:] == order[: 3 * 34 - N]
    with make_loader(ds, 4, shuffle=True, seed=9, drop_last=False) as whole:
        assert (whole.process_index, whole.process_count) == (0, 1)
        assert epoch_of(whole) == order[:N]


# Each child joins a 2-process jax.distributed job on CPU, reads one epoch with the default
# sharding (jax.process_index() / jax.process_count()), assembles its first batch into a global
# jax.Array sharded over both processes' devices and sums it with jit (a cross-process
# computation), and prints what it got as one JSON line.
DIST_CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import s3dlio, s3dlio.jax
    from helpers import index_of

    port, pid, bucket, n, bs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid, initialization_timeout=60
    )
    uris = [f"s3://{bucket}/{i:05d}.bin" for i in range(n)]
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
    with s3dlio.jax.JaxDataLoader(ds, bs, shuffle=True, seed=13, drop_last=False) as loader:
        it = iter(loader)
        first = next(it)
        state = loader.get_state()
        batches = [first] + list(it)
        report = {
            "process_index": loader.process_index,
            "process_count": loader.process_count,
            "len": len(loader),
            "indices": [int(i) for b in batches for i in b],
            "state_after_one": state,
        }
    mesh = Mesh(np.array(jax.devices()), ("data",))
    glob = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("data")), first)
    report["global_shape"] = list(glob.shape)
    report["global_sum"] = int(jax.jit(lambda x: x.sum())(glob))
    report["live_tasks"] = s3dlio.live_tasks()
    print("REPORT " + json.dumps(report), flush=True)
    jax.distributed.shutdown()
    """
)


@pytest.mark.timeout(150)
def test_sharding_across_two_jax_processes(s3_server: LocalS3Server) -> None:
    """Two real processes joined by jax.distributed.initialize (CPU, gloo): equal shares, disjoint
    except the padding, covering the dataset, in the epoch's one permutation, which a single
    process with the same seed reproduces. Every process's state is the same at the same step."""
    n, bs = 45, 4  # 45 = 2 x 23 - 1: one padded sample
    with fresh_bucket("jaxdist") as name:
        uris = write_indexed(f"s3://{name}/", n, SIZE)
        port = str(free_port())
        reports = run_children(DIST_CHILD, [[port, str(i), name, str(n), str(bs)] for i in range(2)])
        ds = s3dlio.ObjectDataset.from_uris(uris, transform=index_of)
        with make_loader(ds, bs, shuffle=True, seed=13, drop_last=False) as single:
            whole = epoch_of(single)

    assert sorted(r["process_index"] for r in reports) == [0, 1]
    reports.sort(key=lambda r: r["process_index"])
    assert all(r["process_count"] == 2 for r in reports)
    s0, s1 = (r["indices"] for r in reports)
    assert len(s0) == len(s1) == 23 and reports[0]["len"] == reports[1]["len"] == 6
    padding = 2 * 23 - n
    order = [s[k] for k in range(23) for s in (s0, s1)]  # rank r took order[r::2]
    assert sorted(order[:n]) == list(range(n))  # together: the whole dataset, once
    assert order[n:] == order[:padding]  # plus the padding, taken from the start
    assert set(s0) & set(s1) == set(order[:padding])  # disjoint except the padding
    assert order[:n] == whole  # the same permutation as one process with the same seed
    assert reports[0]["state_after_one"] == reports[1]["state_after_one"]
    assert all(r["global_shape"] == [2 * bs] for r in reports)
    assert {r["global_sum"] for r in reports} == {sum(s0[:bs]) + sum(s1[:bs])}
    assert all(r["live_tasks"] == 0 for r in reports)


# -------------------------------------------------------------------------------------------------
# Shutdown and Ctrl-C
# -------------------------------------------------------------------------------------------------


def test_close_and_break_release_every_task(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris)
    loader = make_loader(ds, BS, shuffle=True)
    for _ in loader:
        break  # an early break ends that epoch only
    assert wait_until(lambda: loader.live_tasks() == 0)
    assert len(list(loader)) == N // BS and loader.epoch == 2
    with loader:
        next(iter(loader))
    assert loader.live_tasks() == 0 and s3dlio.live_tasks() == 0
    with pytest.raises(exc.InvalidConfigError, match="closed"):
        iter(loader).__next__()
    it = make_iter(ds, BS)
    next(it)
    it.close()
    assert it.loader.live_tasks() == 0
    with pytest.raises(exc.InvalidConfigError, match="closed"):
        next(iter(it.loader))


def test_bad_arguments_are_refused(uris: list[str]) -> None:
    ds = s3dlio.ObjectDataset.from_uris(uris)
    with pytest.raises(exc.InvalidConfigError):
        make_loader(ds, BS, process_index=2, process_count=2)
    with pytest.raises(exc.InvalidConfigError, match="num_epochs"):
        make_iter(ds, BS, num_epochs=-1)
    with pytest.raises(exc.InvalidConfigError):
        make_loader(ds, 0)


def test_an_endless_iterator_over_empty_epochs_ends(uris: list[str]) -> None:
    """Fewer samples than one batch with drop_last: every epoch is empty, so an iterator with
    num_epochs=None ends at once instead of spinning forever."""
    ds = s3dlio.ObjectDataset.from_uris(uris)
    with make_iter(ds, N + 1) as it:
        assert len(it.loader) == 0 and list(it) == []


# The child iterates the JAX adapter over s3://<bucket>/NNNNN.bin through the proxy
# (AWS_ENDPOINT_URL), as tests/test_loader_ctrl_c.py's child does with s3dlio.DataLoader.
CTRL_C_CHILD = textwrap.dedent(
    """
    import sys, time
    import jax
    import s3dlio, s3dlio.jax
    bucket, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uris = [f"s3://{bucket}/{i:05d}.bin" for i in range(n)]
    ds = s3dlio.ObjectDataset.from_uris(uris)
    if how == "loader":
        loader = s3dlio.jax.JaxDataLoader(ds, 4, shuffle=True)
        it = iter(loader)
    else:
        it = s3dlio.jax.make_iterator(ds, 4, shuffle=True)
        loader = it.loader
    print("STARTED", flush=True)
    try:
        for batch in it:
            jax.device_put(batch)
            print("BATCH x", flush=True)
        print("RETURNED x", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        caught = time.monotonic()
        print(f"INTERRUPTED {caught!r}", flush=True)
    except BaseException as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(4)
    deadline = time.monotonic() + 2.0
    while (s3dlio.live_tasks() or loader.live_tasks()) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"LIVE {s3dlio.live_tasks()}", flush=True)
    print(f"LOADER_LIVE {loader.live_tasks()}", flush=True)
    print(f"CANCELLED {loader.loader.cancel_token.cancelled}", flush=True)
    """
)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["loader", "make_iterator"])
def test_sigint_while_the_server_is_silent(bucket: str, proxy: FaultProxy, how: str) -> None:
    """A child iterating the JAX adapter, whose requests hang (proxy in blackhole mode), gets a
    real SIGINT: KeyboardInterrupt within 0.5 s, the loader's token cancelled, no s3dlio task
    left alive, and a clean exit."""
    write_indexed(f"s3://{bucket}/", 200, SIZE)
    proxy.set_mode("blackhole")
    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint, JAX_PLATFORMS="cpu")
    env.pop("AWS_ENDPOINT_URL_S3", None)
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", CTRL_C_CHILD, bucket, "200", how],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        assert line.strip() == "STARTED", line + child.stderr.read()
        assert wait_until(lambda: proxy.faults_injected >= 1, timeout=20), "no request ever stalled"
        time.sleep(0.3)
        assert child.poll() is None, "child finished before it could be interrupted"
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = out.splitlines()
    report = dict(ln.split(" ", 1) for ln in lines if " " in ln and not ln.startswith("BATCH"))
    assert child.returncode == 0, f"rc={child.returncode} stdout={out[-2000:]!r} stderr={err[-3000:]!r}"
    assert "INTERRUPTED" in report, out
    assert not any(ln.startswith("BATCH") for ln in lines), out
    latency = float(report["INTERRUPTED"]) - sent
    assert latency < 0.5, report
    assert report["LIVE"] == "0" and report["LOADER_LIVE"] == "0", report
    assert report["CANCELLED"] == "True", report


def test_sharded_npz_dataset_through_jax(bucket: str) -> None:
    """A ShardedDataset of DLIO-style .npz files (s3dlio.gen) through JaxDataLoader: numpy
    batches of the arrays, every file once per epoch, the same order for the same seed."""
    import s3dlio.gen as gen
    from s3dlio.sharded import ShardedDataset

    gen.generate(f"s3://{bucket}/npz", count=24, size=32, format="npz", seed=6)
    ds = ShardedDataset.from_prefix(f"s3://{bucket}/npz/train", format="npz")
    labels = sorted(int(x) for x in gen.sample_labels(24, seed=6))
    with make_loader(ds, 8, shuffle=True, seed=1) as loader:
        batches = list(loader)
        again = list(loader)
    assert [b["x"].shape for b in batches] == [(8, 32)] * 3
    assert isinstance(batches[0]["y"], np.ndarray)
    assert sorted(int(y) for b in batches for y in b["y"]) == labels
    assert sorted(int(y) for b in again for y in b["y"]) == labels
    assert [int(y) for b in batches for y in b["y"]] != [int(y) for b in again for y in b["y"]]


def test_this_process_never_started_a_jax_backend() -> None:
    """Guards the rule above (JAX_CHILD): a JAX backend in the pytest process would turn every
    later fork in the suite into an error."""
    xla_bridge = require("jax._src.xla_bridge")
    assert not getattr(xla_bridge, "_backends", {}), "a test started a JAX backend in the pytest process"
