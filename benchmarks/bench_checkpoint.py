"""Checkpoint measurements, in a process of their own (run by bench.py for workloads k1 and k4).

    python -P bench_checkpoint.py SPEC.json

The spec (JSON) gives the state dict's target size, the endpoint and a list of jobs, each one
``{"client", "op": "save" | "load", "storage": "s3" | "file", "uri", "scratch"}``. bench.py runs
one job per process for the measured runs (so that every RSS figure is clean) and all jobs in one
process for ``--quick`` (one torch import instead of dozens). For each job the process sets up
everything (imports, clients, the state dict to save or the tensors a DCP load fills), evicts a
``file://`` checkpoint's pages from the page cache before a load, resets its RSS high-water mark,
prints ``READY``, waits for a line on stdin (bench.py samples the server's CPU time then), does the
timed work, and prints one ``RESULT`` JSON line: seconds, the state dict's bytes, its CPU time
(user + system, this process and its reaped children) and its peak RSS above the state dict. A load
is then checked, outside the clock, byte for byte against the state dict that was saved (which
also checks the save).

The state dict is transformer-shaped (embeddings and output head, then per layer the attention and
MLP weights, biases and layer norms): tensors from 1 KiB to 256 MiB, made deterministically from one
seeded random block, the same in every process. ``file://`` saves are timed until the data is on
disk: every client's save is followed, inside the clock, by an fsync of the files it wrote and of
their directory (torch.save does not fsync; for a client that did, DCP's FileSystemWriter for one,
it finds nothing left to write).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
THREADS = 32  # boto3's transfer threads, as in bench_client.py
BASE = 64 * MIB  # the seeded random block every tensor is cut from
SEED = 20261127


# ---------------------------------------------------------------------------------------------
# The state dict
# ---------------------------------------------------------------------------------------------


def layout(target: int) -> list[tuple[str, tuple[int, ...], str]]:
    """Names, shapes and dtypes of a transformer-like state dict of about ``target`` bytes."""
    d, vocab = (256, 4096) if target <= 64 * MIB else (1024, 32768) if target <= GIB else (2048, 32768)
    out: list[tuple[str, tuple[int, ...], str]] = [("tok_embeddings.weight", (vocab, d), "float32")]
    per_layer = 4 * (3 * d * d + d * d + 8 * d * d) + 4 * (3 * d + d + 4 * d + d + 4 * d)
    layers = max(1, round((target - 2 * 4 * vocab * d) / per_layer))
    for i in range(layers):
        p = f"layers.{i}."
        out += [
            (p + "attention_norm.weight", (d,), "float32"),
            (p + "attention_norm.bias", (d,), "float32"),
            (p + "attention.wqkv.weight", (3 * d, d), "float32"),
            (p + "attention.wqkv.bias", (3 * d,), "float32"),
            (p + "attention.wo.weight", (d, d), "float32"),
            (p + "attention.wo.bias", (d,), "float32"),
            (p + "ffn_norm.weight", (d,), "float32"),
            (p + "ffn_norm.bias", (d,), "float32"),
            (p + "feed_forward.w1.weight", (4 * d, d), "float32"),
            (p + "feed_forward.w1.bias", (4 * d,), "float32"),
            (p + "feed_forward.w2.weight", (d, 4 * d), "float32"),
            (p + "feed_forward.w2.bias", (d,), "float32"),
            (p + "attention.rope.inv_freq", (d // 64,), "bfloat16"),
        ]
    out += [
        ("norm.weight", (d,), "float32"),
        ("output.weight", (vocab, d), "float32"),
        ("step", (1,), "int64"),
    ]
    return out


@functools.cache
def _base() -> Any:
    import torch

    g = torch.Generator().manual_seed(SEED)
    return torch.randint(0, 256, (BASE + 64 * KIB,), dtype=torch.uint8, generator=g)


def _pieces(i: int, nbytes: int) -> list[tuple[int, int, int]]:
    """(start, length, offset in the base block) of tensor ``i``'s bytes: each tensor differs."""
    off = (i * 4099) % (64 * KIB)
    return [(s, min(BASE, nbytes - s), off) for s in range(0, nbytes, BASE)]


def _as_bytes(t: Any) -> Any:
    import torch

    return t.reshape(-1).view(torch.uint8)


def empty_state(target: int) -> dict[str, Any]:
    import torch

    return {name: torch.empty(shape, dtype=getattr(torch, dt)) for name, shape, dt in layout(target)}


def make_state(target: int) -> dict[str, Any]:
    state = empty_state(target)
    base = _base()
    for i, t in enumerate(state.values()):
        flat = _as_bytes(t)
        for s, n, off in _pieces(i, flat.numel()):
            flat[s : s + n].copy_(base[off : off + n])
    return state


def state_bytes(target: int) -> int:
    import torch

    size = {"float32": 4, "bfloat16": 2, "int64": 8}
    n = 0
    for _name, shape, dt in layout(target):
        n += int(torch.Size(shape).numel()) * size[dt]
    return n


def check_state(state: dict[str, Any], target: int) -> None:
    """Raise unless ``state`` holds exactly the tensors make_state(target) makes."""
    import torch

    want = layout(target)
    if list(state) != [n for n, _, _ in want] and sorted(state) != sorted(n for n, _, _ in want):
        raise SystemExit(f"loaded keys differ: {len(state)} keys, expected {len(want)}")
    base = _base()
    for i, (name, shape, dt) in enumerate(want):
        t = state[name]
        if tuple(t.shape) != shape or t.dtype != getattr(torch, dt):
            raise SystemExit(f"{name}: {tuple(t.shape)} {t.dtype}, expected {shape} {dt}")
        flat = _as_bytes(t.contiguous())
        for s, n, off in _pieces(i, flat.numel()):
            if not torch.equal(flat[s : s + n], base[off : off + n]):
                raise SystemExit(f"{name}: bytes differ from what was saved")


# ---------------------------------------------------------------------------------------------
# Measuring: CPU, RSS, the page cache, durability
# ---------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def local(uri: str) -> Path:
    return Path(uri.split("://", 1)[1])


def files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def fsync_tree(path: Path) -> None:
    """fsync every file at or under ``path``, then the directories holding them."""
    dirs = {path if path.is_dir() else path.parent}
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs.add(p.parent)
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(path: Path) -> None:
    """Drop a checkpoint's (clean, fsynced) pages from the page cache, so a load reads the disk."""
    for p in files_under(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


# ---------------------------------------------------------------------------------------------
# Clients. Each takes the job and returns the timed callable: save(state) or load() -> state.
# ---------------------------------------------------------------------------------------------

Save = Callable[[dict[str, Any]], None]
Load = Callable[[], dict[str, Any]]


def s3dlio_checkpoint(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    import s3dlio.checkpoint

    uri = job["uri"]
    if job["op"] == "save":
        return lambda state: s3dlio.checkpoint.save(state, uri)
    return lambda: s3dlio.checkpoint.load(uri)


def s3dlio_dcp(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    import torch.distributed.checkpoint as dcp

    import s3dlio.dcp

    uri = job["uri"]
    if job["op"] == "save":
        return lambda state: dcp.save(state, storage_writer=s3dlio.dcp.StorageWriter(uri), no_dist=True)
    return dcp_load(lambda: s3dlio.dcp.StorageReader(uri), spec)


def dcp_load(reader: Callable[[], Any], spec: dict[str, Any]) -> Load:
    """A DCP load fills tensors that exist: allocated (and touched) before the clock starts."""
    import torch.distributed.checkpoint as dcp

    dest = empty_state(spec["target"])
    for t in dest.values():
        t.zero_()

    def load() -> dict[str, Any]:
        dcp.load(dest, storage_reader=reader(), no_dist=True)
        return dest

    return load


def s3torchconnector_checkpoint(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    import torch
    from s3torchconnector import S3Checkpoint, S3ClientConfig

    ckpt = S3Checkpoint(
        spec["region"], endpoint=spec["endpoint"], s3client_config=S3ClientConfig(force_path_style=True)
    )
    uri = job["uri"]
    if job["op"] == "save":

        def save(state: dict[str, Any]) -> None:
            with ckpt.writer(uri) as w:
                torch.save(state, w)

        return save

    def load() -> dict[str, Any]:
        with ckpt.reader(uri) as r:
            out: dict[str, Any] = torch.load(r, weights_only=True)
        return out

    return load


def s3torchconnector_dcp(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    import torch.distributed.checkpoint as dcp
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp import S3FileSystem, S3StorageReader, S3StorageWriter

    region, uri, config = spec["region"], job["uri"], S3ClientConfig(force_path_style=True)

    def with_endpoint(storage: Any) -> Any:
        # s3torchconnector 1.5's DCP classes take no endpoint (its S3Checkpoint and datasets do):
        # give their file system a client for the local server, keeping its reader constructor.
        client = S3Client(region, endpoint=spec["endpoint"], s3client_config=config)
        storage.fs = S3FileSystem(region, s3_client=client, reader_constructor=storage.fs._reader_constructor)
        return storage

    if job["op"] == "save":
        return lambda state: dcp.save(
            state,
            storage_writer=with_endpoint(S3StorageWriter(region, uri, s3client_config=config)),
            no_dist=True,
        )
    return dcp_load(lambda: with_endpoint(S3StorageReader(region, uri, s3client_config=config)), spec)


def boto3_via_file(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    """torch.save to a local file, then boto3's upload_file; download_file, then torch.load."""
    import boto3
    import torch
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=spec["endpoint"], config=Config(max_pool_connections=THREADS))
    transfer = TransferConfig(max_concurrency=THREADS)
    bucket, key = split(job["uri"])
    tmp = Path(job["scratch"]) / "boto3-model.pt"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if job["op"] == "save":

        def save(state: dict[str, Any]) -> None:
            torch.save(state, tmp)
            s3.upload_file(str(tmp), bucket, key, Config=transfer)
            tmp.unlink()

        return save

    def load() -> dict[str, Any]:
        s3.download_file(bucket, key, str(tmp), Config=transfer)
        out: dict[str, Any] = torch.load(tmp, weights_only=True)
        tmp.unlink()
        return out

    return load


def torch_file(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    import torch

    path = local(job["uri"])
    if job["op"] == "save":
        return lambda state: torch.save(state, path)
    return lambda: torch.load(path, weights_only=True)


def torch_dcp_file(job: dict[str, Any], spec: dict[str, Any]) -> Any:
    import torch.distributed.checkpoint as dcp

    path = local(job["uri"])
    if job["op"] == "save":
        return lambda state: dcp.save(state, storage_writer=dcp.FileSystemWriter(path), no_dist=True)
    return dcp_load(lambda: dcp.FileSystemReader(path), spec)


CLIENTS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "s3dlio.checkpoint": s3dlio_checkpoint,
    "s3dlio.dcp": s3dlio_dcp,
    "s3torchconnector S3Checkpoint": s3torchconnector_checkpoint,
    "s3torchconnector DCP": s3torchconnector_dcp,
    "torch.save + boto3": boto3_via_file,
    "torch.save": torch_file,
    "torch DCP FileSystemWriter": torch_dcp_file,
}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run_job(job: dict[str, Any], spec: dict[str, Any], state: dict[str, Any] | None) -> None:
    target, nbytes = spec["target"], spec["bytes"]
    work = CLIENTS[job["client"]](job, spec)
    path = local(job["uri"]) if job["storage"] == "file" else None
    if job["op"] == "save" and path is not None:
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)  # the checkpoint's folder, as a trainer has it
    if job["op"] == "load" and path is not None:
        evict(path)
    gc.collect()
    reset_peak_rss()
    base_kib = vm_kib("VmRSS")
    # A save's state dict, and the tensors a DCP load fills, are resident before the clock
    # starts; any other load makes the state dict inside the timed section, so its size comes off.
    resident = job["op"] == "save" or job["client"] in DCP_CLIENTS
    print("READY", flush=True)
    sys.stdin.readline()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    if job["op"] == "save":
        assert state is not None
        work(state)
        if path is not None:
            fsync_tree(path)
        loaded = None
    else:
        loaded = work()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    peak_kib = vm_kib("VmHWM")
    extra = (peak_kib - base_kib) * KIB - (0 if resident else nbytes)
    result = {
        "seconds": seconds,
        "bytes": nbytes,
        "objects": len(layout(target)),  # tensors
        "cpu_s": cpu,
        "rss_mib": peak_kib / 1024,
        "extra_mib": extra / MIB,
        "baseline_mib": base_kib / 1024,
    }
    print("RESULT " + json.dumps(result), flush=True)  # now: bench.py's window ends with it
    if loaded is not None:
        check_state(loaded, target)  # a mismatch exits non-zero, which fails the measurement
        del loaded
        gc.collect()


DCP_CLIENTS = {"s3dlio.dcp", "s3torchconnector DCP", "torch DCP FileSystemWriter"}


def main() -> int:
    # DCP in one process without a process group says so once per call: expected here.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    spec["bytes"] = state_bytes(spec["target"])
    state = None
    if any(j["op"] == "save" for j in spec["jobs"]):
        state = make_state(spec["target"])
    for job in spec["jobs"]:
        run_job(job, spec, state if job["op"] == "save" else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
