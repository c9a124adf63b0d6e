"""PyTorch: s3dlio's datasets inside torch.utils.data.DataLoader (no workers, fork and spawn
workers), torch collation in s3dlio.DataLoader, and a real multi-process torch.distributed (gloo)
run checking that rank shares are disjoint, cover the dataset and come from one permutation."""

from __future__ import annotations

import os
import socket
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import s3dlio
from helpers import fresh_bucket, index_of, regression_sample, require, write_indexed

torch = require("torch")  # a skip outside CI, a failure in CI (CI=true)
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as tmp  # noqa: E402
from torch.utils.data import DataLoader as TorchDataLoader  # noqa: E402

N = 100


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("torchds")
    write_indexed(f"file://{root}/", N)
    return f"file://{root}/"


def test_datasets_are_torch_datasets(files: str) -> None:
    """With torch installed the datasets subclass torch's Dataset / IterableDataset, which is how
    torch's DataLoader decides between map-style and iterable mode."""
    assert isinstance(s3dlio.ObjectDataset.from_prefix(files), torch.utils.data.Dataset)
    assert isinstance(s3dlio.ObjectIterableDataset.from_prefix(files), torch.utils.data.IterableDataset)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork"), (2, "spawn")])
def test_map_dataset_in_torch_dataloader(files: str, workers: int, context: str | None) -> None:
    """ObjectDataset in torch.utils.data.DataLoader, in the main process and in fork and spawn
    worker processes: every sample exactly once, transformed and collated by torch."""
    ds = s3dlio.ObjectDataset.from_prefix(files, transform=index_of)
    loader = TorchDataLoader(
        ds, batch_size=8, shuffle=True, num_workers=workers, multiprocessing_context=context
    )
    seen = [int(i) for batch in loader for i in batch]
    assert sorted(seen) == list(range(N))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_iterable_dataset_shards_by_worker(files: str, context: str) -> None:
    """ObjectIterableDataset in torch's DataLoader with 2 worker processes: each worker reads a
    disjoint share and together they read every sample once."""
    ds = s3dlio.ObjectIterableDataset.from_prefix(files, transform=index_of, shuffle=True, seed=3)
    loader = TorchDataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    seen = [int(i) for i in loader]
    assert sorted(seen) == list(range(N))


def test_s3dlio_dataloader_collates_with_torch(files: str) -> None:
    """s3dlio.DataLoader with torch installed: raw buffers collate to a uint8 tensor of shape
    (batch, size); transforms returning tensors go through torch's default_collate."""
    raw = next(iter(s3dlio.DataLoader(s3dlio.ObjectDataset.from_prefix(files), batch_size=4)))
    assert isinstance(raw, torch.Tensor) and raw.dtype == torch.uint8 and raw.shape[0] == 4
    ds = s3dlio.ObjectDataset.from_prefix(files, transform=lambda b: torch.tensor(index_of(b)))
    batch = next(iter(s3dlio.DataLoader(ds, batch_size=5)))
    assert torch.equal(batch, torch.arange(5))


def test_frombuffer_shares_rust_memory(files: str) -> None:
    """torch.frombuffer over an s3dlio.Buffer shares its memory (no copy)."""
    buf = s3dlio.get(s3dlio.ObjectDataset.from_prefix(files).uris[7])
    with warnings.catch_warnings():
        # torch warns once per process that the buffer is read-only (whichever test comes first).
        warnings.filterwarnings("ignore", message=".*not writable", category=UserWarning)
        t = torch.frombuffer(buf, dtype=torch.uint8)
    assert t.data_ptr() == buf.address
    assert struct.unpack("<Q", bytes(t[:8].numpy()))[0] == 7


# -------------------------------------------------------------------------------------------------
# torch.distributed with the gloo backend, real processes on 127.0.0.1
# -------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = s3dlio.ObjectDataset.from_prefix(root, transform=index_of)
        loader = s3dlio.DataLoader(ds, batch_size=4, shuffle=True, seed=11)
        shares = []
        for _epoch in range(2):
            mine = torch.tensor([int(i) for b in loader for i in b])
            gathered = [torch.zeros_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine)  # every rank sees every share, through gloo
            shares.append([g.tolist() for g in gathered])
        if rank == 0:
            Path(out).write_text(repr(shares))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gloo_shares_are_disjoint_cover_and_agree(files: str, tmp_path: Path, world: int) -> None:
    """torch.distributed (gloo, `world` ranks on 127.0.0.1): in each epoch the ranks' shares have
    equal length, are disjoint except DistributedSampler-style padding, together cover the dataset,
    and interleave into one seeded permutation; the next epoch uses a different permutation."""
    out = tmp_path / "shares.txt"
    tmp.spawn(_ddp_rank, args=(world, _free_port(), files, str(out)), nprocs=world, join=True)
    epochs = eval(out.read_text())  # noqa: S307 - our own repr of lists of ints
    per_rank = -(-N // world)
    orders = []
    for shares in epochs:
        assert all(len(s) == per_rank for s in shares)
        flat = [x for s in shares for x in s]
        assert set(flat) == set(range(N))
        assert len(flat) - len(set(flat)) == per_rank * world - N  # only the padding repeats
        # order[rank::world] for every rank: interleaving the shares restores the permutation.
        order = [shares[i % world][i // world] for i in range(per_rank * world)][:N]
        assert sorted(order) == list(range(N))
        orders.append(order)
    assert orders[0] != orders[1], "a new permutation every epoch"
    assert orders[0] == s3dlio._core.epoch_indices(N, 11, 0, True), (
        "the same seeded permutation on every rank"
    )


# -------------------------------------------------------------------------------------------------
# A small model trained from objects on the local S3 server, with both loaders
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regression_bucket(s3_server: object) -> Iterator[str]:
    """256 objects on the S3 server, each 4 float32 features and a float32 target y = w.x + b."""
    import numpy as np

    rng = np.random.default_rng(0)
    w, b = np.array([1.5, -2.0, 0.5, 3.0], dtype=np.float32), np.float32(0.25)
    with fresh_bucket("train") as name:
        x = rng.normal(size=(256, 4)).astype(np.float32)
        y = x @ w + b
        for i in range(256):
            s3dlio.put(f"s3://{name}/{i:04d}.bin", np.concatenate([x[i], [y[i]]]).astype(np.float32))
        yield f"s3://{name}/"


def _train(batches: Callable[[], Iterable[tuple[Any, Any]]]) -> tuple[float, float]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _epoch in range(6):
        total, count = 0.0, 0
        for x, y in batches():
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(x), count + len(x)
        losses.append(total / count)
    return losses[0], losses[-1]


@pytest.mark.timeout(180)
def test_train_a_model_with_s3dlio_dataloader(regression_bucket: str) -> None:
    """A linear model trained from S3 objects through s3dlio.DataLoader (shuffled, 2 worker
    threads) learns: the last epoch's loss is a small fraction of the first's."""
    ds = s3dlio.ObjectDataset.from_prefix(regression_bucket, transform=regression_sample)
    loader = s3dlio.DataLoader(ds, batch_size=16, shuffle=True, num_workers=2)
    first, last = _train(lambda: loader)
    assert last < first / 20, (first, last)


@pytest.mark.timeout(180)
def test_train_a_model_with_torch_dataloader_workers(regression_bucket: str) -> None:
    """The same training through torch.utils.data.DataLoader(num_workers=2) over ObjectDataset."""
    ds = s3dlio.ObjectDataset.from_prefix(regression_bucket, transform=regression_sample)
    loader = TorchDataLoader(ds, batch_size=16, shuffle=True, num_workers=2)
    first, last = _train(lambda: loader)
    assert last < first / 20, (first, last)
