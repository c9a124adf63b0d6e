"""One training epoch's input pipeline: s3dlio.DataLoader against torch.utils.data.DataLoader.

    python -P benchmarks/torch_loaders.py [--objects 4000] [--size 65536] [--batch 64] [--reps 3]

Starts a local S3 server (SeaweedFS), writes `--objects` random objects, then times one shuffled
epoch, each sample turned into a uint8 tensor and collated into a batch, with:

- s3dlio.DataLoader (the Rust pool fetches; transform + collate in the iterating thread);
- s3dlio.DataLoader(num_workers=2) (transform + collate on 2 threads);
- torch.utils.data.DataLoader(num_workers=2) over s3dlio.ObjectDataset (worker processes; torch
  fetches each batch through ObjectDataset.__getitems__, one concurrent s3dlio.get_many per batch);
- torch.utils.data.DataLoader(num_workers=0) over s3dlio.ObjectDataset.

Runs alternate between loaders; prints the median, min and max samples/s of `--reps` runs as a
Markdown table. Server and client share the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

import s3dlio
from s3dlio.testing import LocalS3Server


def to_tensor(buf: s3dlio.Buffer) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(buf, dtype=np.uint8).copy())


def epoch(loader: Iterable[Any]) -> int:
    n = 0
    for batch in loader:
        n += len(batch)
    return n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--objects", type=int, default=4000)
    p.add_argument("--size", type=int, default=64 * 1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    with LocalS3Server() as server:
        server.apply_env()
        s3dlio.create_bucket("s3://bench")
        payload = os.urandom(a.size)
        with ThreadPoolExecutor(32) as ex:
            list(ex.map(lambda i: s3dlio.put(f"s3://bench/{i:06d}", payload), range(a.objects)))
        ds = s3dlio.ObjectDataset.from_prefix("s3://bench/", transform=to_tensor)
        loaders: dict[str, Callable[[], Iterable[Any]]] = {
            "s3dlio.DataLoader": lambda: s3dlio.DataLoader(ds, batch_size=a.batch, shuffle=True),
            "s3dlio.DataLoader(num_workers=2)": lambda: s3dlio.DataLoader(
                ds, batch_size=a.batch, shuffle=True, num_workers=2
            ),
            "torch DataLoader(num_workers=2)": lambda: torch.utils.data.DataLoader(
                ds, batch_size=a.batch, shuffle=True, num_workers=2
            ),
            "torch DataLoader(num_workers=0)": lambda: torch.utils.data.DataLoader(
                ds, batch_size=a.batch, shuffle=True, num_workers=0
            ),
        }
        rates: dict[str, list[float]] = {k: [] for k in loaders}
        for _ in range(a.reps):
            for name, make in loaders.items():  # alternate loaders across repetitions
                loader = make()
                t0 = time.perf_counter()
                n = epoch(loader)
                rates[name].append(n / (time.perf_counter() - t0))
                assert n == a.objects
        print(
            f"\n{a.objects} x {a.size} B objects, batch {a.batch}, shuffled; "
            f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), server on the same machine; "
            f"torch {torch.__version__}, s3dlio {s3dlio.__version__}\n"
        )
        print("| loader | samples/s (median) | min | max |\n|---|---:|---:|---:|")
        for name, r in rates.items():
            print(f"| {name} | {statistics.median(r):,.0f} | {min(r):,.0f} | {max(r):,.0f} |")


if __name__ == "__main__":
    main()
