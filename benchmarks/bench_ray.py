"""Ray Data over one local S3 prefix: ``s3dlio.ray.read_objects`` against
``ray.data.read_binary_files`` (issue 16; run by ``nox -s bench_ray``).

    python -P benchmarks/bench_ray.py [--objects 2000] [--size 256KiB] [--reps 3] [--cpus 2] [--quick]

Starts SeaweedFS (``s3dlio.testing.LocalS3Server``), writes ``--objects`` objects of ``--size``
random bytes under ``s3://bench-ray/data/`` with ``s3dlio.put_many``, starts a local Ray cluster
(``ray.init(num_cpus=--cpus)``, the server's AWS_* variables in the workers' ``runtime_env``) and
then, for each contender, one untimed warm-up run and ``--reps`` timed ones, rotating the order:

- ``ray.data.read_binary_files``: ``read_binary_files("bench-ray/data/", include_paths=True,
  filesystem=pyarrow.fs.S3FileSystem(endpoint_override=..., scheme="http", ...))``;
- ``s3dlio.ray.read_objects``: ``read_objects("s3://bench-ray/data/")`` (listing included in the
  time);

each once with the number of read tasks Ray chooses and once with ``override_num_blocks`` set to
``2 x --cpus`` (fewer, larger tasks). Each run consumes every byte in the Ray workers:
``ds.map_batches`` computes the CRC32C of every object (``s3dlio.crc32c``, the same function for
both) and returns (name, length, crc) rows to the driver, which must match what was written, each
object once, else the run fails. Recorded per run: wall time (building the dataset to the last
row), objects/s, MB/s (10^6 bytes), the CPU seconds of the driver and every process under it (the
Ray GCS, raylet and its workers; read from /proc before and after the run) and of the S3 server.

Prints a Markdown table with the medians and writes ``ray.json`` to ``--out`` (default
docs/benchmarks; ``--quick``: 64 objects of 16 KiB, one rep, a temporary directory: it checks the
harness and its numbers say nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KIB, MIB = 1 << 10, 1 << 20
BUCKET = "bench-ray"
READERS = ["ray.data.read_binary_files", "s3dlio.ray.read_objects"]
TICKS = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(|B|KiB|MiB|K|M)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 262144, 256KiB)")
    return int(m.group(1)) * {"": 1, "B": 1, "KiB": KIB, "K": KIB, "MiB": MIB, "M": MIB}[m.group(2)]


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of user + system) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every live process under it, by pid."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            todo += children.get(pid, [])
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the end (a process started in
    between counts from zero)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def crc_rows(batch: Any) -> dict[str, Any]:
    """Runs in the Ray workers: every object's name (its last path component), length and CRC32C."""
    import s3dlio

    names, lengths, crcs = [], [], []
    for value, path in zip(batch["bytes"], batch["path"], strict=True):
        buf = value.as_buffer()
        names.append(str(path).rsplit("/", 1)[1])
        lengths.append(buf.size)
        crcs.append(s3dlio.crc32c(buf))
    return {"name": names, "length": lengths, "crc": crcs}


def build(name: str, blocks: int | None, server: Any) -> Any:
    import ray.data

    kw = {} if blocks is None else {"override_num_blocks": blocks}
    if name == "ray.data.read_binary_files":
        import pyarrow.fs

        fs = pyarrow.fs.S3FileSystem(
            endpoint_override=server.endpoint.removeprefix("http://"),
            scheme="http",
            access_key=server.access_key,
            secret_key=server.secret_key,
            region=server.region,
        )
        return ray.data.read_binary_files(f"{BUCKET}/data/", include_paths=True, filesystem=fs, **kw)
    import s3dlio.ray

    return s3dlio.ray.read_objects(f"s3://{BUCKET}/data/", **kw)


def run_once(
    contender: tuple[str, int | None], server: Any, expected: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    name, blocks = contender
    before, server_before = tree_cpu(os.getpid()), tree_cpu(server.pid)
    t0 = time.perf_counter()
    ds = build(name, blocks, server)
    out = ds.map_batches(crc_rows, batch_format="pyarrow", batch_size=None)
    rows = out.take_all()
    wall = time.perf_counter() - t0
    cpu = cpu_delta(before, tree_cpu(os.getpid()))
    server_cpu = cpu_delta(server_before, tree_cpu(server.pid))
    got = {r["name"]: (r["length"], r["crc"]) for r in rows}
    if len(rows) != len(expected) or got != expected:
        missing = sorted(set(expected) - set(got))[:3]
        wrong = sorted(k for k in got if got[k] != expected.get(k))[:3]
        raise SystemExit(
            f"{name}: {len(rows)} rows for {len(expected)} objects; missing {missing}, wrong {wrong}"
        )
    nbytes = sum(v[0] for v in expected.values())
    return {
        "wall_s": wall,
        "objects_per_s": len(expected) / wall,
        "mb_per_s": nbytes / wall / 1e6,
        "cpu_s": cpu,
        "server_cpu_s": server_cpu,
    }


def label(c: tuple[str, int | None]) -> str:
    return c[0] if c[1] is None else f"{c[0]} (override_num_blocks={c[1]})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--size", type=parse_size, default=256 * KIB)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    ap.add_argument("--quick", action="store_true", help="64 objects of 16 KiB, 1 rep")
    ap.add_argument("--out", help="where ray.json goes (default docs/benchmarks; --quick: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.objects, args.size, args.reps = 64, 16 * KIB, 1
    out_dir = Path(
        args.out or (tempfile.mkdtemp(prefix="bench-ray-") if args.quick else ROOT / "docs" / "benchmarks")
    )

    import ray
    import ray.data

    import s3dlio
    from s3dlio.testing import LocalS3Server

    with LocalS3Server() as server:
        server.apply_env()
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        s3dlio.create_bucket(f"s3://{BUCKET}")
        rng = np.random.default_rng(0)
        expected: dict[str, tuple[int, int]] = {}
        t0 = time.perf_counter()
        for start in range(0, args.objects, 256):
            items = []
            for i in range(start, min(start + 256, args.objects)):
                data = rng.integers(0, 256, args.size, dtype=np.uint8).tobytes()
                expected[f"{i:06d}.bin"] = (len(data), s3dlio.crc32c(data))
                items.append((f"s3://{BUCKET}/data/{i:06d}.bin", data))
            s3dlio.put_many(items)
        print(f"wrote {args.objects} x {args.size} B in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": server.env()},
            # Ray's workers refuse a temp dir inside the virtual environment, where nox's TMPDIR is
            # (mkdtemp: a private directory).
            _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        contenders = [(r, b) for b in (None, 2 * args.cpus) for r in READERS]
        try:
            results: dict[tuple[str, int | None], list[dict[str, Any]]] = {c: [] for c in contenders}
            for c in contenders:  # warm-up: workers started, imports done, server caches warm
                run_once(c, server, expected)
            for rep in range(args.reps):
                k = rep % len(contenders)
                order = contenders[k:] + contenders[:k]
                for c in order:
                    r = run_once(c, server, expected)
                    results[c].append(r)
                    print(
                        f"rep {rep + 1} {label(c)}: {r['wall_s']:.2f} s, {r['mb_per_s']:.0f} MB/s, "
                        f"cpu {r['cpu_s']:.1f} s, server cpu {r['server_cpu_s']:.1f} s",
                        file=sys.stderr,
                    )
        finally:
            ray.shutdown()

    def med(c: tuple[str, int | None], k: str) -> float:
        return statistics.median(r[k] for r in results[c])

    lines = [
        "| reader | read tasks | wall (s) | objects/s | MB/s | driver + Ray CPU (s) | server CPU (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in contenders:
        lines.append(
            f"| `{c[0]}` | {'Ray chooses' if c[1] is None else c[1]} | {med(c, 'wall_s'):.2f} | {med(c, 'objects_per_s'):,.0f} | "
            f"{med(c, 'mb_per_s'):,.0f} | {med(c, 'cpu_s'):.1f} | {med(c, 'server_cpu_s'):.1f} |"
        )
    print("\n".join(lines))
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "objects": args.objects,
        "size": args.size,
        "reps": args.reps,
        "cpus": args.cpus,
        "ray": ray.__version__,
        "s3dlio": s3dlio.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "results": {label(c): r for c, r in results.items()},
    }
    (out_dir / "ray.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out_dir / 'ray.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
