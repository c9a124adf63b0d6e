"""The buffer pool's effect on repeated reads (docs/zero-copy.md, "Recycled buffers").

    python -P benchmarks/bench_pool.py [--files 64] [--size-mib 16] [--rounds 5] [--cpu 0]

Writes the files once under ``.bench/pool/`` (read back from the page cache), then, each in a fresh
process pinned to one core (``taskset -c CPU``), reads them ``--rounds`` times with ``get_many``
(every buffer alive at once, dropped before the next round) and with ``iter_get`` (each buffer
dropped before the next), with the pool at its default bound and with ``buffer_pool_bytes=0``
(every read in fresh memory). Prints the median GB/s of the rounds after the first (the first
round fills the pool) and the pool's counters.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import s3dlio
    uris, mode, pool, rounds = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = s3dlio.StorageConfig(buffer_pool_bytes=0) if pool == "off" else s3dlio.StorageConfig()
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        if mode == "get_many":
            bufs = s3dlio.get_many(uris, config=cfg)
            n = sum(len(b) for b in bufs)
            del bufs
        else:
            n = 0
            for b in s3dlio.iter_get(uris, config=cfg):
                n += len(b)
                del b
        rates.append(n / (time.perf_counter() - t0) / 1e9)
    print(json.dumps({"rates": rates, "pool": s3dlio.stats()["buffer_pool"]}))
    """
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--size-mib", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", default="0", help="core to pin each measurement to ('' for none)")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (the first round fills the pool)")
    folder = ROOT / ".bench" / "pool"
    folder.mkdir(parents=True, exist_ok=True)
    size = args.size_mib << 20
    block = os.urandom(size)
    paths = [folder / f"{i:04d}.bin" for i in range(args.files)]
    for p in paths:
        if not p.exists() or p.stat().st_size != size:
            p.write_bytes(block)
    uris = [f"file://{p}" for p in paths]
    for p in paths:  # into the page cache
        p.read_bytes()
    pin = ["taskset", "-c", args.cpu] if args.cpu else []
    print(f"{args.files} x {args.size_mib} MiB from the page cache, {args.rounds} rounds per process")
    for mode in ("get_many", "iter_get"):
        for pool in ("on", "off"):
            cmd = [*pin, sys.executable, "-P", "-c", CHILD, json.dumps(uris), mode, pool, str(args.rounds)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            got = json.loads(out.stdout.strip().splitlines()[-1])
            later = statistics.median(got["rates"][1:])
            p = got["pool"]
            print(
                f"  {mode:<9} pool {pool:<3}: first round {got['rates'][0]:6.2f} GB/s, later rounds "
                f"{later:6.2f} GB/s (median); pool hits {p['hits']}, misses {p['misses']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
