"""s3dlio against the official Python SDKs on the Azure and GCS emulators the tests use.

    python -P benchmarks/bench_cloud.py                # both emulators, 3 repetitions
    python -P benchmarks/bench_cloud.py --reps 5 --only az

Workloads (each a whole read of the objects, in a fresh order every repetition):
  small: 2,000 objects of 64 KiB;  large: 32 objects of 16 MiB.
Clients:
  s3dlio          s3dlio.get_many(uris, max_concurrency=32)
  azure-storage-blob / google-cloud-storage
                  a ThreadPoolExecutor(32) of download_blob().readall() / download_as_bytes(),
                  the usual way to read many objects with those SDKs (large Azure blobs with
                  download_blob(max_concurrency=4), the SDK's own parallel ranged download).

Emulator numbers are emulator-bound (Azurite is single-threaded Node.js, fake-gcs-server keeps
objects in memory): the ratios and the client CPU per GB say more than the absolute rates. The
emulator and the client share this machine's cores. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import s3dlio
from s3dlio.testing import LocalAzurite, LocalFakeGCS

WORKLOADS = {"small": (2000, 64 * 1024), "large": (32, 16 * 1024 * 1024)}
THREADS = 32


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    c0, t0 = cpu(), time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, cpu() - c0, n


def populate(root: str, count: int, size: int) -> list[str]:
    uris = [f"{root}{i:05d}.bin" for i in range(count)]
    payload = os.urandom(size)
    s3dlio.put_many([(u, payload) for u in uris], max_concurrency=16)
    return uris


def s3dlio_reader(uris: list[str]) -> Callable[[], int]:
    def run() -> int:
        return sum(len(b) for b in s3dlio.get_many(uris, max_concurrency=THREADS))

    return run


def azure_reader(conn: str, container: str, names: list[str], size: int) -> Callable[[], int]:
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(conn)
    cc = svc.get_container_client(container)
    per_blob = 4 if size >= 8 * 1024 * 1024 else 1

    def one(name: str) -> int:
        return len(cc.get_blob_client(name).download_blob(max_concurrency=per_blob).readall())

    def run() -> int:
        with ThreadPoolExecutor(THREADS) as ex:
            return sum(ex.map(one, names))

    return run


def gcs_reader(endpoint: str, project: str, bucket: str, names: list[str]) -> Callable[[], int]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )
    b = client.bucket(bucket)

    def one(name: str) -> int:
        return len(b.blob(name).download_as_bytes())

    def run() -> int:
        with ThreadPoolExecutor(THREADS) as ex:
            return sum(ex.map(one, names))

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=["az", "gs"])
    args = ap.parse_args()
    rows: list[str] = []
    with LocalAzurite() as az, LocalFakeGCS() as gcs:
        az.apply_env()
        gcs.apply_env()
        for store in ("az", "gs"):
            if args.only and store != args.only:
                continue
            name = f"bench-{os.getpid()}"
            s3dlio.create_bucket(f"{store}://{name}")
            for wl, (count, size) in WORKLOADS.items():
                root = f"{store}://{name}/{wl}/"
                uris = populate(root, count, size)
                names = [u[len(f"{store}://{name}/") :] for u in uris]
                clients = ["s3dlio", "azure-storage-blob" if store == "az" else "google-cloud-storage"]
                results: dict[str, list[tuple[float, float]]] = {c: [] for c in clients}
                for rep in range(args.reps):
                    order = list(range(len(uris)))
                    random.Random(rep).shuffle(order)  # noqa: S311 - a read order, not a secret
                    shuffled = [uris[i] for i in order]
                    shuffled_names = [names[i] for i in order]
                    for client in clients:
                        if client == "s3dlio":
                            fn = s3dlio_reader(shuffled)
                        elif store == "az":
                            fn = azure_reader(az.connection_string, name, shuffled_names, size)
                        else:
                            fn = gcs_reader(gcs.endpoint, gcs.project, name, shuffled_names)
                        wall, used, n = timed(fn)
                        assert n == count * size, (client, n)
                        results[client].append((wall, used))
                        print(
                            f"  {store} {wl} rep {rep + 1} {client:22s} {n / wall / 1e6:8.1f} MB/s  cpu {used:6.2f} s",
                            file=sys.stderr,
                        )
                base = statistics.median(w for w, _ in results["s3dlio"])
                for client in clients:
                    walls = [w for w, _ in results[client]]
                    cpus = [c for _, c in results[client]]
                    wall = statistics.median(walls)
                    gb = count * size / 1e9
                    rows.append(
                        f"| {store} | {wl} ({count} x {size // 1024} KiB) | {client} | "
                        f"{count * size / wall / 1e6:.1f} | {count / wall:,.0f} | "
                        f"{statistics.median(cpus) / gb:.2f} | {wall / base:.2f}x |"
                    )
    print("| store | workload | client | MB/s | objects/s | client CPU s/GB | time vs s3dlio |")
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
