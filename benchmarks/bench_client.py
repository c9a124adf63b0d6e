"""One measurement of one client on one workload, in a process of its own (run by bench.py).

    python bench_client.py CLIENT WORKLOAD SPEC.json

The spec (a JSON file) names the objects or files and the endpoint. The process sets everything up
(imports, clients, payloads), prints ``READY``, waits for a line on stdin (bench.py samples the
server's CPU time then), does the work, and prints one JSON line: seconds, bytes, objects, its CPU
time (user + system, this process and its reaped children: s5cmd, dd, torch workers) and peak RSS.

It imports only what the client needs, so that the reference s3dlio release runs it from its own
virtual environment. Every byte read is counted and checked against the expected total; a client
that returned short data fails the measurement instead of looking fast.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

THREADS = 32  # boto3's and s3torchconnector's pools, as in the issue's reference measurements


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: its own, unlike ru_maxrss, which a process started by fork
    and exec inherits from its parent), or that of its largest reaped child if larger."""
    me = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                me = int(line.split()[1])
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def payloads(spec: dict[str, Any]) -> list[bytes]:
    """Distinct random payloads for a PUT workload (made before the clock starts)."""
    size, n = spec["size"], len(spec["uris"])
    block = os.urandom(size)
    # Each object differs in its first 8 bytes, so no server can store one copy for all.
    return [i.to_bytes(8, "little") + block[8:] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Clients. Each returns a callable doing the timed work and returning (bytes, objects).
# ---------------------------------------------------------------------------------------------


def s3dlio_ours(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    import numpy as np

    import s3dlio

    uris = spec["uris"]
    if workload in ("get", "file", "direct"):
        if len(uris) == 1:
            return lambda: (len(s3dlio.get(uris[0])), 1)

        def get_many() -> tuple[int, int]:
            return sum(len(b) for b in s3dlio.get_many(uris)), len(uris)

        return get_many
    if workload == "put":
        data = payloads(spec)

        def put() -> tuple[int, int]:
            s3dlio.put_many(list(zip(uris, data, strict=True)))
            return sum(len(d) for d in data), len(data)

        return put
    if workload == "epoch":
        ds = s3dlio.ObjectDataset.from_uris(
            uris, [spec["size"]] * len(uris), transform=lambda b: np.frombuffer(b, dtype=np.uint8)
        )
        loader = s3dlio.DataLoader(ds, batch_size=spec["batch_size"], shuffle=True, seed=1)
        return lambda: epoch(loader)
    raise KeyError(workload)


def s3dlio_iter_get(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    """The streaming API: ``s3dlio.iter_get`` (its default window, as ``get_many``'s default
    concurrency), counting each buffer and dropping it before the next, as boto3's loop does."""
    import s3dlio

    uris = spec["uris"]
    if workload not in ("get", "file", "direct"):
        raise KeyError(workload)

    def stream() -> tuple[int, int]:
        total = objects = 0
        for buf in s3dlio.iter_get(uris):
            total += len(buf)
            objects += 1
            del buf  # released before the next one is taken
        return total, objects

    return stream


def memcpy_ceiling(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    """Not a client: one core copying the workload's bytes from memory to memory (the ceiling of a
    page-cache read, which is a copy from the page cache). Before the clock the files are read
    into one source array (each file a slice of it); the timed loop copies every slice in turn
    into one reused destination array of one file's size, touched beforehand."""
    import numpy as np

    if workload != "file":
        raise KeyError(workload)
    paths = [u.split("://", 1)[1] for u in spec["uris"]]
    size, n = spec["size"], len(paths)
    src = np.empty(n * size, dtype=np.uint8)
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            got = f.readinto(src[i * size : (i + 1) * size].data)
        if got != size:
            raise SystemExit(f"memcpy: {path}: read {got} bytes, expected {size}")
    dst = np.empty(size, dtype=np.uint8)
    dst.fill(1)  # its pages faulted in before the clock

    def copy() -> tuple[int, int]:
        total = 0
        for i in range(n):
            np.copyto(dst, src[i * size : (i + 1) * size])
            total += dst.nbytes
        return total, n

    return copy


def s3dlio_reference(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    import s3dlio  # the PyPI release, from its own virtual environment

    uris = spec["uris"]
    if workload in ("get", "file", "direct"):
        if len(uris) == 1:
            return lambda: (len(memoryview(s3dlio.get(uris[0]))), 1)

        def get_many() -> tuple[int, int]:
            got = s3dlio.get_many(uris, max_in_flight=64)
            return sum(len(memoryview(b)) for _uri, b in got), len(got)

        return get_many
    if workload == "put":
        data = payloads(spec)

        def put() -> tuple[int, int]:
            s3dlio.put_many(list(zip(uris, data, strict=True)), max_in_flight=64)
            return sum(len(d) for d in data), len(data)

        return put
    if workload == "epoch":
        import torch

        from s3dlio.torch import ObjectStoreIterableDataset

        ds = ObjectStoreIterableDataset.from_prefix(spec["prefix"], shuffle=True, seed=1, prefetch=64)
        loader = torch.utils.data.DataLoader(ds, batch_size=spec["batch_size"], num_workers=0)
        return lambda: epoch(loader)
    raise KeyError(workload)


def boto3_client(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    s3 = boto3.client(
        "s3", endpoint_url=spec["endpoint"], config=Config(max_pool_connections=THREADS)
    )  # fmt: skip
    uris = spec["uris"]
    if workload == "get":
        if len(uris) == 1:  # one large object: boto3's managed transfer (ranged GETs, 32 threads)
            import io

            def big() -> tuple[int, int]:
                out = io.BytesIO()
                bucket, key = split(uris[0])
                s3.download_fileobj(bucket, key, out, Config=TransferConfig(max_concurrency=THREADS))
                return out.getbuffer().nbytes, 1

            return big

        def read(uri: str) -> int:
            bucket, key = split(uri)
            return len(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

        return lambda: (sum(ThreadPoolExecutor(THREADS).map(read, uris)), len(uris))
    if workload == "put":
        data = payloads(spec)
        multipart = spec["size"] >= 8 * 1024 * 1024

        def write(item: tuple[str, bytes]) -> int:
            import io

            bucket, key = split(item[0])
            if multipart:  # boto3's managed multipart upload
                s3.upload_fileobj(io.BytesIO(item[1]), bucket, key)
            else:
                s3.put_object(Bucket=bucket, Key=key, Body=item[1])
            return len(item[1])

        return lambda: (sum(ThreadPoolExecutor(THREADS).map(write, zip(uris, data, strict=True))), len(uris))
    if workload == "epoch":
        import numpy as np
        import torch

        class Boto3Dataset(torch.utils.data.Dataset):  # type: ignore[misc]
            """The usual map dataset: one boto3 client per worker process, one GET per sample."""

            def __init__(self) -> None:
                self.client: Any = None

            def __len__(self) -> int:
                return len(uris)

            def __getitem__(self, i: int) -> Any:
                if self.client is None:
                    self.client = boto3.client("s3", endpoint_url=spec["endpoint"])
                bucket, key = split(uris[i])
                raw = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
                return np.frombuffer(raw, dtype=np.uint8)

        loader = torch.utils.data.DataLoader(
            Boto3Dataset(), batch_size=spec["batch_size"], shuffle=True, num_workers=2
        )
        return lambda: epoch(loader)
    raise KeyError(workload)


def s3torchconnector_client(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    from s3torchconnector import S3ClientConfig, S3MapDataset
    from s3torchconnector._s3client import S3Client

    config = S3ClientConfig(force_path_style=True)
    region = os.environ.get("AWS_REGION", "us-east-1")
    uris = spec["uris"]
    if workload == "get":
        ds = S3MapDataset.from_objects(uris, region=region, endpoint=spec["endpoint"], s3client_config=config)
        if len(uris) == 1:
            return lambda: (len(ds[0].read()), 1)
        return lambda: (
            sum(ThreadPoolExecutor(THREADS).map(lambda i: len(ds[i].read()), range(len(uris)))),
            len(uris),
        )
    if workload == "put":
        data = payloads(spec)
        client = S3Client(region, endpoint=spec["endpoint"], s3client_config=config)

        def write(item: tuple[str, bytes]) -> int:
            writer = client.put_object(*split(item[0]))
            writer.write(item[1])
            writer.close()
            return len(item[1])

        return lambda: (sum(ThreadPoolExecutor(THREADS).map(write, zip(uris, data, strict=True))), len(uris))
    if workload == "epoch":
        import numpy as np
        import torch

        ds = S3MapDataset.from_objects(
            uris, region=region, endpoint=spec["endpoint"], s3client_config=config,
            transform=lambda r: np.frombuffer(r.read(), dtype=np.uint8),
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(ds, batch_size=spec["batch_size"], shuffle=True, num_workers=2)
        return lambda: epoch(loader)
    raise KeyError(workload)


def s5cmd_client(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
    exe = shutil.which("s5cmd") or os.path.join(os.path.dirname(sys.executable), "s5cmd")
    base = [exe, "--endpoint-url", spec["endpoint"]]
    uris = spec["uris"]
    # Downloads land in tmpfs (/dev/shm), so no disk write is timed.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - mkdtemp: a private directory
    scratch = tempfile.mkdtemp(prefix="s5cmd-", dir=shm)
    if workload == "get":
        source = uris[0] if len(uris) == 1 else spec["prefix"] + "*"

        def get() -> tuple[int, int]:
            subprocess.run([*base, "cp", source, scratch + "/"], check=True, stdout=subprocess.DEVNULL)
            total = sum(e.stat().st_size for e in os.scandir(scratch))
            shutil.rmtree(scratch)
            return total, len(uris)

        return get
    if workload == "put":
        for uri, d in zip(uris, payloads(spec), strict=True):
            with open(os.path.join(scratch, uri.rsplit("/", 1)[1]), "wb") as f:
                f.write(d)

        def put() -> tuple[int, int]:
            subprocess.run(
                [*base, "cp", scratch + "/*", spec["prefix"]], check=True, stdout=subprocess.DEVNULL
            )
            total = sum(e.stat().st_size for e in os.scandir(scratch))
            shutil.rmtree(scratch)
            return total, len(uris)

        return put
    raise KeyError(workload)


def tool_client(name: str) -> Callable[[str, dict[str, Any]], Callable[[], tuple[int, int]]]:
    """Local-file baselines: cat, numpy.fromfile, dd iflag=direct."""

    def make(workload: str, spec: dict[str, Any]) -> Callable[[], tuple[int, int]]:
        paths = [u.split("://", 1)[1] for u in spec["uris"]]
        sizes = [os.path.getsize(p) for p in paths]
        if name == "cat":
            cmd = ["cat", *paths]
        elif name == "dd":
            cmd = [
                "sh",
                "-c",
                " && ".join(f"dd if={p} of=/dev/null bs=4M iflag=direct status=none" for p in paths),
            ]
        elif name == "numpy.fromfile":
            import numpy as np

            return lambda: (sum(np.fromfile(p, dtype=np.uint8).size for p in paths), len(paths))
        else:
            raise KeyError(name)

        def run() -> tuple[int, int]:
            out = subprocess.run(
                cmd, check=True, stdout=subprocess.DEVNULL if name == "dd" else subprocess.PIPE
            )
            return (sum(sizes) if name == "dd" else len(out.stdout)), len(paths)

        if name == "cat":  # count what cat wrote without keeping it: a pipe read in chunks

            def run_cat() -> tuple[int, int]:
                with subprocess.Popen(cmd, stdout=subprocess.PIPE) as p:
                    assert p.stdout is not None
                    total = 0
                    while chunk := p.stdout.read1(1 << 20):
                        total += len(chunk)
                if p.returncode:
                    raise RuntimeError(f"cat exited {p.returncode}")
                return total, len(paths)

            return run_cat
        return run

    return make


def epoch(loader: Any) -> tuple[int, int]:
    """One pass over a loader of uint8 tensor batches: bytes and samples delivered."""
    total = samples = 0
    for batch in loader:
        total += batch.numel()
        samples += batch.shape[0]
    return total, samples


CLIENTS: dict[str, Callable[[str, dict[str, Any]], Callable[[], tuple[int, int]]]] = {
    "s3dlio": s3dlio_ours,
    "s3dlio iter_get": s3dlio_iter_get,
    "s3dlio-0.10.0": s3dlio_reference,
    "boto3": boto3_client,
    "s3torchconnector": s3torchconnector_client,
    "s5cmd": s5cmd_client,
    "cat": tool_client("cat"),
    "numpy.fromfile": tool_client("numpy.fromfile"),
    "dd": tool_client("dd"),
    "memcpy (ceiling)": memcpy_ceiling,
}


def main() -> int:
    client, workload = sys.argv[1], sys.argv[2]
    with open(sys.argv[3]) as f:
        spec = json.load(f)
    # The reference release's environment holds only it (and numpy): torch, for its epoch, comes
    # from the benchmark's main environment, searched after the reference's own packages.
    extra = os.environ.get("BENCH_EXTRA_SITE")
    if extra:
        sys.path.append(extra)
    work = CLIENTS[client](workload, spec)
    print("READY", flush=True)
    sys.stdin.readline()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    nbytes, objects = work()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    expected = spec["size"] * len(spec["uris"])
    if (nbytes, objects) != (expected, len(spec["uris"])):
        raise SystemExit(
            f"{client} {workload}: got {nbytes} bytes / {objects} objects, expected {expected} / {len(spec['uris'])}"
        )
    result = {
        "seconds": seconds,
        "bytes": nbytes,
        "objects": objects,
        "cpu_s": cpu,
        "rss_mib": peak_rss_mib(),
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
