"""TensorFlow input pipelines over the same objects: s3dlio.tf's batch-at-a-time dataset against
per-sample ``tf.data.Dataset.from_generator`` pipelines.

    python benchmarks/tf_batch_vs_per_sample.py                  # starts a local S3 server itself
    python benchmarks/tf_batch_vs_per_sample.py --objects 4000 --size 16384 --batch-size 64 --runs 3
    python benchmarks/tf_batch_vs_per_sample.py --storage file    # the same objects as files in /dev/shm

Pipelines (each consumed for one whole epoch, ``.prefetch(AUTOTUNE)`` at the end, every sample's
bytes touched once by TensorFlow):

1. ``s3dlio.tf.make_dataset``: the Rust pool fetches and assembles whole batches; TensorFlow gets
   one (batch, size) uint8 array per Python call.
2. per-sample ``from_generator`` + ``.batch()``, each object read with ``s3dlio.get`` in the
   generator (one request at a time: the usual first attempt).
3. per-sample ``from_generator`` + ``.batch()`` fed by the same Rust pool (``s3dlio.DataLoader``,
   batches split into samples in Python): fetching is as concurrent as in (1), so the difference
   with (1) is the per-sample Python call and GIL hand-off alone.

Runs are interleaved (1, 2, 3, 1, 2, 3, ...) after one warm-up epoch of each; the table shows the
median samples/s of ``--runs`` epochs with their min and max. Without ``--endpoint`` (or
``AWS_ENDPOINT_URL``) the script starts :class:`s3dlio.testing.LocalS3Server` (SeaweedFS) itself
and stops it at the end. ``--storage file`` reads the objects as ``file://`` files in a tmpfs
(``/dev/shm``) instead: no server and no network, so what is left is the cost of handing the data
to TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

if importlib.util.find_spec("s3dlio") is None:  # run from a checkout without `pip install`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_objects(prefix: str, n: int, size: int) -> list[str]:
    import s3dlio

    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, size=size, dtype=np.uint8)
    uris = [f"{prefix}{i:06d}.bin" for i in range(n)]
    with ThreadPoolExecutor(32) as ex:
        list(ex.map(lambda u: s3dlio.put(u, payload), uris))
    return uris


def pipelines(uris: list[str], size: int, batch_size: int) -> dict[str, Callable[[], Any]]:
    import tensorflow as tf

    import s3dlio
    import s3dlio.tf

    sizes: list[int | None] = [size] * len(uris)
    dataset = s3dlio.ObjectDataset.from_uris(uris, sizes)
    spec = tf.TensorSpec((size,), tf.uint8)

    def batched() -> Any:
        return s3dlio.tf.make_dataset(dataset, batch_size).prefetch(tf.data.AUTOTUNE)

    def per_sample_get() -> Any:
        def gen() -> Iterator[np.ndarray]:
            for uri in uris:
                yield np.frombuffer(s3dlio.get(uri), dtype=np.uint8)

        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def per_sample_pool() -> Any:
        def gen() -> Iterator[np.ndarray]:
            loader = s3dlio.DataLoader(dataset, batch_size=batch_size, collate_fn=s3dlio.tf.default_collate)
            try:
                for batch in loader:
                    yield from batch  # one (size,) row per Python call
            finally:
                loader.close()

        ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return {
        "s3dlio.tf.make_dataset (one batch per call)": batched,
        "per-sample from_generator, s3dlio.get per object, .batch()": per_sample_get,
        "per-sample from_generator over s3dlio.DataLoader, .batch()": per_sample_pool,
    }


def one_epoch(ds: Any) -> tuple[int, float]:
    import tensorflow as tf

    t0 = time.perf_counter()
    n = 0
    for batch in ds:
        n += int(batch.shape[0])
        tf.reduce_sum(tf.cast(batch[:, :1], tf.int32))  # TensorFlow touches the batch
    return n, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=4000)
    ap.add_argument("--size", type=int, default=16 * 1024, help="bytes per object")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3, help="timed epochs per pipeline (after one warm-up)")
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="S3 endpoint to use")
    ap.add_argument("--storage", choices=["s3", "file"], default="s3", help="file: files in /dev/shm")
    args = ap.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import s3dlio

    server = None
    scratch = None
    if args.storage == "file":
        shm = "/dev/shm"  # noqa: S108 - a private mkdtemp directory in the tmpfs
        scratch = tempfile.mkdtemp(prefix="tfbench-", dir=shm if os.path.isdir(shm) else None)
        bucket = f"file://{scratch}"
    else:
        if args.endpoint:
            os.environ["AWS_ENDPOINT_URL"] = args.endpoint
        else:
            from s3dlio.testing import LocalS3Server

            server = LocalS3Server().start()
            server.apply_env()
        bucket = f"s3://tfbench-{uuid.uuid4().hex[:12]}"
    try:
        if scratch is None:
            s3dlio.create_bucket(bucket)
        t0 = time.perf_counter()
        uris = write_objects(f"{bucket}/", args.objects, args.size)
        print(f"wrote {args.objects} x {args.size} B in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        import tensorflow as tf

        makers = pipelines(uris, args.size, args.batch_size)
        built = {name: make() for name, make in makers.items()}
        for name, ds in built.items():  # warm-up: connections, TF function tracing
            n, dt = one_epoch(ds)
            assert n == args.objects, (name, n)
            print(f"warm-up  {name}: {n / dt:,.0f} samples/s", file=sys.stderr)
        rates: dict[str, list[float]] = {name: [] for name in built}
        for run in range(args.runs):
            for name, ds in built.items():
                n, dt = one_epoch(ds)
                assert n == args.objects, (name, n)
                rates[name].append(n / dt)
                print(f"run {run + 1}    {name}: {n / dt:,.0f} samples/s", file=sys.stderr)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            try:
                s3dlio.delete_prefix(f"{bucket}/")
                s3dlio.delete_bucket(bucket)
            except Exception as e:
                print(f"cleanup failed: {e}", file=sys.stderr)
        if server is not None:
            server.stop()

    base = statistics.median(rates[next(iter(k for k in rates if "s3dlio.get" in k))])
    print()
    where = (
        "files in /dev/shm (file://)"
        if scratch
        else f"S3 ({'given endpoint' if args.endpoint else 'local SeaweedFS'})"
    )
    print(
        f"{where}: {args.objects} objects x {args.size // 1024} KiB, batch_size {args.batch_size}, "
        f"median of {args.runs} epochs (min-max); TensorFlow {tf.__version__}, s3dlio {s3dlio.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs ({cpu_model()})"
    )
    print()
    print("| pipeline | samples/s (median) | min - max | MiB/s | vs per-sample get |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in rates.items():
        med = statistics.median(rs)
        mib = med * args.size / 2**20
        print(f"| {name} | {med:,.0f} | {min(rs):,.0f} - {max(rs):,.0f} | {mib:,.1f} | {med / base:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
