"""TensorFlow: s3dlio.tf's tf.data.Dataset against the real local S3 server. Output signatures
(raw objects, transforms, given and inferred), tf.data transformations (map with AUTOTUNE,
prefetch), a Keras model.fit whose loss goes down, per-epoch reshuffling, sharding by rank across
processes, and Ctrl-C in a child process (a manual loop and model.fit, with the server silent
behind the fault proxy): KeyboardInterrupt reaches the main thread promptly and no s3dlio task is
left running.

Every object encodes its own index (helpers.indexed_payload), so each delivered row is checked.
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
from typing import Any

import numpy as np
import pytest

from helpers import require

tf = require("tensorflow")  # a skip outside CI, a failure in CI (CI=true)

import s3dlio  # noqa: E402
import s3dlio.tf as s3tf  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from helpers import fresh_bucket, index_of, indexed_payload, wait_until, write_indexed  # noqa: E402

N = 120
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _restore_signal_state() -> Iterator[None]:
    """s3dlio.tf installs its SIGINT handler and wakeup fd in this process: put the test
    session's back afterwards."""
    handler = signal.getsignal(signal.SIGINT)
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    yield
    signal.signal(signal.SIGINT, handler)
    signal.set_wakeup_fd(fd)


@pytest.fixture(scope="module")
def data(s3_server: object) -> Iterator[str]:
    """``s3://<bucket>/`` holding N indexed objects of SIZE bytes (written once for the module)."""
    with fresh_bucket("tf") as name:
        write_indexed(f"s3://{name}/", N, SIZE)
        yield f"s3://{name}/"


def rows(batch: Any) -> list[int]:
    """Indices of a raw (batch, SIZE) uint8 batch, each row checked byte for byte."""
    out = []
    for row in np.asarray(batch):
        raw = row.tobytes()
        i = int.from_bytes(raw[:8], "little")
        assert raw == indexed_payload(i, len(raw)), f"corrupt row {raw[:16]!r}"
        out.append(i)
    return out


def epoch(ds: Any) -> list[int]:
    return [i for b in ds for i in rows(b)]


def features(buf: s3dlio.Buffer) -> tuple[np.ndarray, np.int64]:
    """(float32 features of shape (4,), index) from a raw object: a transform."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    return raw[8:24].astype(np.float32).reshape(4, 4).sum(axis=1), np.int64(index_of(buf))


# -------------------------------------------------------------------------------------------------
# Signatures, shapes, dtypes
# -------------------------------------------------------------------------------------------------


def test_raw_objects_with_listed_sizes(data: str) -> None:
    """Raw objects of one listed size: uint8 (batch, size), signature known without reading, the
    last batch short, every object once in order."""
    ds = s3tf.make_dataset(s3dlio.ObjectDataset.from_prefix(data), batch_size=32)
    assert ds.element_spec == tf.TensorSpec((None, SIZE), tf.uint8)
    assert len(ds) == 4  # ceil(120 / 32), so Keras knows the steps per epoch
    batches = list(ds)
    assert [tuple(b.shape) for b in batches] == [(32, SIZE)] * 3 + [(N - 96, SIZE)]
    assert all(b.dtype == tf.uint8 for b in batches)
    assert [i for b in batches for i in rows(b)] == list(range(N))


def test_raw_objects_without_sizes_peek_one_batch(data: str) -> None:
    """URIs without sizes: the signature is inferred from one peeked batch, which is not lost
    from the epoch; drop_last drops the short batch."""
    uris = [f"{data}{i:05d}.bin" for i in range(N)]
    ds = s3tf.make_dataset(s3dlio.ObjectDataset.from_uris(uris), batch_size=50, drop_last=True)
    assert ds.element_spec == tf.TensorSpec((None, SIZE), tf.uint8)
    assert epoch(ds) == list(range(100))


def test_objects_of_different_sizes_are_strings(bucket: str) -> None:
    """Raw objects of different sizes: one tf.string per object (e.g. for tf.io.decode_*)."""
    for i in range(10):
        s3dlio.put(f"s3://{bucket}/{i:02d}", indexed_payload(i, 16 + i))
    ds = s3tf.make_dataset(s3dlio.ObjectDataset.from_prefix(f"s3://{bucket}/"), batch_size=4)
    assert ds.element_spec == tf.TensorSpec((None,), tf.string)
    got = [bytes(x) for b in ds for x in b.numpy()]
    assert got == [indexed_payload(i, 16 + i) for i in range(10)]


def test_transform_output_signature(data: str) -> None:
    """A transform returning (features, index): a tuple of float32 (batch, 4) and int64 (batch,)
    tensors, inferred from one peeked batch and identical to an explicit signature."""
    ds = s3tf.make_dataset(s3dlio.ObjectDataset.from_prefix(data, transform=features), batch_size=16)
    expected = (tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.int64))
    assert ds.element_spec == expected
    x, y = next(iter(ds))
    assert x.shape == (16, 4) and x.dtype == tf.float32
    assert y.numpy().tolist() == list(range(16))

    given = s3tf.make_dataset(
        s3dlio.ObjectDataset.from_prefix(data, transform=features), batch_size=16, output_signature=expected
    )
    assert given.element_spec == expected
    assert [int(i) for _, y in given for i in y] == list(range(N))


def test_dict_samples_and_collate_fn(data: str) -> None:
    """Dict samples collate per key; a custom collate_fn is used as given."""
    ds = s3dlio.ObjectDataset.from_prefix(data, transform=lambda b: {"i": index_of(b), "n": len(b)})
    out = s3tf.make_dataset(ds, batch_size=40)
    assert out.element_spec == {"i": tf.TensorSpec((None,), tf.int64), "n": tf.TensorSpec((None,), tf.int64)}
    assert [int(i) for b in out for i in b["i"]] == list(range(N))

    def total(samples: list[Any]) -> np.ndarray:
        return np.asarray([sum(s["i"] for s in samples)], dtype=np.int32)

    sums = s3tf.make_dataset(ds, batch_size=40, collate_fn=total)
    assert sums.element_spec == tf.TensorSpec((None,), tf.int32)
    assert [int(b[0]) for b in sums] == [sum(range(k, k + 40)) for k in (0, 40, 80)]


def test_from_loader_uses_numpy_collation(data: str) -> None:
    """from_loader over a DataLoader with the default collate_fn yields numpy-collated batches
    (never torch tensors), and the loader stays the handle: state_dict, live_tasks, close."""
    loader = s3dlio.DataLoader(s3dlio.ObjectDataset.from_prefix(data), batch_size=25, shuffle=True, seed=4)
    ds = s3tf.from_loader(loader)
    assert loader.collate_fn is not s3dlio.data.default_collate  # torch's-style default replaced
    assert ds.element_spec == tf.TensorSpec((None, SIZE), tf.uint8)
    first = epoch(ds)
    assert sorted(first) == list(range(N))
    assert loader.epoch == 1  # the next iteration is the loader's next epoch
    second = epoch(ds)
    assert sorted(second) == list(range(N)) and second != first
    assert loader.live_tasks() == 0
    loader.close()
    assert s3dlio.live_tasks() == 0


def test_empty_dataset_needs_a_signature() -> None:
    with pytest.raises(s3dlio.exceptions.InvalidConfigError, match="output_signature"):
        s3tf.make_dataset(s3dlio.ObjectDataset.from_uris([]), batch_size=4, collate_fn=lambda s: s)


# -------------------------------------------------------------------------------------------------
# tf.data transformations, epochs, early stop
# -------------------------------------------------------------------------------------------------


def test_map_autotune_and_prefetch(data: str) -> None:
    """map(num_parallel_calls=AUTOTUNE) + prefetch(AUTOTUNE) over the batches, twice (two epochs)."""

    def to_float(x: Any) -> Any:
        return tf.cast(x[:, :8], tf.float32) / 255.0, tf.cast(x[:, 0], tf.int32)

    base = s3tf.make_dataset(s3dlio.ObjectDataset.from_prefix(data), batch_size=16, shuffle=True, seed=1)
    ds = base.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    for _ in range(2):
        labels = []
        for x, y in ds:
            assert x.dtype == tf.float32 and x.shape[1] == 8
            labels.extend(int(v) for v in y)
        assert sorted(labels) == sorted(i % 256 for i in range(N))

    # unbatch / rebatch composes too.
    again = base.unbatch().batch(7)
    assert sorted(i for b in again for i in rows(b)) == list(range(N))


def test_each_iteration_is_a_new_epoch(data: str) -> None:
    """shuffle=True: every iteration is a permutation of the dataset, a different one each epoch,
    and the same sequence of permutations for the same seed."""
    make = lambda seed: s3tf.make_dataset(  # noqa: E731
        s3dlio.ObjectDataset.from_prefix(data), batch_size=32, shuffle=True, seed=seed
    )
    ds = make(7)
    epochs = [epoch(ds) for _ in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(N))
    assert len({tuple(e) for e in epochs}) == 3
    assert epoch(make(7)) == epochs[0]
    assert epoch(make(8)) != epochs[0]


def test_early_stop_leaves_no_tasks(data: str) -> None:
    """take(1) ends the iteration after one batch: the epoch's tasks are stopped, and the next
    iteration is the next epoch."""
    ds = s3tf.make_dataset(s3dlio.ObjectDataset.from_prefix(data), batch_size=8)
    assert len(list(ds.take(1))) == 1
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=5)
    assert sorted(epoch(ds)) == list(range(N))


@pytest.mark.parametrize("on_error", ["raise", "continue"])
def test_a_failed_object(data: str, proxy: FaultProxy, s3_config: Any, on_error: str) -> None:
    """An object the server refuses (HTTP 500 through the proxy, no retries): with
    on_error="raise" the epoch ends with a TensorFlow error naming the URI; with "continue" its
    batch is skipped and every other batch arrives."""
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=1)
    ds = s3dlio.ObjectDataset.from_prefix(data, config=cfg)
    out = s3tf.make_dataset(ds, batch_size=10, on_error=on_error)
    proxy.set_mode("http500", match=r"/00015\.bin[? ]")
    if on_error == "raise":
        with pytest.raises(tf.errors.OpError, match=r"00015\.bin"):
            epoch(out)
    else:
        assert epoch(out) == [i for i in range(N) if not 10 <= i < 20]
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=5)


# -------------------------------------------------------------------------------------------------
# Keras
# -------------------------------------------------------------------------------------------------


def regression(buf: s3dlio.Buffer) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from an object of 5 float32s: 4 features and the target."""
    v = np.frombuffer(buf, dtype=np.float32)
    return v[:4], v[4:]


@pytest.mark.timeout(180)
def test_keras_fit_loss_decreases(bucket: str) -> None:
    """A tiny Keras model trained with model.fit on 512 objects stored on the local S3 server:
    the loss goes down, one shuffled epoch per Keras epoch."""
    keras = require("keras")
    rng = np.random.default_rng(0)
    w = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32)
    x = rng.normal(size=(512, 4)).astype(np.float32)
    y = (x @ w + 0.25).astype(np.float32)[:, None]
    objects = np.concatenate([x, y], axis=1)
    for i, row in enumerate(objects):
        s3dlio.put(f"s3://{bucket}/{i:04d}.f32", row.tobytes())

    ds = s3dlio.ObjectDataset.from_prefix(f"s3://{bucket}/", transform=regression)
    train = s3tf.make_dataset(ds, batch_size=32, shuffle=True, num_workers=2).prefetch(tf.data.AUTOTUNE)
    assert train.element_spec == (tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None, 1), tf.float32))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(train, epochs=4, verbose=0, shuffle=False)  # s3dlio shuffles
    losses = history.history["loss"]
    assert losses[-1] < 0.1 * losses[0], losses
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=5)


# -------------------------------------------------------------------------------------------------
# Exact resume: batches reported consumed, however far tf.data prefetched
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_order", [True, False])
def test_manual_loop_resumes_after_exactly_the_consumed_batches(data: str, in_order: bool) -> None:
    """A manual loop over map + a deep prefetch reports each step with s3tf.consumed; the state
    taken after 1 epoch and 5 batches (tf.data has pulled batches well past that) resumes a new
    dataset with exactly the rest of that shuffled epoch, then the next epoch in full."""
    ds = s3dlio.ObjectDataset.from_prefix(data)
    kw: dict[str, Any] = {"batch_size": 8, "shuffle": True, "seed": 5, "in_order": in_order}
    train = s3tf.make_dataset(ds, **kw)
    pipe = train.map(lambda x: x, num_parallel_calls=tf.data.AUTOTUNE).prefetch(16)
    seen = epoch(pipe)
    assert sorted(seen) == list(range(N))
    for _ in range(N // 8):  # the whole first epoch was trained on
        s3tf.consumed(train)
    trained = []
    it = iter(pipe)
    for _ in range(5):
        trained += rows(next(it))
        s3tf.consumed(train)
    time.sleep(0.3)  # let tf.data's prefetch run ahead of the training step
    state = s3tf.state_dict(train)
    assert state["epoch"] == 1
    assert state["samples_yielded"] + len(state["yielded_beyond"]) == 40
    del it

    resumed = s3tf.make_dataset(ds, state=state, **kw)
    rest = epoch(resumed)
    assert sorted(trained + rest) == list(range(N)) and not set(trained) & set(rest)
    following = epoch(resumed)
    if in_order:
        assert trained + rest == s3dlio._core.epoch_indices(N, 5, 1, True)
        assert following == s3dlio._core.epoch_indices(N, 5, 2, True)
    else:
        assert sorted(following) == list(range(N))


def test_state_without_reports_is_refused(data: str) -> None:
    """Iterating without reporting consumed batches leaves the position unknown: state_dict says
    so instead of guessing. A dataset not made by s3dlio.tf is refused by name."""
    train = s3tf.make_dataset(s3dlio.ObjectDataset.from_prefix(data), batch_size=8)
    assert s3tf.state_dict(train)["samples_yielded"] == 0  # nothing iterated yet: the start
    next(iter(train.prefetch(4)))
    with pytest.raises(s3dlio.exceptions.InvalidConfigError, match="StateCallback"):
        s3tf.state_dict(train)
    with pytest.raises(s3dlio.exceptions.InvalidConfigError, match="not a dataset returned by"):
        s3tf.consumed(train.prefetch(2))
    with pytest.raises(s3dlio.exceptions.InvalidConfigError, match=">= 0"):
        s3tf.consumed(train, -1)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("steps_per_execution", [1, 3])
def test_keras_fit_resumes_after_exactly_the_trained_batches(data: str, steps_per_execution: int) -> None:
    """model.fit with StateCallback stops (stop_training) 6 steps into its second epoch of 20
    batches (with steps_per_execution=3 Keras reports the short last execution of epoch 0 as 3
    steps; StateCallback counts only the 2 batches that existed); the callback's state resumes a new dataset with exactly the
    samples of that epoch the model did not train on, although tf.data had prefetched further."""
    keras = require("keras")
    ds = s3dlio.ObjectDataset.from_prefix(data, transform=lambda b: np.int64(index_of(b)))
    kw: dict[str, Any] = {"batch_size": 6, "shuffle": True, "seed": 9, "num_workers": 2}
    train = s3tf.make_dataset(ds, **kw)
    steps = 0

    class Stop(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.begin = batch

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            nonlocal steps
            steps += batch - self.begin + 1
            if steps >= 26:
                self.model.stop_training = True

    class Model(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = keras.layers.Dense(1)

        def train_step(self, x: Any) -> dict[str, Any]:
            self.w(tf.cast(x[:, None], tf.float32))
            return {"n": tf.shape(x)[0]}

    model = Model()
    model.compile(optimizer="sgd", steps_per_execution=steps_per_execution)
    progress = s3tf.StateCallback(train)
    model.fit(train.prefetch(8), epochs=3, verbose=0, shuffle=False, callbacks=[progress, Stop()])
    state = progress.state_dict()
    assert state["epoch"] == 1
    trained = state["samples_yielded"] + len(state["yielded_beyond"])
    assert trained == 6 * 6
    rest = epoch_of(s3tf.make_dataset(ds, state=state, **kw))
    assert rest == s3dlio._core.epoch_indices(N, 9, 1, True)[trained:]


def epoch_of(ds: Any) -> list[int]:
    return [int(v) for b in ds for v in np.asarray(b)]


# -------------------------------------------------------------------------------------------------
# Sharding across processes
# -------------------------------------------------------------------------------------------------

SHARD_CHILD = textwrap.dedent(
    """
    import json, sys
    import s3dlio, s3dlio.tf
    prefix, rank, world, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ds = s3dlio.tf.make_dataset(
        s3dlio.ObjectDataset.from_prefix(prefix), batch_size=8, shuffle=True, seed=11,
        rank=rank, world_size=world,
    )
    out = [[int.from_bytes(bytes(r[:8]), "little") for b in ds for r in b.numpy()] for _ in range(epochs)]
    print("RESULT " + json.dumps(out), flush=True)
    """
)


@pytest.mark.timeout(180)
def test_sharding_across_processes(data: str) -> None:
    """Three processes, rank=0..2 of world_size=3: per epoch, their shares are disjoint, cover the
    dataset, and interleave one permutation (order[rank::3]); the permutation changes per epoch."""
    world, epochs = 3, 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", SHARD_CHILD, data, str(r), str(world), str(epochs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    shares = []
    for p in procs:
        out, err = p.communicate(timeout=150)
        assert p.returncode == 0, err[-3000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        shares.append(json.loads(line[len("RESULT ") :]))
    orders = []
    for e in range(epochs):
        per_rank = [shares[r][e] for r in range(world)]
        assert all(len(s) == N // world for s in per_rank)
        assert sorted(i for s in per_rank for i in s) == list(range(N))
        order = [per_rank[k % world][k // world] for k in range(N)]
        assert order == s3dlio._core.epoch_indices(N, 11, e, True)
        orders.append(order)
    assert orders[0] != orders[1]


# -------------------------------------------------------------------------------------------------
# Ctrl-C in a child process
# -------------------------------------------------------------------------------------------------

# The child reads s3://<bucket>/NNNNN.bin through the proxy (AWS_ENDPOINT_URL). It prints STARTED,
# then BATCH for each batch; on SIGINT, the monotonic time KeyboardInterrupt reached the main
# thread, the live task counts once they settle, whether the loader's token is cancelled. In
# "loop" mode it then waits for a line on stdin (the parent has put the proxy back in pass mode)
# and iterates the same tf.data.Dataset again: AGAIN <samples>.
CTRL_C_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import s3dlio, s3dlio.tf
    import tensorflow as tf
    bucket, n, mode, api = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    uris = [f"s3://{bucket}/{i:05d}.bin" for i in range(n)]
    sizes = [64] * n  # known sizes: the signature needs no read, nothing is read before the loop

    def regression(buf):
        v = np.frombuffer(buf, dtype=np.uint8).astype(np.float32)
        return v[:4], v[4:5]

    loader = None
    if mode == "loop":
        ds = s3dlio.ObjectDataset.from_uris(uris, sizes)
        if api == "from_loader":
            loader = s3dlio.DataLoader(ds, batch_size=4)
            pipe = s3dlio.tf.from_loader(loader)
        else:
            pipe = s3dlio.tf.make_dataset(ds, batch_size=4)
        pipe = pipe.map(lambda x: tf.cast(x, tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
        pipe = pipe.prefetch(tf.data.AUTOTUNE)
    else:
        import keras
        ds = s3dlio.ObjectDataset.from_uris(uris, sizes, transform=regression)
        sig = (tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None, 1), tf.float32))
        pipe = s3dlio.tf.make_dataset(ds, batch_size=4, output_signature=sig).prefetch(2)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")

        class Report(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                print("BATCH x", flush=True)

    print("STARTED", flush=True)
    try:
        if mode == "loop":
            for _ in pipe:
                print("BATCH x", flush=True)
        else:
            model.fit(pipe, epochs=50, verbose=0, shuffle=False, callbacks=[Report()])
        print("RETURNED x", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        caught = time.monotonic()
        print(f"INTERRUPTED {caught!r}", flush=True)
    except BaseException as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(4)
    deadline = time.monotonic() + 2.0
    while s3dlio.live_tasks() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"LIVE {s3dlio.live_tasks()} {time.monotonic() - caught:.3f}", flush=True)
    if loader is not None:
        print(f"CANCELLED {loader.cancel_token.cancelled}", flush=True)
        print(f"LOADER_LIVE {loader.live_tasks()}", flush=True)
    if mode == "loop" and api == "make_dataset":
        sys.stdin.readline()
        print(f"AGAIN {sum(int(b.shape[0]) for b in pipe)}", flush=True)
    print("DONE x", flush=True)
    """
)


def run_and_interrupt(
    proxy: FaultProxy, bucket: str, n: int, mode: str, api: str, *, stall_after_batch: bool
) -> tuple[dict[str, str], int]:
    """Run CTRL_C_CHILD; blackhole the proxy (from the start, or after the first batch), wait until
    a request hangs in it, give the child 0.5 s more, SIGINT it; return its report and batches."""
    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    if not stall_after_batch:
        proxy.set_mode("blackhole")
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", CTRL_C_CHILD, bucket, str(n), mode, api],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line.strip() == "STARTED", line + child.stderr.read()[-3000:]
        if stall_after_batch:
            line = child.stdout.readline()
            assert line.startswith("BATCH"), line + child.stderr.read()[-3000:]
            faults = proxy.faults_injected
            proxy.set_mode("blackhole")
            assert wait_until(lambda: proxy.faults_injected > faults, timeout=60), "no request stalled"
        else:
            assert wait_until(lambda: proxy.faults_injected >= 1, timeout=60), "no request ever stalled"
        time.sleep(0.5)
        assert child.poll() is None, "child finished before it could be interrupted"
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGINT)
        if mode == "loop" and api == "make_dataset":
            lines = []
            while not any(ln.startswith("LIVE") for ln in lines):
                ln = child.stdout.readline()
                assert ln, "".join(lines) + child.stderr.read()[-3000:]
                lines.append(ln)
            proxy.set_mode("pass")
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=60)
            out = "".join(lines) + out
        else:
            out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = out.splitlines()
    report = dict(ln.split(" ", 1) for ln in lines if " " in ln and not ln.startswith("BATCH"))
    assert child.returncode == 0, f"rc={child.returncode} stdout={out[-2000:]!r} stderr={err[-3000:]!r}"
    assert "INTERRUPTED" in report and "DONE" in report, out
    report["latency"] = f"{float(report['INTERRUPTED']) - sent:.3f}"
    print(f"{mode}/{api}: KeyboardInterrupt {report['latency']} s after SIGINT; live tasks {report['LIVE']}")
    return report, sum(ln.startswith("BATCH") for ln in lines)


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("api", ["make_dataset", "from_loader"])
def test_ctrl_c_in_a_manual_loop_while_the_server_is_silent(bucket: str, proxy: FaultProxy, api: str) -> None:
    """A child iterating the tf.data pipeline (map + prefetch) waits inside TensorFlow for a batch
    the silent server never sends; SIGINT raises KeyboardInterrupt in its main thread within
    0.5 s, the loader's token is cancelled, no s3dlio task is left, and the child exits. With
    make_dataset, iterating the dataset again afterwards reads a whole new epoch."""
    n = 40
    write_indexed(f"s3://{bucket}/", n, SIZE)
    report, batches = run_and_interrupt(proxy, bucket, n, "loop", api, stall_after_batch=False)
    assert batches == 0, report
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"].split()[0] == "0", report
    if api == "from_loader":
        assert report["CANCELLED"] == "True" and report["LOADER_LIVE"] == "0", report
    else:
        assert report["AGAIN"] == str(n), report


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_ctrl_c_during_model_fit(bucket: str, proxy: FaultProxy) -> None:
    """model.fit trains on batches from the server until the proxy goes silent; SIGINT then
    raises KeyboardInterrupt out of model.fit within 0.5 s, no s3dlio task is left running, and
    the child exits without hanging."""
    n = 400
    write_indexed(f"s3://{bucket}/", n, SIZE)
    report, batches = run_and_interrupt(proxy, bucket, n, "fit", "make_dataset", stall_after_batch=True)
    assert 1 <= batches < 50 * n // 4, report
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"].split()[0] == "0", report


def test_generated_tfrecords_and_encode_example_match_tensorflow(tmp_path: Any) -> None:
    """s3dlio.gen's tfrecord shards read with tf.data.TFRecordDataset + tf.io.parse_single_example
    give the data and labels generation says, and each record is what decode_example reads; and
    encode_example's bytes parse with tf.train.Example.FromString into what TensorFlow's own
    serialization of the same features parses into."""
    import s3dlio.gen as gen
    from s3dlio.formats.example import decode_example, encode_example

    r = gen.generate(
        f"file://{tmp_path}/tf", count=11, size=(1, 5000), format="tfrecord", samples_per_shard=4, seed=8
    )
    sizes, labels = gen.sample_sizes((1, 5000), 11, seed=8), gen.sample_labels(11, seed=8)
    spec = {"data": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    paths = [u[len("file://") :] for u in r.files]
    raw = [bytes(x.numpy()) for x in tf.data.TFRecordDataset(paths)]
    assert len(raw) == 11
    for i, rec in enumerate(raw):
        parsed = tf.io.parse_single_example(rec, spec)
        data = gen.sample_data(i, int(sizes[i]), seed=8)
        assert parsed["data"].numpy() == data and int(parsed["label"].numpy()) == labels[i]
        ours = decode_example(rec)
        assert ours["data"] == [data] and ours["label"].tolist() == [labels[i]]  # type: ignore[union-attr]

    features: dict[str, Any] = {
        "data": b"\x00\xffbytes",
        "label": 7,
        "neg": [-1, 2**40, 0],
        "floats": [0.5, -1.25, 3.0],
        "names": [b"a", b"", b"ccc"],
        "arr": np.arange(5, dtype=np.int32),
        "empty_f": np.zeros(0, dtype=np.float32),
    }
    ours_bytes = encode_example(features)
    theirs = tf.train.Example(
        features=tf.train.Features(
            feature={
                "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x00\xffbytes"])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
                "neg": tf.train.Feature(int64_list=tf.train.Int64List(value=[-1, 2**40, 0])),
                "floats": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, -1.25, 3.0])),
                "names": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a", b"", b"ccc"])),
                "arr": tf.train.Feature(int64_list=tf.train.Int64List(value=[0, 1, 2, 3, 4])),
                "empty_f": tf.train.Feature(float_list=tf.train.FloatList(value=[])),
            }
        )
    )
    assert tf.train.Example.FromString(ours_bytes) == theirs  # parsed values (map order aside)
    # Feature by feature the bytes are TensorFlow's own (one feature: no map-order question).
    for name in features:
        one = tf.train.Example(features=tf.train.Features(feature={name: theirs.features.feature[name]}))
        assert encode_example({name: features[name]}) == one.SerializeToString(deterministic=True), name
    assert decode_example(theirs.SerializeToString())["neg"].tolist() == [-1, 2**40, 0]  # type: ignore[union-attr]


def test_sharded_tfrecords_parsed_by_tensorflow(bucket: str) -> None:
    """A TFRecord ShardedDataset through s3dlio.tf: record payloads (CRC-checked) as a tf.string
    batch, parsed by tf.io.parse_example; a shuffled epoch has every record once."""
    import s3dlio.gen as gen
    from s3dlio.sharded import ShardedDataset

    root = f"s3://{bucket}/tfr"
    gen.generate(root, count=50, size=100, format="tfrecord", samples_per_shard=16, seed=3)
    ds = ShardedDataset.from_prefix(f"{root}/train", format="tfrecord", index_cache=False)
    spec = {"data": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    train = s3dlio.tf.make_dataset(
        ds, batch_size=8, shuffle=True, output_signature=tf.TensorSpec((None,), tf.string)
    ).map(lambda records: tf.io.parse_example(records, spec))
    labels = [int(x) for batch in train for x in batch["label"].numpy()]
    assert sorted(labels) == sorted(int(x) for x in gen.sample_labels(50, seed=3))
    first = next(iter(train))
    assert first["data"].shape == (8,) and len(first["data"].numpy()[0]) == 100


def test_sharded_dataset_reads_what_tensorflow_wrote(tmp_path: Any) -> None:
    """TFRecord shards written by tf.io.TFRecordWriter (tf.train.Example records, no index file):
    ShardedDataset scans them, checks every CRC, and decode_example gives TensorFlow's values."""
    from s3dlio.sharded import ShardedDataset

    for k in range(3):
        with tf.io.TFRecordWriter(str(tmp_path / f"tf-{k}.tfrecord")) as w:
            for i in range(10):
                n = k * 10 + i
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes([n]) * (n + 1)])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[n])),
                    "score": tf.train.Feature(float_list=tf.train.FloatList(value=[n / 2])),
                }
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    ds = ShardedDataset.from_prefix(f"file://{tmp_path}", format="tfrecord", index_cache=False, decode=True)
    assert len(ds) == 30
    loader = s3dlio.DataLoader(ds, batch_size=7, shuffle=True, collate_fn=list)
    got = {int(e["label"][0]): e for batch in loader for e in batch}
    assert sorted(got) == list(range(30))
    assert all(
        bytes(got[n]["image"][0]) == bytes([n]) * (n + 1) and float(got[n]["score"][0]) == n / 2 for n in got
    )
