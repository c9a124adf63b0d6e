"""torch.distributed.checkpoint through s3dlio.dcp: range coalescing, a single-process save and
load on s3:// and file://, and a real 2-rank gloo run (DTensor shards, per-rank tensors, bytes,
2 writer threads per rank) loaded back on 2 ranks and resharded into 1 process; CheckpointManager
with torch.distributed on the same ranks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import s3dlio
from helpers import MiB, require
from s3dlio.testing import free_port

torch = require("torch")
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
import torch.multiprocessing as tmp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

from s3dlio.dcp import S3dlioFileSystem, StorageReader, StorageWriter, coalesce  # noqa: E402
from s3dlio.exceptions import InvalidConfigError  # noqa: E402

SINGLE = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def item(path: str, offset: int, length: int) -> tuple[Any, Any]:
    return (f"{path}@{offset}", SimpleNamespace(relative_path=path, offset=offset, length=length))


def test_coalesce_merges_neighbours_per_file() -> None:
    """Items of one file are sorted by offset and merged across gaps up to max_gap while the range
    stays within max_range_size; files never mix; a large item is a range of its own."""
    items = [
        item("a", 300, 100),  # out of order on purpose
        item("a", 0, 100),
        item("a", 100, 100),
        item("b", 0, 10),
        item("a", 1000, 50),  # gap of 600 > max_gap
        item("a", 1050, 5000),  # would exceed max_range_size merged
        item("b", 20, 10),
    ]
    ranges = coalesce(items, lambda rel: f"s3://x/{rel}", max_gap=100, max_range_size=1000)
    got = [(r.uri, r.start, r.end, [i for i, _ in r.items]) for r in ranges]
    assert got == [
        ("s3://x/a", 0, 400, ["a@0", "a@100", "a@300"]),
        ("s3://x/a", 1000, 1050, ["a@1000"]),
        ("s3://x/a", 1050, 6050, ["a@1050"]),
        ("s3://x/b", 0, 30, ["b@0", "b@20"]),
    ]


def test_filesystem_paths() -> None:
    fs = S3dlioFileSystem()
    assert fs.init_path("s3://b/ckpt/") == "s3://b/ckpt"
    assert fs.concat_path("s3://b/ckpt", ".metadata") == "s3://b/ckpt/.metadata"
    assert fs.init_path("/tmp/x") == "file:///tmp/x"
    assert StorageWriter.validate_checkpoint_id("s3://b/c") and StorageReader.validate_checkpoint_id(
        "file:///c"
    )
    assert not StorageWriter.validate_checkpoint_id("/local/path")
    with pytest.raises(InvalidConfigError):
        StorageWriter("s3://b/c", thread_count=0)
    with pytest.raises(InvalidConfigError):
        StorageReader("s3://b/c", max_concurrency=0)


def sample_state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers": {f"l{i}": torch.randn(64, 64, generator=g) for i in range(6)},
        "big": torch.randn(3 * MiB // 4, generator=g),  # above max_range_size below: its own range
        "ints": torch.arange(100, dtype=torch.int32),
        "extra": {"epoch": seed, "note": "bytes item"},  # not a tensor: a BYTE_IO item
    }


def zeros_like(sd: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out[k] = zeros_like(v)
        elif isinstance(v, torch.Tensor):
            out[k] = torch.zeros_like(v)
        else:
            out[k] = None
    return out


@SINGLE
@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_dcp_single_process(scheme: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """dcp.save and dcp.load in one process, 3 writer threads (3 data files), coalesced reads with
    a small range limit (several ranges, one item larger than a range), and an overwrite."""
    base = f"s3://{request.getfixturevalue('bucket')}" if scheme == "s3" else f"file://{tmp_path}"
    uri = f"{base}/dcp/step-1"
    sd = sample_state(1)
    dcp.save(sd, storage_writer=StorageWriter(uri, thread_count=3))
    names = sorted(i.uri.rsplit("/", 1)[1] for i in s3dlio.list(uri + "/"))
    assert names == [".metadata", "__0_0.distcp", "__0_1.distcp", "__0_2.distcp"]

    back = zeros_like(sd)
    dcp.load(back, storage_reader=StorageReader(uri, max_range_size=1 * MiB, max_concurrency=4))
    for k, v in sd["layers"].items():
        assert torch.equal(back["layers"][k], v)
    assert torch.equal(back["big"], sd["big"]) and torch.equal(back["ints"], sd["ints"])
    assert back["extra"] == sd["extra"]

    sd2 = sample_state(2)  # overwrite in place
    dcp.save(sd2, storage_writer=StorageWriter(uri, thread_count=1))
    back = zeros_like(sd2)
    dcp.load(back, storage_reader=StorageReader(uri))
    assert torch.equal(back["big"], sd2["big"]) and back["extra"]["epoch"] == 2


@SINGLE
def test_dcp_overwrite_false_refuses(bucket: str) -> None:
    uri = f"s3://{bucket}/dcp/once"
    dcp.save({"x": torch.ones(3)}, storage_writer=StorageWriter(uri))
    with pytest.raises(CheckpointException) as ei:
        dcp.save({"x": torch.zeros(3)}, storage_writer=StorageWriter(uri, overwrite=False))
    assert "already exists" in str(ei.value.failures[0])
    back = {"x": torch.zeros(3)}
    dcp.load(back, storage_reader=StorageReader(uri))
    assert torch.equal(back["x"], torch.ones(3))


class FailingFileSystem(S3dlioFileSystem):
    """Fails the writer of one data file after a few bytes, in whichever writer thread gets it."""

    @contextmanager
    def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
        with super().create_stream(path, mode) as s:
            if mode == "wb" and str(path).endswith("__0_1.distcp"):
                s.write(b"partial")
                raise OSError("injected failure in a writer thread")
            yield s


@SINGLE
def test_dcp_writer_thread_failure_fails_the_save(bucket: str) -> None:
    """A failure in one of the writer threads fails dcp.save and no .metadata is written (torch's
    FileSystemWriter loses exceptions of its extra threads and publishes a .metadata missing
    their items). Over an existing checkpoint the old .metadata was removed first, so what is
    left reads as no checkpoint, never as old metadata over new data."""
    uri = f"s3://{bucket}/dcp/fail"
    sd = {f"t{i}": torch.full((1000,), float(i)) for i in range(6)}
    dcp.save(sd, storage_writer=StorageWriter(uri, thread_count=2))
    failing = StorageWriter(uri, thread_count=2)
    failing.fs = FailingFileSystem()
    with pytest.raises(CheckpointException) as ei:
        dcp.save({k: v + 100 for k, v in sd.items()}, storage_writer=failing)
    assert "injected failure" in str(ei.value.failures[0])
    assert not s3dlio.exists(f"{uri}/.metadata")
    with pytest.raises(CheckpointException):
        dcp.load({k: torch.zeros(1000) for k in sd}, storage_reader=StorageReader(uri))


# -------------------------------------------------------------------------------------------------
# 2 ranks, gloo
# -------------------------------------------------------------------------------------------------

ROWS, COLS = 64, 48


def full_matrix() -> Any:
    return torch.arange(ROWS * COLS, dtype=torch.float32).reshape(ROWS, COLS)


def rank_state(rank: int) -> dict[str, Any]:
    return {f"rank{rank}.w": torch.full((256,), float(rank + 1)), f"rank{rank}.meta": {"owner": rank}}


def _worker(rank: int, world: int, port: int, uri: str, mgr_uri: str, env: dict[str, str]) -> None:
    os.environ.update(env)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        sd: dict[str, Any] = {"sharded": distribute_tensor(full_matrix(), mesh, [Shard(0)])}
        sd.update(rank_state(rank))
        sd["shared"] = torch.linspace(0, 1, 100)  # the same on every rank: written once
        dcp.save(sd, storage_writer=StorageWriter(uri, thread_count=2))

        back: dict[str, Any] = {
            "sharded": distribute_tensor(torch.zeros(ROWS, COLS), mesh, [Shard(0)]),
            f"rank{rank}.w": torch.zeros(256),
            f"rank{rank}.meta": {"owner": None},
            "shared": torch.zeros(100),
        }
        dcp.load(back, storage_reader=StorageReader(uri))
        mine = full_matrix().chunk(world)[rank]
        assert torch.equal(back["sharded"].to_local(), mine), "DTensor shard"
        assert torch.equal(back[f"rank{rank}.w"], sd[f"rank{rank}.w"]) and back[f"rank{rank}.meta"] == {
            "owner": rank
        }
        assert torch.equal(back["shared"], sd["shared"])

        from s3dlio.checkpoint import CheckpointManager

        mgr = CheckpointManager(mgr_uri, keep_last=1)
        assert (mgr.rank, mgr.world_size) == (rank, world)
        for step in (1, 2):
            mgr.save(step, {"w": torch.full((1000,), float(10 * step + rank))})
        latest = mgr.load_latest()
        assert latest.step == 2 and float(latest.state["w"][0]) == 20 + rank
        assert mgr.list() == [2]
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.filterwarnings("ignore::UserWarning")  # DTensor / DCP notes in the resharded load
def test_dcp_two_ranks_gloo_then_reshard(bucket: str) -> None:
    """2 processes (gloo) save a DTensor sharded over both, per-rank tensors and bytes items, a
    replicated tensor, 2 files per rank; both load their own shards back; then this single
    process loads the whole matrix from the 2 shards (resharding) and one rank's items.
    CheckpointManager runs on the same ranks with torch.distributed."""
    uri = f"s3://{bucket}/dcp/two-ranks"
    mgr_uri = f"s3://{bucket}/mgr"
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    # fork: the children start with torch already imported (spawn re-imports it: ~10 s on 2 cores)
    tmp.start_processes(
        _worker, args=(2, free_port(), uri, mgr_uri, env), nprocs=2, join=True, start_method="fork"
    )

    names = sorted(i.uri.rsplit("/", 1)[1] for i in s3dlio.list(uri + "/"))
    assert names == [".metadata", "__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__1_1.distcp"]

    back: dict[str, Any] = {
        "sharded": torch.zeros(ROWS, COLS),
        "rank1.w": torch.zeros(256),
        "rank1.meta": {"owner": None},
        "shared": torch.zeros(100),
    }
    dcp.load(back, storage_reader=StorageReader(uri, max_gap=0))
    assert torch.equal(back["sharded"], full_matrix())
    assert torch.equal(back["rank1.w"], torch.full((256,), 2.0)) and back["rank1.meta"] == {"owner": 1}
    assert torch.equal(back["shared"], torch.linspace(0, 1, 100))

    from s3dlio.checkpoint import CheckpointManager

    mgr = CheckpointManager(mgr_uri)
    m = mgr.manifest(2)
    assert m["world_size"] == 2 and [s["rank"] for s in m["shards"]] == [0, 1]
    assert float(mgr.load(2, rank=1)["w"][0]) == 21.0


def test_metadata_pickles_through_a_reader(bucket: str) -> None:
    """DCP's .metadata read back through the s3dlio stream (pickle over ObjectReader)."""
    import pickle

    uri = f"s3://{bucket}/meta.pkl"
    s3dlio.put(uri, pickle.dumps({"a": 1}))
    with S3dlioFileSystem().create_stream(uri, "rb") as f:
        assert pickle.load(f) == {"a": 1}


@SINGLE
def test_dcp_storage_error_is_reported_not_torchs_zip_error(bucket: str, s3_server, s3_config) -> None:  # type: ignore[no-untyped-def]
    """A write refused by the store (here: the read-only identity) fails the save with the store's
    error in DCP's per-rank report, not with torch's "unexpected pos" zip-writer error that
    torch.save raises over it."""
    ro = s3_config(access_key_id=s3_server.readonly_key, secret_access_key=s3_server.readonly_secret)
    sd = {"big": torch.zeros(6 * MiB), "small": torch.ones(10)}  # 24 MiB: parts go out mid-save
    with pytest.raises(CheckpointException) as ei:
        dcp.save(sd, storage_writer=StorageWriter(f"s3://{bucket}/dcp/ro", config=ro, part_size=5 * MiB))
    failure = ei.value.failures[0]
    if isinstance(failure, tuple):  # torch >= 2.4 keeps (exception, traceback frames)
        failure = failure[0]
    assert isinstance(failure, s3dlio.exceptions.AccessDeniedError), repr(failure)
    assert "unexpected pos" not in str(failure) and bucket in str(failure)
    assert not s3dlio.exists(f"s3://{bucket}/dcp/ro/.metadata")
