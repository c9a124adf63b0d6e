"""s3dlio against its peers, side by side on one local S3 server (run by ``nox -s bench``).

    python -P benchmarks/bench.py [--quick] [--reps N[,KEY=N...]] [--only transfer|checkpoint]
                                  [--workloads a,b,...] [--clients x,y,...]

Starts SeaweedFS pinned to one core (``taskset -c 1``), writes the datasets, and measures every
workload for every client in turn, rotating the order of the clients from one repetition to the
next. Each measurement is a fresh process pinned to the other core (``taskset -c 0``) running
``bench_client.py``: it sets itself up, then does the timed work on a signal from here, so
imports and payload generation are never timed. Recorded per measurement: wall time, bytes and
objects (checked against what was expected), the client's CPU time (its threads and its reaped
child processes), its peak RSS, and the server's CPU time over the same window.

Repetitions: 5 for the noisy large-object workloads (c, d, e1, e2, g1), 3 for the others, 1 with
``--quick``. ``--reps N`` sets every workload's count; ``KEY=N`` items set one workload's
(``--reps 3,k4=1``; ``--reps k4=1`` changes only k4).

s3dlio has two rows where its streaming API is measured beside ``get_many``: the GET workloads
(a)-(e2) also run ``s3dlio iter_get``. A verdict compares s3dlio's best row (named in the text) with the best
peer; the peers are every other client, the reference s3dlio release included. (e1) also has a
``memcpy (ceiling)`` row, which is not a client and not a peer: one core copying the same bytes
from memory to memory (``bench_client.memcpy_ceiling``); it runs whatever ``--clients`` says, and
the text gives s3dlio's ratio to it.

Writes ``docs/benchmarks/results.json`` (every measurement, the machine, the versions),
``docs/benchmarks/bench.png`` (the chart) and the generated section of ``docs/benchmarks.md``
(between its ``bench:begin`` / ``bench:end`` markers). ``--quick`` runs small versions of every
workload once, to check the harness (CI does); its numbers say nothing about speed.

The checkpoint workloads (k1, k4: save and load of a 1 GiB and a 4 GiB torch state dict on S3
and on ``file://``) run ``bench_checkpoint.py`` instead, one fresh process per save and per load
(all of them in one process with ``--quick``), and have outputs of their own:
``docs/benchmarks/checkpoint.json``, ``docs/benchmarks/checkpoint.png`` and the section between
``bench-checkpoint:begin`` / ``bench-checkpoint:end``. A run writes only the outputs of the
workloads it measured (``--only checkpoint`` leaves the transfer section as it is).

The reference s3dlio release (its module is also called ``s3dlio``) runs from its own virtual
environment: ``--ref-python`` (default ``.bench/ref/bin/python``, which ``nox -s bench`` makes).
A client that is not installed is an error (leave it out with ``--clients``), so is a client
that fails or returns short data, and every transfer workload must have measured each of
s3dlio's rows (and the ceiling) in every repetition, or the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import s3dlio
from s3dlio.testing import LocalS3Server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

S3_GET = ["s3dlio", "s3dlio-0.10.0", "s3torchconnector", "boto3", "s5cmd"]
ITER_GET = "s3dlio iter_get"  # s3dlio's streaming API, a row of its own in the GET workloads (a-e2)
OURS = ("s3dlio", ITER_GET)  # the transfer rows that are s3dlio itself (not the reference release)
MEMCPY = "memcpy (ceiling)"
CEILINGS = (MEMCPY,)  # rows that are neither s3dlio nor a peer
EPOCH = ["s3dlio", "s3dlio-0.10.0", "s3torchconnector", "boto3"]
# Checkpoint rows, "storage:client" (bench_checkpoint.py's CLIENTS), and the modules each needs.
CHECKPOINT_CLIENTS = {
    "s3dlio.checkpoint": ["torch", "s3dlio.checkpoint"],
    "s3dlio.dcp": ["torch.distributed.checkpoint", "s3dlio.dcp"],
    "s3torchconnector S3Checkpoint": ["torch", "s3torchconnector"],
    "s3torchconnector DCP": ["torch.distributed.checkpoint", "s3torchconnector.dcp"],
    "torch.save + boto3": ["torch", "boto3"],
    "torch.save": ["torch"],
    "torch DCP FileSystemWriter": ["torch.distributed.checkpoint"],
}
CHECKPOINT_ROWS = [
    "s3:s3dlio.checkpoint",
    "s3:s3dlio.dcp",
    "s3:s3torchconnector S3Checkpoint",
    "s3:s3torchconnector DCP",
    "s3:torch.save + boto3",
    "file:s3dlio.checkpoint",
    "file:s3dlio.dcp",
    "file:torch DCP FileSystemWriter",
    "file:torch.save",
]


@dataclass
class Workload:
    key: str
    title: str
    kind: str  # get | put | file | direct | epoch (bench_client's workload argument)
    count: int
    size: int
    quick_count: int
    quick_size: int
    clients: list[str]
    unit: str = "MB/s"  # the throughput shown first: MB/s or objects/s
    cpu_targets: bool = True  # the client-CPU target (<= 0.5x the lowest peer) applies: a, b, c, g1
    reps: int = 3  # repetitions of a full run (--quick: 1; --reps overrides)

    def shape(self, quick: bool) -> tuple[int, int]:
        return (self.quick_count, self.quick_size) if quick else (self.count, self.size)

    @property
    def group(self) -> str:
        """Which outputs it goes to: "transfer" (results.json, bench.png) or "checkpoint"."""
        return "checkpoint" if self.kind == "checkpoint" else "transfer"


WORKLOADS = [
    Workload("a", "GET 4,000 x 64 KiB", "get", 4000, 64 * KIB, 200, 64 * KIB,
             ["s3dlio", ITER_GET, *S3_GET[1:]], unit="objects/s"),
    Workload("b", "GET 1,000 x 1 MiB", "get", 1000, MIB, 40, MIB, ["s3dlio", ITER_GET, *S3_GET[1:]]),
    Workload("c", "GET 64 x 16 MiB", "get", 64, 16 * MIB, 4, 16 * MIB,
             ["s3dlio", ITER_GET, *S3_GET[1:]], reps=5),
    Workload("d", "GET 1 x 1 GiB", "get", 1, GIB, 1, 64 * MIB, ["s3dlio", ITER_GET, *S3_GET[1:]],
             cpu_targets=False, reps=5),
    Workload("e1", "file:// 64 x 16 MiB (page cache)", "file", 64, 16 * MIB, 8, 16 * MIB,
             ["s3dlio", ITER_GET, "s3dlio-0.10.0", "cat", "numpy.fromfile", MEMCPY], cpu_targets=False,
             reps=5),
    Workload("e2", "direct:// 64 x 16 MiB (O_DIRECT, disk)", "direct", 64, 16 * MIB, 8, 16 * MIB,
             ["s3dlio", ITER_GET, "s3dlio-0.10.0", "dd"], cpu_targets=False, reps=5),
    Workload("f", "Epoch 4,000 x 64 KiB, batch 64, shuffled, torch tensors", "epoch", 4000, 64 * KIB,
             200, 64 * KIB, EPOCH, unit="objects/s", cpu_targets=False),
    Workload("g1", "PUT 64 x 16 MiB (multipart)", "put", 64, 16 * MIB, 4, 16 * MIB, S3_GET, reps=5),
    Workload("g2", "PUT 4,000 x 64 KiB", "put", 4000, 64 * KIB, 200, 64 * KIB, S3_GET, unit="objects/s",
             cpu_targets=False),
    # Checkpoints: `size` is the state dict's target size; clients are "storage:client" rows.
    Workload("k1", "Checkpoint: 1 GiB torch state dict, save and load", "checkpoint", 1, GIB, 1, 16 * MIB,
             CHECKPOINT_ROWS, unit="GB/s"),
    Workload("k4", "Checkpoint: 4 GiB torch state dict, save and load", "checkpoint", 1, 4 * GIB, 0, 0,
             CHECKPOINT_ROWS, unit="GB/s"),
]  # fmt: skip
GROUPS = ("transfer", "checkpoint")
STATE_SHAPE = {  # bench_checkpoint.layout(): what the state dicts are made of
    "k1": "d_model 1024, vocabulary 32,768, 16 layers; float32 embedding and output matrices of "
    "128 MiB, per layer QKV 12 MiB, MLP 16 MiB x 2, output projection 4 MiB, biases and layer norms "
    "of 4-16 KiB, a 32-byte bfloat16 rotary table; an 8-byte int64 step",
    "k4": "d_model 2048, vocabulary 32,768, 19 layers; float32 embedding and output matrices of "
    "256 MiB, per layer QKV 48 MiB, MLP 64 MiB x 2, output projection 16 MiB, biases and layer norms "
    "of 8-32 KiB, a 64-byte bfloat16 rotary table; an 8-byte int64 step",
}

LABELS = {  # how each client is driven, for the table's notes
    "s3dlio": "this project: get_many (the `s3dlio (get_many)` row where `s3dlio iter_get` has one "
    "too) / get / put_many; s3dlio.DataLoader for the epoch",
    ITER_GET: "this project, its streaming API, in the GET workloads (a-e2): `for buf in "
    "s3dlio.iter_get(uris)`, adding `len(buf)` and dropping each buffer before the next (default "
    "window: max_concurrency {max_concurrency} requests in flight, as get_many's default, and "
    "max_bytes 256 MiB fetched ahead)",
    "s3dlio-0.10.0": "the reference release from PyPI: get_many / get / put_many; its "
    "ObjectStoreIterableDataset in torch's DataLoader for the epoch",
    "s3torchconnector": "S3MapDataset / S3Client with 32 threads; torch DataLoader(num_workers=2) "
    "over S3MapDataset for the epoch",
    "boto3": "32 threads (get_object / put_object; download_fileobj / upload_fileobj for 1 GiB and "
    "16 MiB); torch DataLoader(num_workers=2) over a boto3 map dataset for the epoch",
    "s5cmd": "s5cmd cp with a wildcard (downloads to /dev/shm)",
    "cat": "cat of the 64 files into a pipe read by Python",
    "numpy.fromfile": "numpy.fromfile per file",
    "dd": "dd if=FILE of=/dev/null bs=4M iflag=direct per file",
    MEMCPY: "not a client and not a peer: the ceiling for (e1), one core's memory-to-memory copy of "
    "the same bytes: the files read (before the clock) into one source array, then `numpy.copyto` "
    "of each file's slice in turn into one reused, pre-touched destination array of one file's size "
    "(no page cache, system calls or page faults; the destination may stay in the CPU's cache, "
    "so the ceiling errs high)",
}
CHECKPOINT_LABELS = {
    "s3dlio.checkpoint": "`s3dlio.checkpoint.save(state, uri)` (torch.save streamed through "
    '`s3dlio.open(uri, "wb")`, default part size and parts in flight) / '
    '`s3dlio.checkpoint.load(uri)` (torch.load over `s3dlio.open(uri, "rb")`)',
    "s3dlio.dcp": "`torch.distributed.checkpoint.save/load(..., storage_writer=s3dlio.dcp.StorageWriter(uri)` "
    "/ `storage_reader=s3dlio.dcp.StorageReader(uri)`, `no_dist=True`), one process",
    "s3torchconnector S3Checkpoint": "`torch.save(state, S3Checkpoint(region, endpoint).writer(uri))` / "
    "`torch.load(S3Checkpoint(...).reader(uri))` (its default sequential reader)",
    "s3torchconnector DCP": "DCP with `S3StorageWriter(region, uri)` (thread_count=1, its default) / "
    "`S3StorageReader(region, uri)` (its default DCP-optimized reader); version 1.5 takes no "
    "endpoint for DCP, so the harness gives their file system an `S3Client` with the local endpoint",
    "torch.save + boto3": "`torch.save` to a file in the data directory, then boto3 `upload_file` "
    "(TransferConfig(max_concurrency=32), 8 MiB parts), file deleted / `download_file` to that "
    "directory, then `torch.load`, file deleted (both steps timed)",
    "torch.save": "`torch.save(state, path)` / `torch.load(path)`: the floor",
    "torch DCP FileSystemWriter": "DCP with torch's `FileSystemWriter(path)` (it fsyncs) / "
    "`FileSystemReader(path)`",
}


# ---------------------------------------------------------------------------------------------
# Processes: the server's CPU time, the clients' interpreters
# ---------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds the machine's cores have run anything (user, nice, system, irq, softirq; not
    idle, I/O wait or time stolen by the hypervisor), from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks[i] for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")


def client_python(client: str, ref_python: str | None) -> str | None:
    """The interpreter that runs ``client``, or None when the client is not installed."""
    if client in ("cat", "dd"):
        return sys.executable if shutil.which(client) else None
    if client == "s3dlio-0.10.0":
        return ref_python if ref_python and os.path.exists(ref_python) else None
    if client == "s5cmd":
        exe = shutil.which("s5cmd") or os.path.join(os.path.dirname(sys.executable), "s5cmd")
        return sys.executable if os.path.exists(exe) else None
    code = {
        "numpy.fromfile": "import numpy",
        MEMCPY: "import numpy",
        ITER_GET: "import s3dlio; s3dlio.iter_get",
    }.get(client, f"import {client}")
    # -P, as the clients run: from the repository root, `-c` would find the source tree's s3dlio
    # (no extension) before the installed one.
    probe = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def elf_sections(path: str) -> set[str]:
    """Section names of an ELF64 little-endian shared object (empty when it is not one)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return set()
        (shoff,) = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        headers = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
        _name, _type, _flags, _addr, str_off, str_size = headers[shstrndx]
        f.seek(str_off)
        names = f.read(str_size)
    return {names[h[0] : names.index(b"\0", h[0])].decode() for h in headers}


def extension_build() -> str:
    """What kind of build the installed s3dlio extension is: the dev profile keeps line tables
    (``debug = "line-tables-only"`` in Cargo.toml), the release profile has no debug sections."""
    try:
        sections = elf_sections(s3dlio._core.__file__)
    except (OSError, ValueError, IndexError, AttributeError):
        return "extension build unknown"
    if not sections:
        return "extension build unknown"
    if ".debug_line" in sections or ".debug_info" in sections:
        return "extension built with debug sections: the dev profile, not release"
    return "extension without debug sections: release profile"


def version_of(python: str, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    bytes: int
    objects: int
    cpu_s: float
    rss_mib: float
    server_cpu_s: float
    extra_mib: float | None = None  # checkpoints: peak RSS above the state dict (bench_checkpoint.py)
    other_cpu_s: float | None = None  # checkpoints: CPU time of every other process on the machine

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6

    @property
    def obj_s(self) -> float:
        return self.objects / self.seconds

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu_s / self.seconds


@dataclass
class Series:
    workload: str
    client: str
    runs: list[Run] = field(default_factory=list)
    storage: str = ""  # checkpoints: "s3" or "file"
    op: str = ""  # checkpoints: "save" or "load"

    def stat(self, name: str) -> tuple[float, float, float]:
        values = [getattr(r, name) for r in self.runs]
        return statistics.median(values), min(values), max(values)

    def summary(self) -> dict[str, Any]:
        bytes_, objects = self.runs[0].bytes, self.runs[0].objects
        cpu = self.stat("cpu_s")[0]
        return {
            "workload": self.workload,
            "client": self.client,
            "reps": len(self.runs),
            "mb_s": self.stat("mb_s"),
            "obj_s": self.stat("obj_s"),
            "cpu_s_per_gb": cpu / (bytes_ / 1e9),
            "cpu_s_per_1k_objects": cpu / (objects / 1000),
            "server_cpu_pct": self.stat("server_pct")[0],
            "peak_rss_mib": max(r.rss_mib for r in self.runs),
            **(self._checkpoint() if self.op else {}),
        }

    def _checkpoint(self) -> dict[str, Any]:
        other = [100 * (r.other_cpu_s or 0.0) / r.seconds for r in self.runs]
        return {
            "storage": self.storage,
            "op": self.op,
            "bytes_gb": self.runs[0].bytes / 1e9,
            "tensors": self.runs[0].objects,
            "gb_s": tuple(v / 1000 for v in self.stat("mb_s")),
            "extra_mib": max(r.extra_mib or 0.0 for r in self.runs),
            "other_cpu_pct": statistics.median(other),
        }


def _stderr(err: str) -> str:
    """A failed child's stderr for the error message: all of it up to 20,000 characters, else its
    start and its end (the first exception of a chained traceback is at the start)."""
    return (
        err
        if len(err) <= 20_000
        else f"{err[:6000]}\n[... {len(err) - 20_000} characters ...]\n{err[-14000:]}"
    )


def drive(
    cmd: list[str], env: dict[str, str], jobs: int, server_pid: int, what: str
) -> list[tuple[dict[str, Any], float, float]]:
    """Run one measurement process through its handshake, once per job: it prints ``READY``
    when set up, gets a line on stdin, does the timed work and prints ``RESULT {json}``. For each
    job: the result, the server's CPU seconds and the machine's busy CPU seconds in that window."""
    child = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    out: list[tuple[dict[str, Any], float, float]] = []
    try:
        for _ in range(jobs):
            line = child.stdout.readline()
            if line.strip() != "READY":
                _, err = child.communicate(timeout=60)
                raise RuntimeError(f"{what}: did not start: {line!r} {_stderr(err)}")
            before, busy = proc_cpu_seconds(server_pid), busy_cpu_seconds()
            child.stdin.write("go\n")
            child.stdin.flush()
            line = child.stdout.readline()
            after, busy = proc_cpu_seconds(server_pid), busy_cpu_seconds() - busy
            if not line.startswith("RESULT "):
                rest, err = child.communicate(timeout=60)
                raise RuntimeError(
                    f"{what}: failed (rc {child.returncode}): {line!r} {rest!r} {_stderr(err)}"
                )
            out.append((json.loads(line[len("RESULT ") :]), after - before, busy))
        rest, err = child.communicate(timeout=600)
        if child.returncode != 0:
            raise RuntimeError(f"{what}: failed (rc {child.returncode}): {rest!r} {_stderr(err)}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out


def measure(python: str, client: str, kind: str, spec: dict[str, Any], server_pid: int, pin: bool) -> Run:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)  # thousands of URIs: too long for one command-line argument
    cmd = [python, "-P", str(HERE / "bench_client.py"), client, kind, f.name]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    env = dict(os.environ)
    if client == "s3dlio-0.10.0":
        env.pop("PYTHONPATH", None)  # never this checkout's s3dlio in the reference's interpreter
        env["BENCH_EXTRA_SITE"] = sysconfig.get_paths()["purelib"]  # torch, for its epoch
    try:
        ((r, server_cpu, _busy),) = drive(cmd, env, 1, server_pid, f"{client} {kind}")
    finally:
        os.unlink(f.name)
    return Run(r["seconds"], r["bytes"], r["objects"], r["cpu_s"], r["rss_mib"], server_cpu)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def s3_dataset(bucket: str, w: Workload, quick: bool) -> dict[str, Any]:
    n, size = w.shape(quick)
    prefix = f"s3://{bucket}/{w.key}-{n}x{size}/"
    uris = [f"{prefix}{i:05d}.bin" for i in range(n)]
    existing = {o.uri for o in s3dlio.list(prefix)}
    if existing != set(uris):
        block = os.urandom(size)
        batch: list[tuple[str, bytes]] = []
        for i, uri in enumerate(uris):
            batch.append((uri, i.to_bytes(8, "little") + block[8:]))
            if len(batch) * size >= 256 * MIB or i == n - 1:
                s3dlio.put_many(batch)
                batch = []
    return {"uris": uris, "size": size, "prefix": prefix}


def file_dataset(data_dir: Path, w: Workload, quick: bool) -> dict[str, Any]:
    n, size = w.shape(quick)
    folder = data_dir / f"files-{n}x{size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.bin" for i in range(n)]
    for i, p in enumerate(paths):
        if not p.exists() or p.stat().st_size != size:
            with open(p, "wb") as f:
                f.write(i.to_bytes(8, "little") + os.urandom(size - 8))
    scheme = "file" if w.kind == "file" else "direct"
    return {"uris": [f"{scheme}://{p}" for p in paths], "size": size, "prefix": f"{scheme}://{folder}/"}


def warm_page_cache(spec: dict[str, Any]) -> None:
    for uri in spec["uris"]:
        with open(uri.split("://", 1)[1], "rb") as f:
            while f.read(8 * MIB):
                pass


# ---------------------------------------------------------------------------------------------
# Checkpoints (k1, k4): bench_checkpoint.py, one process per save and per load
# ---------------------------------------------------------------------------------------------


def checkpoint_clients(python: str, only: set[str] | None) -> tuple[list[str], list[str]]:
    """The checkpoint clients whose modules import (one probe process), and the rest, with why."""
    wanted = [c for c in CHECKPOINT_CLIENTS if only is None or c in only]
    probe = (
        "import importlib, json, sys\n"
        "ok = {}\n"
        "for c, mods in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        [importlib.import_module(m) for m in mods]\n"
        "        ok[c] = ''\n"
        "    except Exception as e:\n"
        "        ok[c] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps(ok))\n"
    )
    mods = {c: CHECKPOINT_CLIENTS[c] for c in wanted}
    out = subprocess.run([python, "-P", "-c", probe, json.dumps(mods)], capture_output=True, text=True)
    if out.returncode != 0:
        return [], [f"{c} (probe failed: {out.stderr.strip()[-200:]})" for c in wanted]
    errors = json.loads(out.stdout)
    have = [c for c in wanted if not errors[c]]
    return have, [f"{c} ({errors[c]})" for c in wanted if errors[c]]


def checkpoint_location(row: str, key: str, rep: int, bucket: str, data_dir: Path) -> tuple[str, str]:
    """The URI a row's checkpoint goes to (a key, or a prefix for DCP) and what to delete after."""
    storage, client = row.split(":", 1)
    slug = "".join(ch if ch.isalnum() else "-" for ch in client.lower())
    name = "dcp" if "DCP" in client or client.endswith(".dcp") else "model.pt"
    if storage == "s3":
        prefix = f"s3://{bucket}/ckpt-{key}-{slug}-{rep}/"
        return prefix + name, prefix
    folder = (data_dir / f"ckpt-{key}-{slug}-{rep}").resolve()
    return f"file://{folder}/{name}", f"file://{folder}/"


def remove(location: str) -> None:
    if location.startswith("s3://"):
        s3dlio.delete_prefix(location)
    else:
        shutil.rmtree(location.split("://", 1)[1], ignore_errors=True)


def run_checkpoints(
    w: Workload,
    rows: list[str],
    python: str,
    ctx: dict[str, Any],
    series: dict[tuple[str, ...], Series],
) -> None:
    """Save then load for every row, rotating the rows' order across repetitions; each save and
    each load a fresh process (``--quick``: every job in one process), objects deleted after."""
    quick, pin, server = ctx["quick"], ctx["pin"], ctx["server"]
    reps = ctx["reps_of"][w.key]
    _n, target = w.shape(quick)
    scratch = (ctx["data_dir"] / "ckpt-scratch").resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    base = {"target": target, "endpoint": server.endpoint, "region": server.region}

    def run(jobs: list[dict[str, Any]]) -> list[Run]:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(dict(base, jobs=jobs), f)
        cmd = [python, "-P", str(HERE / "bench_checkpoint.py"), f.name]
        if pin:
            cmd = ["taskset", "-c", "0", *cmd]
        what = ", ".join(f"{j['storage']}:{j['client']} {j['op']}" for j in jobs)
        try:
            got = drive(cmd, dict(os.environ), len(jobs), server.pid, what)
        finally:
            os.unlink(f.name)
        return [
            Run(r["seconds"], r["bytes"], r["objects"], r["cpu_s"], r["rss_mib"], srv, r["extra_mib"],
                max(0.0, busy - r["cpu_s"] - srv))
            for r, srv, busy in got
        ]  # fmt: skip

    def record(job: dict[str, Any], r: Run) -> None:
        key = (w.key, job["storage"], job["client"], job["op"])
        s = series.setdefault(key, Series(w.key, job["client"], storage=job["storage"], op=job["op"]))
        s.runs.append(r)
        print(
            f"  rep {len(s.runs)} {job['storage']:4s} {job['client']:30s} {job['op']:4s} "
            f"{r.mb_s / 1000:6.2f} GB/s  cpu {r.cpu_s:6.2f} s  server {r.server_pct:4.0f} %  "
            f"others {100 * (r.other_cpu_s or 0) / r.seconds:4.0f} %  extra rss {r.extra_mib or 0:7.0f} MiB",
            flush=True,
        )

    for rep in range(reps):
        order = rows[rep % len(rows) :] + rows[: rep % len(rows)]
        jobs, places = [], []
        for row in order:
            storage, client = row.split(":", 1)
            uri, place = checkpoint_location(row, w.key, rep, ctx["bucket"], ctx["data_dir"])
            remove(place)
            places.append(place)
            for op in ("save", "load"):
                jobs.append(
                    {"client": client, "op": op, "storage": storage, "uri": uri, "scratch": str(scratch)}
                )
        try:
            if quick:
                for job, r in zip(jobs, run(jobs), strict=True):
                    record(job, r)
            else:
                for i, job in enumerate(jobs):
                    record(job, run([job])[0])
                    if job["op"] == "load":
                        remove(places[i // 2])
        finally:
            for place in places:
                remove(place)
    shutil.rmtree(scratch, ignore_errors=True)


def writer_window() -> dict[str, Any]:
    """s3dlio's default streaming-writer window (part size x parts in flight) and reader window
    (readahead x chunk size), read from s3dlio: StorageConfig and RangeEngineConfig for the sizes;
    the counts from a module constant when s3dlio has one, else from ``s3dlio.open``'s docstring
    (the defaults of its ``None`` arguments are resolved in the core)."""
    import re

    out: dict[str, Any] = {"part_size": s3dlio.StorageConfig().part_size}
    try:
        out["chunk_size"] = s3dlio.RangeEngineConfig().chunk_size
    except (AttributeError, TypeError):
        out["chunk_size"] = None
    files = getattr(s3dlio, "files", None)
    doc = getattr(getattr(s3dlio, "open", None), "__doc__", None) or ""
    for name, const in (
        ("max_parts_in_flight", "DEFAULT_MAX_PARTS_IN_FLIGHT"),
        ("readahead", "DEFAULT_READAHEAD"),
    ):
        value = getattr(s3dlio, const, None) or getattr(files, const, None)
        source = f"s3dlio.{const}"
        if not isinstance(value, int):
            m = re.search(rf"``{name}``\s*\([^)]*?default (\d+)", doc)
            value, source = (int(m.group(1)), "s3dlio.open's docstring") if m else (None, "not found")
        out[name], out[name + "_source"] = value, source
    return out


# ---------------------------------------------------------------------------------------------
# Report: JSON, chart, Markdown
# ---------------------------------------------------------------------------------------------


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 10 else f"{v:,.2f}"


def rng(t: tuple[float, float, float]) -> str:
    return f"{fmt(t[0])} ({fmt(t[1])}-{fmt(t[2])})"


def role(client: str) -> str:
    """A transfer row's part in the verdicts: "ours" (s3dlio itself, any of its rows), "ceiling"
    (a bound that is not a client) or "peer" (everything else, the reference s3dlio included)."""
    return "ours" if client in OURS else "ceiling" if client in CEILINGS else "peer"


def row_name(client: str, rows: list[dict[str, Any]], markdown: bool = True) -> str:
    """A row's name in a table or chart: s3dlio's rows in bold, its get_many row named as such
    where s3dlio has another row (iter_get), a ceiling marked as not a peer."""
    two = sum(role(r["client"]) == "ours" for r in rows) > 1
    name = f"{client} (get_many)" if client == "s3dlio" and two else client
    if role(client) == "ours":
        return f"**{name}**" if markdown else name
    if role(client) == "ceiling":
        return f"_{name}_, not a peer" if markdown else name
    return name


def targets(w: Workload, rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for this workload, checked against this run's medians. Where s3dlio
    has several rows (get_many and iter_get), each verdict takes its best row for that target
    and names it, with the others' ratios."""
    mine = [r for r in rows if role(r["client"]) == "ours"]
    peers = [r for r in rows if role(r["client"]) == "peer"]
    if not mine:
        return []
    speed = "obj_s" if w.unit == "objects/s" else "mb_s"

    def verdict(what: str, metric: str, base: float, need: float, higher: bool = True) -> str:
        def value(r: dict[str, Any]) -> float:
            v = r[metric]
            return float(v[0] if isinstance(v, list | tuple) else v)  # (median, min, max) or one

        ratios = {row_name(r["client"], rows, markdown=False): value(r) / base for r in mine}
        pick = (max if higher else min)(ratios, key=ratios.__getitem__)
        ok = ratios[pick] >= need if higher else ratios[pick] <= need
        text = f"{what} {ratios[pick]:.2f}x (target {'≥' if higher else '≤'} {need}x): {'met' if ok else 'missed'}"
        if len(ratios) > 1:
            rest = ", ".join(f"`{c}` {v:.2f}x" for c, v in ratios.items() if c != pick)
            which = "best" if higher else "lowest"
            text += f" (s3dlio's {which} row, `{pick}`; {rest})"
        return text

    out = []
    tool = {"file": "cat", "direct": "dd"}.get(w.kind)
    base = next((r for r in peers if r["client"] == tool), None)
    if base:
        out.append(verdict(f"throughput vs `{tool}`", "mb_s", base["mb_s"][0], 0.9))
    if w.kind == "file":
        fromfile = next((r for r in peers if r["client"] == "numpy.fromfile"), None)
        if fromfile:
            out.append(verdict("throughput vs `numpy.fromfile`", "mb_s", fromfile["mb_s"][0], 1.0))
        ceiling = next((r for r in rows if r["client"] == MEMCPY), None)
        if ceiling:
            what = f"throughput vs `{MEMCPY}` (one core's memory copy, not a peer; the goal: within 2x)"
            out.append(verdict(what, "mb_s", ceiling["mb_s"][0], 0.5))
    if not peers:
        return out
    need = 1.25 if w.kind == "epoch" else 1.0
    best = max(peers, key=lambda r: r[speed][0])
    out.append(verdict(f"throughput vs best peer ({best['client']})", speed, best[speed][0], need))
    if w.cpu_targets:
        metric = "cpu_s_per_1k_objects" if w.unit == "objects/s" else "cpu_s_per_gb"
        lowest = min(peers, key=lambda r: r[metric])
        what = "per 1,000 objects" if w.unit == "objects/s" else "per GB"
        out.append(
            verdict(f"client CPU {what} vs lowest peer ({lowest['client']})", metric, lowest[metric], 0.5,
                    higher=False)
        )  # fmt: skip
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [w for w in WORKLOADS if any(r["workload"] == w.key for r in results["summary"])]
    cols = 3
    nrows = -(-len(done) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(done) :]:
        ax.axis("off")
    for ax, w in zip(axes.flat, done, strict=False):
        rows = [r for r in results["summary"] if r["workload"] == w.key]
        speed = "obj_s" if w.unit == "objects/s" else "mb_s"
        rows.sort(key=lambda r: r[speed][0])
        med = [r[speed][0] for r in rows]
        lo = [r[speed][0] - r[speed][1] for r in rows]
        hi = [r[speed][2] - r[speed][0] for r in rows]
        colors = [{"ours": "#d62728", "ceiling": "#1f77b4"}.get(role(r["client"]), "#7f7f7f") for r in rows]
        names = [row_name(r["client"], rows, markdown=False) for r in rows]
        ax.barh(names, med, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_title(f"({w.key}) {w.title}", fontsize=9)
        ax.set_xlabel(w.unit + " (median, min-max)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(results["title"] + ": s3dlio red, peers grey, memcpy ceiling blue", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any], chart_name: str | None) -> str:
    m, v = results["machine"], results["versions"]
    lines = [
        f"Generated by `{results['command']}` on {results['date']} ({results['mode']}, "
        f"{reps_text(results)}, clients in rotating order).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}.",
        f"- Pinning: {results['pinning']}.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "- Client CPU is user + system time of the client process and its reaped children (s5cmd, "
        "dd, torch's worker processes) during the timed section; server CPU % is SeaweedFS's CPU time "
        "over the same window (100 % = its one core). Peak RSS is the client process's (the largest "
        "of it and its children).",
    ]
    for retry in results.get("peer_retries", []):
        lines.append(
            f"- A peer's measurement failed and was retried once (its retry is the one shown): {retry}"
        )
    clients = {r["client"] for r in results["summary"]}
    if ITER_GET in clients or MEMCPY in clients:
        lines.append(
            "- Rows in bold are s3dlio (this project). Where it has two, `s3dlio (get_many)` and "
            f"`{ITER_GET}` (its streaming API, measured as a row of its own), a verdict takes s3dlio's "
            "best row for that target and names it. The peers are every other client, the "
            f"reference s3dlio release included; `{MEMCPY}` is not a peer (it is left out of "
            "the best-peer comparisons): it bounds what a page-cache read can reach on one core."
        )
    if results["skipped"]:
        lines.append("- Not measured: " + "; ".join(results["skipped"]) + ".")
    lines.append("")
    if chart_name:
        lines += [f"![benchmark chart]({chart_name})", ""]
    for w in WORKLOADS:
        rows = [r for r in results["summary"] if r["workload"] == w.key]
        if not rows:
            continue
        n, size = w.shape(results["mode"] == "quick")
        speed = "obj_s" if w.unit == "objects/s" else "mb_s"
        rows.sort(key=lambda r: -r[speed][0])
        lines += [
            f"### ({w.key}) {w.title}"
            + (f" — quick: {n} x {size // KIB} KiB" if results["mode"] == "quick" else ""),
            "",
            "| client | MB/s | objects/s | CPU s / GB | CPU s / 1k obj | server CPU % | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            name = row_name(r["client"], rows)
            lines.append(
                f"| {name} | {rng(r['mb_s'])} | {rng(r['obj_s'])} | {fmt(r['cpu_s_per_gb'])} | "
                f"{fmt(r['cpu_s_per_1k_objects'])} | {r['server_cpu_pct']:.0f} | {r['peak_rss_mib']:,.0f} |"
            )
        lines.append("")
        for t in targets(w, rows):
            lines.append(f"- Target: {t}")
        lines.append("")
    lines.append("How each client is driven:")
    lines.append("")
    window = (results.get("s3dlio_defaults") or {}).get("max_concurrency", "?")
    for client, label in LABELS.items():
        if client in (*CEILINGS, ITER_GET) and client not in clients:
            continue
        lines.append(f"- {client}: {label.format(max_concurrency=window)}.")
    return "\n".join(lines) + "\n"


def ours(client: str) -> bool:
    return client.startswith("s3dlio")


def checkpoint_targets(rows: list[dict[str, Any]], window: dict[str, Any]) -> list[str]:
    """The issue's checkpoint goals, checked against this run's medians (peak memory: the largest
    of the repetitions)."""
    get = {(r["storage"], r["client"], r["op"]): r for r in rows}
    out = []
    for op in ("save", "load"):
        peers = [r for r in rows if r["storage"] == "s3" and r["op"] == op and not ours(r["client"])]
        if not peers:
            continue
        best = max(peers, key=lambda r: r["gb_s"][0])
        for client in ("s3dlio.checkpoint", "s3dlio.dcp"):
            me = get.get(("s3", client, op))
            if me:
                ratio = me["gb_s"][0] / best["gb_s"][0]
                out.append(
                    f"S3 {op}, `{client}` vs best peer ({best['client']}) {ratio:.2f}x (target ≥ 1.5x): "
                    f"{'met' if ratio >= 1.5 else 'missed'}"
                )
    part, parts = window.get("part_size"), window.get("max_parts_in_flight")
    if part and parts:
        bound = 1.1 * part * parts / MIB
        for r in rows:
            if ours(r["client"]):
                out.append(
                    f"peak extra RSS, `{r['client']}` {r['op']} on {r['storage']}: {r['extra_mib']:,.0f} MiB "
                    f"(target ≤ {part // MIB} MiB x {parts} parts + 10 % = {bound:,.0f} MiB): "
                    f"{'met' if r['extra_mib'] <= bound else 'missed'}"
                )
    floor = get.get(("file", "torch.save", "save"))
    for client in ("s3dlio.checkpoint", "s3dlio.dcp"):
        me = get.get(("file", client, "save"))
        if floor and me:
            ratio = me["gb_s"][0] / floor["gb_s"][0]
            out.append(
                f"file:// save, `{client}` vs `torch.save` to a local file {ratio:.2f}x (target ≥ 0.9x): "
                f"{'met' if ratio >= 0.9 else 'missed'}"
            )
    return out


def checkpoint_rows(results: dict[str, Any], key: str) -> list[tuple[str, str]]:
    """(storage, client) of a workload's rows: S3 first, s3dlio first, then by save speed."""
    rows = [r for r in results["summary"] if r["workload"] == key]
    saves = {(r["storage"], r["client"]): r["gb_s"][0] for r in rows if r["op"] == "save"}
    pairs = list(dict.fromkeys((r["storage"], r["client"]) for r in rows))
    return sorted(pairs, key=lambda p: (p[0] != "s3", not ours(p[1]), -saves.get(p, 0.0)))


def checkpoint_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [w for w in WORKLOADS if any(r["workload"] == w.key for r in results["summary"])]
    fig, axes = plt.subplots(len(done) or 1, 2, figsize=(12, 3.4 * (len(done) or 1)), squeeze=False)
    for axrow, w in zip(axes, done, strict=False):
        pairs = checkpoint_rows(results, w.key)[::-1]
        get = {(r["storage"], r["client"], r["op"]): r for r in results["summary"] if r["workload"] == w.key}
        for ax, op in zip(axrow, ("save", "load"), strict=True):
            have = [p for p in pairs if (*p, op) in get]
            t = [get[(*p, op)]["gb_s"] for p in have]
            colors = ["#d62728" if ours(c) else "#7f7f7f" if st == "s3" else "#bcbd22" for st, c in have]
            ax.barh(
                [f"{c} ({st})" for st, c in have], [v[0] for v in t],
                xerr=[[v[0] - v[1] for v in t], [v[2] - v[0] for v in t]], color=colors, capsize=3,
            )  # fmt: skip
            gb = next(iter(get.values()))["bytes_gb"] if get else 0
            ax.set_title(f"({w.key}) {op} of a {gb:.2f} GB state dict", fontsize=9)
            ax.set_xlabel(
                "GB/s (median, min-max); s3dlio red, S3 peers grey, file:// peers olive", fontsize=8
            )
            ax.tick_params(labelsize=8)
    fig.suptitle(results["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def checkpoint_markdown(results: dict[str, Any], chart_name: str | None) -> str:
    m, v, dd = results["machine"], results["versions"], results["data_dir"]
    win = results["window"]
    runs = ", ".join(
        f"{k} by `{meta['command']}` on {meta['date']}" for k, meta in sorted(results["workloads"].items())
    )
    lines = [
        f"Generated by `benchmarks/bench.py`, the harness of `nox -s bench` ({results['mode']}): {runs}. "
        "Each repetition "
        "saves, then loads, every row (rows in rotating order from one repetition to the next); "
        "the table gives medians (min-max) over the repetitions.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}. It was shared with other work (builds, test suites) while it ran: "
        'see the load averages under each table and the "others" column.',
        f"- Pinning: {results['pinning']}.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- `file://` rows and the boto3 row's local file: `{dd['path']}` ({dd['fstype']} on {dd['source']}, "
        "a real disk, not tmpfs). Page cache: a `file://` save is timed until its files and their "
        "directory are fsynced (an fsync inside the clock after every client's save, a no-op for a "
        "client that fsynced already, as DCP's FileSystemWriter does; `torch.save` does not), and before a `file://` load the checkpoint's pages are "
        "dropped from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)` on every file), so it "
        "reads the disk. The boto3 row's local file is neither fsynced nor evicted (the usual "
        "`torch.save` then `upload_file`). S3 loads read what SeaweedFS wrote seconds before: its "
        "volume files are in this machine's page cache.",
        "- GB/s: the state dict's bytes (the sum of its tensors' sizes, 10^9 bytes = 1 GB) over the "
        "wall time of the timed call. CPU s / GB: user + system CPU time of the client process (and "
        "its reaped children) over the timed call, per GB of state dict. Server CPU %: SeaweedFS's "
        "CPU time over the same window (100 % = its one core). Others %: CPU time of everything "
        "else on the machine over that window (busy time from /proc/stat minus client and server; "
        "100 % = one core).",
        "- Peak extra RSS: each save and each load runs in a fresh process; just before the clock "
        "starts it resets its RSS high-water mark (`echo 5 > /proc/self/clear_refs`) and reads its RSS "
        "(VmRSS); after the call, extra = VmHWM - that RSS, minus the state dict's size for loads "
        "that create the state dict (`torch.load`-based rows). For saves, and for DCP loads (which "
        "fill tensors allocated and written before the clock), the state dict is already in the "
        "baseline. The largest of the repetitions.",
        f"- s3dlio's defaults (read from s3dlio: sizes from StorageConfig / RangeEngineConfig, counts "
        f"from {win.get('max_parts_in_flight_source')}): writer part size {(win.get('part_size') or 0) // MIB} MiB "
        f"x {win.get('max_parts_in_flight')} parts in flight; reader readahead {win.get('readahead')} chunks "
        f"of {(win.get('chunk_size') or 0) / MIB:g} MiB.",
        "- Every load is checked byte for byte against the state dict saved (outside the clock).",
    ]
    if results["skipped"]:
        lines.append("- Not measured: " + "; ".join(results["skipped"]) + ".")
    lines.append("")
    if chart_name:
        lines += [f"![checkpoint chart]({chart_name})", ""]
    for w in WORKLOADS:
        rows = [r for r in results["summary"] if r["workload"] == w.key]
        if not rows:
            continue
        get = {(r["storage"], r["client"], r["op"]): r for r in rows}
        gb = rows[0]["bytes_gb"]
        meta = results["workloads"].get(w.key, {})
        la = meta.get("load_average", {})
        n = meta.get("reps", "?")
        lines += [
            f"### ({w.key}) {w.title}" + (f" — quick: {gb:.3f} GB" if results["mode"] == "quick" else ""),
            "",
            f"`{meta.get('command')}`, {meta.get('date')}: {n} repetition{'s' if n != 1 else ''}, "
            f"{meta.get('wall_s')} s; load average (1, 5, 15 min) {' '.join(la.get('start', []))} before, "
            f"{' '.join(la.get('end', []))} after.",
            "",
            f"State dict: {rows[0]['tensors']} tensors, {gb:.3f} GB ({gb * 1e9 / GIB:.3f} GiB)"
            + (f": {STATE_SHAPE[w.key]}." if results["mode"] == "full" else "."),
            "",
            "| storage | client | save GB/s | save CPU s/GB | save extra RSS MiB | load GB/s | load CPU s/GB "
            "| load extra RSS MiB | server CPU % save / load | others % save / load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for storage, client in checkpoint_rows(results, w.key):
            sv, ld = get.get((storage, client, "save")), get.get((storage, client, "load"))

            def cell(r: dict[str, Any] | None, what: str) -> str:
                if r is None:
                    return "-"
                if what == "gb_s":
                    g = r["gb_s"]
                    return f"{g[0]:.3f} ({g[1]:.3f}-{g[2]:.3f})"
                if what == "cpu":
                    return fmt(r["cpu_s_per_gb"])
                return f"{r['extra_mib']:,.0f}"

            pct = " / ".join(f"{r['server_cpu_pct']:.0f}" if r else "-" for r in (sv, ld))
            oth = " / ".join(f"{r['other_cpu_pct']:.0f}" if r else "-" for r in (sv, ld))
            name = f"**{client}**" if ours(client) else client
            lines.append(
                f"| {storage} | {name} | {cell(sv, 'gb_s')} | {cell(sv, 'cpu')} | {cell(sv, 'mem')} | "
                f"{cell(ld, 'gb_s')} | {cell(ld, 'cpu')} | {cell(ld, 'mem')} | {pct} | {oth} |"
            )
        lines.append("")
        for t in checkpoint_targets(rows, win):
            lines.append(f"- Target: {t}")
        lines.append("")
    lines.append("How each client is driven:")
    lines.append("")
    for client, label in CHECKPOINT_LABELS.items():
        lines.append(f"- {client}: {label}.")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


CKPT_BEGIN, CKPT_END = "<!-- bench-checkpoint:begin -->", "<!-- bench-checkpoint:end -->"


def update_doc(doc: Path, section: str, begin: str = BEGIN, end: str = END, heading: str = "") -> None:
    """Replace what lies between ``begin`` and ``end`` in ``doc`` (appended, under ``heading``,
    when the markers are missing); the rest of the file is left as it is."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin not in text or end not in text:
        text += f"\n{heading}\n\n{begin}\n{end}\n" if heading else f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{section}{end}{tail}")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small versions, one repetition (checks the harness)"
    )
    ap.add_argument(
        "--reps", default=None,
        help="repetitions of every workload (default: 5 for c, d, e1, e2, g1, 3 for the others; "
        "quick 1); per workload with KEY=N: --reps 3,k4=1, --reps c=7",
    )  # fmt: skip
    ap.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS))
    ap.add_argument(
        "--only", choices=GROUPS, default=None,
        help="only the transfer workloads (a-g) or only the checkpoint workloads (k1, k4)",
    )  # fmt: skip
    ap.add_argument(
        "--clients", default=None,
        help=f"comma-separated subset of clients (the {', '.join(CEILINGS)} row runs whatever it says)",
    )  # fmt: skip
    ap.add_argument("--ref-python", default=str(ROOT / ".bench" / "ref" / "bin" / "python"))
    ap.add_argument(
        "--data-dir", default=str(ROOT / ".bench" / "data"),
        help="files for (e) and the file:// checkpoints: on a real disk",
    )  # fmt: skip
    ap.add_argument(
        "--out", default=str(ROOT / "docs" / "benchmarks"),
        help="results.json, bench.png, checkpoint.json, checkpoint.png",
    )  # fmt: skip
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="Markdown to update")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the charts and Markdown from --out's results.json / checkpoint.json",
    )
    args = ap.parse_args()
    out = Path(args.out)
    if args.report_only:
        for group in GROUPS:
            path = out / RESULTS[group]
            if path.exists():
                report(json.loads(path.read_text()), out, Path(args.doc))
        return 0

    quick = args.quick
    reps_of = parse_reps(args.reps, quick)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    chosen = [
        w for w in WORKLOADS
        if w.key in args.workloads.split(",") and (args.only is None or w.group == args.only)
        and not (quick and w.quick_count == 0)
    ]  # fmt: skip
    only = set(args.clients.split(",")) if args.clients else None
    data_dir = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    pythons: dict[str, str] = {}
    skipped: list[str] = []
    if client_python("s3dlio", None) is None:  # whatever --clients says: the subject of the run
        print("bench: error: s3dlio cannot be imported with -P (is it installed?)", file=sys.stderr)
        return 2
    for client in dict.fromkeys(c for w in chosen if w.group == "transfer" for c in w.clients):
        if only is not None and client not in only and client not in CEILINGS:
            continue
        py = client_python(client, args.ref_python)
        if py is None:
            # A client that silently drops out would leave a table that compares nothing (or, for
            # s3dlio itself, a benchmark of the peers alone): leave it out with --clients instead.
            print(
                f"bench: error: client {client!r} is not installed (or cannot be imported with -P); "
                "install it, or leave it out with --clients",
                file=sys.stderr,
            )
            return 2
        pythons[client] = py
    ckpt_clients: list[str] = []
    ckpt_skipped: list[str] = []
    if any(w.group == "checkpoint" for w in chosen):
        ckpt_clients, ckpt_skipped = checkpoint_clients(sys.executable, only)

    versions = {"s3dlio (this)": s3dlio.__version__}
    for client, module in (
        ("s3dlio-0.10.0", "s3dlio"),
        ("s3torchconnector", "s3torchconnector"),
        ("boto3", "boto3"),
    ):
        if client in pythons:
            versions[client if client != "s3dlio-0.10.0" else "s3dlio (reference)"] = version_of(
                pythons[client], module
            )
    if "s5cmd" in pythons:
        versions["s5cmd"] = version_of(sys.executable, "s5cmd")
    for module in ("torch", "numpy"):
        versions[module] = version_of(sys.executable, module)
    ckpt_versions = {"s3dlio (this)": f"{s3dlio.__version__} ({extension_build()})"}
    for module in ("torch", "s3torchconnector", "boto3"):
        if any(module in " ".join(CHECKPOINT_CLIENTS[c]) for c in ckpt_clients):
            ckpt_versions[module] = version_of(sys.executable, module)

    server = LocalS3Server(cpu=1 if pin else None).start()
    try:
        server.apply_env()
        assert server.pid is not None
        weed = subprocess.run([shutil.which("weed") or "weed", "version"], capture_output=True, text=True)
        versions["SeaweedFS"] = weed.stdout.split()[2] if len(weed.stdout.split()) > 2 else "?"
        ckpt_versions["SeaweedFS"] = versions["SeaweedFS"]
        if pin:  # every thread of the server on core 1, whatever taskset at start covered
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "1", str(server.pid)], check=True, capture_output=True
            )
        bucket = "bench"
        s3dlio.create_bucket(f"s3://{bucket}")
        series: dict[tuple[str, ...], Series] = {}
        peer_retries: list[str] = []  # peer measurements that failed once and were retried
        ckpt_meta: dict[str, dict[str, Any]] = {}
        ctx = {
            "quick": quick,
            "reps_of": reps_of,
            "pin": pin,
            "server": server,
            "bucket": bucket,
            "data_dir": data_dir,
        }
        for w in chosen:
            if w.group == "checkpoint":
                rows = [r for r in w.clients if r.split(":", 1)[1] in ckpt_clients]
                if rows:
                    _n, size = w.shape(quick)
                    print(f"({w.key}) {w.title}: target {size} bytes, rows {', '.join(rows)}", flush=True)
                    began, load0 = time.monotonic(), Path("/proc/loadavg").read_text().split()[:3]
                    run_checkpoints(w, rows, sys.executable, ctx, series)
                    ckpt_meta[w.key] = {
                        "date": time.strftime("%Y-%m-%d %H:%M"),
                        "reps": reps_of[w.key],
                        "wall_s": round(time.monotonic() - began),
                        "load_average": {
                            "start": load0,
                            "end": Path("/proc/loadavg").read_text().split()[:3],
                        },
                    }
                continue
            clients = [c for c in w.clients if c in pythons]
            if not clients:
                continue
            n, size = w.shape(quick)
            if w.kind in ("get", "epoch"):
                base = s3_dataset(bucket, w if w.kind == "get" else WORKLOADS[0], quick)
            elif w.kind in ("file", "direct"):
                base = file_dataset(data_dir, w, quick)
            else:
                base = {"size": size}
            print(f"({w.key}) {w.title}: {n} x {size} bytes, clients {', '.join(clients)}", flush=True)
            for rep in range(reps_of[w.key]):
                order = clients[rep % len(clients) :] + clients[: rep % len(clients)]
                for client in order:
                    spec = dict(base, endpoint=server.endpoint, batch_size=64)
                    if w.kind == "put":
                        prefix = f"s3://{bucket}/put-{w.key}-{client}-{rep}/"
                        spec.update(prefix=prefix, uris=[f"{prefix}{i:05d}.bin" for i in range(n)])
                    if w.kind == "file":
                        warm_page_cache(spec)
                    try:
                        run = measure(pythons[client], client, w.kind, spec, server.pid, pin)
                    except RuntimeError as e:
                        if role(client) == "ours":
                            raise  # s3dlio failing is always an error
                        # A peer's own failure (say its client timing out on the saturated
                        # server) is retried once, in a fresh process, and reported in the text.
                        first = str(e).strip().splitlines()[-1][:300]
                        print(f"  rep {rep + 1} {client}: failed, retried once: {first}", flush=True)
                        peer_retries.append(f"({w.key}) {client}, repetition {rep + 1}: {first}")
                        if w.kind == "put":
                            s3dlio.delete_prefix(spec["prefix"])
                        run = measure(pythons[client], client, w.kind, spec, server.pid, pin)
                    series.setdefault((w.key, client), Series(w.key, client)).runs.append(run)
                    if w.kind == "put":
                        s3dlio.delete_prefix(spec["prefix"])
                    speed = f"{run.obj_s:,.0f} obj/s" if w.unit == "objects/s" else f"{run.mb_s:,.0f} MB/s"
                    print(
                        f"  rep {rep + 1} {client:18s} {speed:>14s}  cpu {run.cpu_s:6.2f} s  "
                        f"server {run.server_pct:4.0f} %  rss {run.rss_mib:6.0f} MiB",
                        flush=True,
                    )
    finally:
        server.stop()

    by_key = {w.key: w for w in WORKLOADS}
    # Every transfer workload measured s3dlio itself, each of its rows that was asked for (a harness
    # that lost them would still "pass"), and its ceiling.
    unmeasured = [
        f"{w.key} ({client})"
        for w in chosen
        if w.group == "transfer"
        for client in w.clients
        if (client in OURS or client in CEILINGS) and client in pythons
        and len(series.get((w.key, client), Series(w.key, client)).runs) != reps_of[w.key]
    ]  # fmt: skip
    if unmeasured:
        print(f"bench: error: not measured (every repetition): {', '.join(unmeasured)}", file=sys.stderr)
        return 1
    passed = [a for a in sys.argv[1:] if a not in ("--ref-python", "--out", "--doc")]
    for flag in ("--ref-python", "--out", "--doc"):  # the session's plumbing, not the user's choice
        if flag in sys.argv[1:]:
            passed.remove(sys.argv[sys.argv.index(flag) + 1])
    common: dict[str, Any] = {
        # Under nox (which sets NOX_CURRENT_SESSION) the session's command, else this script's.
        "command": (
            "nox -s bench" + (" -- " if passed else "")
            if os.environ.get("NOX_CURRENT_SESSION")
            else "python -P benchmarks/bench.py" + (" " if passed else "")
        )
        + " ".join(passed),
        "date": time.strftime("%Y-%m-%d"),
        "mode": "quick" if quick else "full",
        "peer_retries": peer_retries,
        "pinning": "server on core 1 (taskset -a -p -c 1), each client process on core 0 (taskset -c 0)"
        if pin
        else "none",
        "machine": machine(),
    }
    for group in GROUPS:
        mine = [s for s in series.values() if by_key[s.workload].group == group]
        if not any(w.group == group for w in chosen):
            continue
        results: dict[str, Any] = dict(common)
        results["reps"] = {w.key: reps_of[w.key] for w in chosen if w.group == group}
        if group == "transfer":
            results.update(
                title=f"s3dlio vs peers on one local SeaweedFS ({'quick check' if quick else 'full run'})",
                versions=versions,
                skipped=skipped,
                s3dlio_defaults={"max_concurrency": s3dlio.StorageConfig().max_concurrency},
            )
        else:
            results.update(
                title=f"Checkpoints: save and load on one local SeaweedFS and on file:// "
                f"({'quick check' if quick else 'full run'})",
                versions=ckpt_versions,
                skipped=ckpt_skipped,
                window=writer_window(),
                data_dir=data_dir_info(data_dir),
                workloads={k: dict(meta, command=common["command"]) for k, meta in ckpt_meta.items()},
            )
        results["summary"] = [s.summary() for s in mine]
        results["runs"] = [
            {"workload": s.workload, "client": s.client, "storage": s.storage, "op": s.op, **vars(r)}
            if s.op
            else {"workload": s.workload, "client": s.client, **vars(r)}
            for s in mine
            for r in s.runs
        ]
        if group == "checkpoint":
            keep_earlier(results, out / RESULTS[group])
        (out / RESULTS[group]).write_text(json.dumps(results, indent=1) + "\n")
        report(results, out, Path(args.doc))
        print(f"wrote {out / RESULTS[group]}, its chart and {args.doc}", flush=True)
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


RESULTS = {"transfer": "results.json", "checkpoint": "checkpoint.json"}


def keep_earlier(results: dict[str, Any], path: Path) -> None:
    """Carry over from an earlier checkpoint.json of the same mode the workloads this run did not
    measure (each keeps its own command, date and repetitions), so that k1 and k4 can be measured
    by separate runs (`--workloads k4`) without one erasing the other."""
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return
    if old.get("mode") != results["mode"]:
        return
    measured = set(results["workloads"])
    old_reps = old.get("reps") if isinstance(old.get("reps"), dict) else {}
    for key, meta in (old.get("workloads") or {}).items():
        if key not in measured:
            results["workloads"][key] = meta
            if key in old_reps:
                results["reps"][key] = old_reps[key]
            results["summary"] += [r for r in old["summary"] if r["workload"] == key]
            results["runs"] += [r for r in old["runs"] if r["workload"] == key]


def parse_reps(text: str | None, quick: bool) -> dict[str, int]:
    """Every workload's repetitions: its own default (``Workload.reps``; 1 with ``--quick``), unless
    ``--reps`` says "N" (every workload) or "N,KEY=N,..." / "KEY=N" (a workload's own count), e.g.
    "3,k4=1"."""
    every: int | None = None
    per: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item:
            continue
        key, eq, n = item.rpartition("=")
        if eq:
            if key not in {w.key for w in WORKLOADS}:
                raise SystemExit(f"bench: error: --reps: no workload {key!r}")
            per[key] = int(n)
        else:
            every = int(n)
    default = {w.key: 1 if quick else w.reps for w in WORKLOADS}
    return {k: per.get(k, every if every is not None else n) for k, n in default.items()}


def reps_text(results: dict[str, Any]) -> str:
    """How many repetitions each workload had, from the measurements themselves (every row of a
    workload has the same count, or the run failed)."""
    counts: dict[str, int] = {}
    for r in results["summary"]:
        counts[r["workload"]] = max(counts.get(r["workload"], 0), r["reps"])
    by_n: dict[int, list[str]] = {}
    for w in WORKLOADS:  # in the workloads' order
        if w.key in counts:
            by_n.setdefault(counts[w.key], []).append(w.key)

    def plural(n: int) -> str:
        return f"{n} repetition{'s' if n != 1 else ''}"

    if len(by_n) <= 1:
        return f"{plural(next(iter(by_n), 0))} per client and workload"
    groups = sorted(by_n.items(), reverse=True)  # the most repetitions first
    parts = [f"{n} in {', '.join(keys)}" for n, keys in groups]
    parts[0] = f"{plural(groups[0][0])} per client in {', '.join(groups[0][1])}"
    return "; ".join(parts[:-1]) + " and " + parts[-1]


def data_dir_info(path: Path) -> dict[str, str]:
    """The file system the data directory is on (from findmnt, else /proc/mounts)."""
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)], capture_output=True, text=True
    )  # fmt: skip
    source, fstype = [*out.stdout.split(), "?", "?"][:2]
    return {"path": str(path.resolve()), "source": source, "fstype": fstype}


def report(results: dict[str, Any], out: Path, doc: Path) -> None:
    """The chart (when matplotlib is installed) and the Markdown section of one group."""
    checkpoint = "window" in results  # only a checkpoint run records s3dlio's writer window
    path = out / ("checkpoint.png" if checkpoint else "bench.png")
    rel: str | None = os.path.relpath(path, doc.parent)
    try:
        (checkpoint_chart if checkpoint else chart)(results, path)
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        rel = None
    if checkpoint:
        update_doc(doc, checkpoint_markdown(results, rel), CKPT_BEGIN, CKPT_END, "## Checkpoints")
    else:
        update_doc(doc, markdown(results, rel))


if __name__ == "__main__":
    sys.exit(main())
