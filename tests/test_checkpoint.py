"""Checkpoints: s3dlio.checkpoint.save/load (torch.save streamed through s3dlio.open) on every
backend, torch.load of a plain torch.save file that was uploaded, CheckpointManager (manifest,
latest pointer, retention, checksums, numpy/raw states, several ranks with a barrier, a process
without torch), and the Lightning CheckpointIO plugin in a real Trainer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import s3dlio
from helpers import MiB, require
from s3dlio.checkpoint import CheckpointManager
from s3dlio.exceptions import CorruptCheckpointError, InvalidConfigError, NotFoundError

torch = require("torch")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def state_dict(seed: int = 0, big: int = 0) -> dict[str, Any]:
    """A model-like state: tensors of several dtypes and shapes, nested dicts, plain values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Any] = {
        "model": {
            "w": torch.randn(64, 32, generator=g),
            "b": torch.zeros(32, dtype=torch.float16),
            "idx": torch.arange(10, dtype=torch.int64),
            "mask": torch.tensor([True, False]),
        },
        "optim": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "step": seed,
        "name": "run-1",
    }
    if big:
        sd["model"]["big"] = torch.randn(big // 4, generator=g)
    return sd


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert type(a) is type(b) and a == b


# -------------------------------------------------------------------------------------------------
# save / load
# -------------------------------------------------------------------------------------------------


def test_save_load_round_trip(root: str) -> None:
    """save() streams torch.save to the URI and reports the size and CRC32C written (the stored
    object's); load() gives the state back, on s3://, file:// and direct://."""
    sd = state_dict(1, big=12 * MiB)  # larger than one part: a multipart upload on S3
    uri = f"{root}ckpt/model.pt"
    saved = s3dlio.checkpoint.save(sd, uri, part_size=5 * MiB)
    assert saved.uri == uri
    stored = s3dlio.get(uri)
    assert saved.size == len(stored) == s3dlio.stat(uri).size > 12 * MiB
    assert saved.crc32c == s3dlio.crc32c(stored)
    assert_same(sd, s3dlio.checkpoint.load(uri))
    # torch.load's arguments pass through
    back = s3dlio.checkpoint.load(uri, map_location="cpu", weights_only=True)
    assert_same(sd, back)


def test_failed_save_keeps_the_previous_version(root: str) -> None:
    """An exception inside torch.save (an unpicklable object) aborts the write: the previous
    checkpoint stays byte for byte, and no temporary file is left next to a local one."""
    uri = f"{root}model.pt"
    s3dlio.checkpoint.save(state_dict(1), uri)
    before = bytes(s3dlio.get(uri))
    with pytest.raises(Exception, match=r"pickle|lambda|local object"):
        s3dlio.checkpoint.save({"w": torch.ones(1000), "fn": lambda: 1}, uri)
    assert bytes(s3dlio.get(uri)) == before
    assert [i.uri for i in s3dlio.list(root)] == [uri]


def test_refused_write_raises_the_store_error(bucket: str, s3_server: Any, s3_config: Any) -> None:
    """A part refused mid-save (the read-only identity) raises the store's AccessDeniedError, not
    the "unexpected pos" error torch's zip writer raises over it; nothing is published."""
    ro = s3_config(access_key_id=s3_server.readonly_key, secret_access_key=s3_server.readonly_secret)
    uri = f"s3://{bucket}/ro/model.pt"
    with pytest.raises(s3dlio.exceptions.AccessDeniedError) as ei:
        s3dlio.checkpoint.save({"w": torch.zeros(4 * MiB)}, uri, config=ro, part_size=5 * MiB)
    assert "unexpected pos" not in str(ei.value) and bucket in str(ei.value)
    assert not s3dlio.exists(uri)


def test_torch_load_of_an_uploaded_torch_save(bucket: str, tmp_path: Path, boto3_client: Any) -> None:
    """A checkpoint written by plain torch.save to a local file, uploaded with boto3 and with
    s3dlio.put, loads with torch.load(s3dlio.open(uri, "rb")) and with s3dlio.checkpoint.load."""
    sd = state_dict(2, big=3 * MiB)
    local = tmp_path / "plain.pt"
    torch.save(sd, local)
    boto3_client.upload_file(str(local), bucket, "boto3/plain.pt")
    s3dlio.put(f"s3://{bucket}/put/plain.pt", local.read_bytes())
    for uri in (f"s3://{bucket}/boto3/plain.pt", f"s3://{bucket}/put/plain.pt"):
        with s3dlio.open(uri, "rb") as f:
            assert_same(sd, torch.load(f))
        assert_same(sd, s3dlio.checkpoint.load(uri))


def test_load_missing_is_not_found(root: str) -> None:
    with pytest.raises(FileNotFoundError):
        s3dlio.checkpoint.load(f"{root}nothing.pt")


# -------------------------------------------------------------------------------------------------
# CheckpointManager
# -------------------------------------------------------------------------------------------------


def test_manager_save_list_load_latest_and_retention(root: str) -> None:
    """Three saves with keep_last=2: list() shows the last two, latest names the newest, the
    oldest is gone (every object of it), and the manifest records each shard's size and CRC32C
    as stored."""
    mgr = CheckpointManager(f"{root}run", keep_last=2)
    assert mgr.list() == [] and mgr.latest_step() is None
    with pytest.raises(NotFoundError):
        mgr.load_latest()
    states = {s: state_dict(s) for s in (10, 20, 30)}
    for step, sd in states.items():
        mgr.save(step, sd, metadata={"epoch": step // 10})
        assert mgr.latest_step() == step
    assert mgr.list() == [20, 30]
    assert not s3dlio.list(mgr.step_uri(10) + "/")
    latest = mgr.load_latest()
    assert latest.step == 30
    assert_same(states[30], latest.state)
    assert_same(states[20], mgr.load(20))
    with pytest.raises(NotFoundError, match="step 10"):
        mgr.load(10)

    m = mgr.manifest(30)
    assert (m["step"], m["world_size"], m["state_format"], m["metadata"]) == (30, 1, "torch", {"epoch": 3})
    (shard,) = m["shards"]
    shard_uri = f"{mgr.step_uri(30)}/{shard['path']}"
    data = s3dlio.get(shard_uri)
    assert shard["size"] == len(data) and shard["crc32c"] == s3dlio.crc32c(data)
    pointer = json.loads(bytes(s3dlio.get(mgr.latest_uri)))
    assert pointer["step"] == 30
    mgr.verify(30)


def test_manager_detects_a_corrupt_shard(bucket: str) -> None:
    """A shard overwritten after the save (same size, other bytes; another size; deleted) is a
    CorruptCheckpointError that names the shard's URI; load_latest never returns its state."""
    mgr = CheckpointManager(f"s3://{bucket}/run")
    mgr.save(1, state_dict(1))
    (shard,) = mgr.manifest(1)["shards"]
    uri = f"{mgr.step_uri(1)}/{shard['path']}"
    good = bytes(s3dlio.get(uri))

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    s3dlio.put(uri, bytes(flipped))
    with pytest.raises(CorruptCheckpointError, match="CRC32C") as ei:
        mgr.load_latest()
    assert ei.value.uri == uri and uri in str(ei.value)
    with pytest.raises(CorruptCheckpointError, match=uri):
        mgr.verify(1)

    s3dlio.put(uri, good + b"x")
    with pytest.raises(CorruptCheckpointError, match="bytes") as ei:
        mgr.load(1)
    assert ei.value.uri == uri

    s3dlio.delete(uri)
    with pytest.raises(CorruptCheckpointError, match="missing") as ei:
        mgr.load(1)
    assert ei.value.uri == uri and isinstance(ei.value, OSError)

    s3dlio.put(uri, good)
    assert_same(state_dict(1), mgr.load(1))


def test_manager_ignores_and_cleans_incomplete_steps(root: str) -> None:
    """A step directory without a manifest (a killed save) is not listed nor loadable; the next
    save removes it. A manifest-less latest target is an error, never a silent load."""
    mgr = CheckpointManager(f"{root}run")
    mgr.save(1, state_dict(1))
    s3dlio.put(f"{mgr.step_uri(2)}/rank-00000.pt", b"half a shard")
    assert mgr.list() == [1]
    with pytest.raises(NotFoundError, match="no complete checkpoint for step 2"):
        mgr.load(2)
    assert mgr.load_latest().step == 1
    mgr.save(3, state_dict(3))
    assert mgr.list() == [1, 3]
    assert not s3dlio.list(mgr.step_uri(2) + "/")

    s3dlio.put(mgr.latest_uri, json.dumps({"format": "s3dlio.checkpoint/1", "step": 2}).encode())
    with pytest.raises(CorruptCheckpointError, match="no manifest"):
        mgr.load_latest()


def test_manager_resaves_a_step(bucket: str) -> None:
    """Saving a step that exists replaces it; latest is moved off it while it is rewritten."""
    mgr = CheckpointManager(f"s3://{bucket}/run")
    mgr.save(1, state_dict(1))
    mgr.save(2, state_dict(2))
    mgr.save(2, state_dict(22))
    assert mgr.list() == [1, 2]
    latest = mgr.load_latest()
    assert latest.step == 2
    assert_same(state_dict(22), latest.state)
    mgr.delete(2)
    assert mgr.list() == [1] and mgr.latest_step() == 1
    mgr.delete(1)
    assert mgr.list() == [] and mgr.latest_step() is None


def jax_like_state(seed: int) -> dict[str, Any]:
    """A pytree as JAX code has them: params of float arrays, an optimizer tuple, an RNG key,
    Python and numpy scalars, a string, bytes, None, int dict keys."""
    rng = np.random.default_rng(seed)
    return {
        "params": {"dense": {"kernel": rng.standard_normal((8, 4), dtype=np.float32), "bias": np.zeros(4)}},
        "opt_state": (
            {"mu": rng.standard_normal(3).astype(np.float16)},
            [np.int32(7), np.arange(5, dtype=np.uint8)],
        ),
        "rng": np.array([0, seed], dtype=np.uint32),
        "step": seed,
        "lr": 1e-3,
        "done": False,
        "name": "run",
        "blob": b"\x00\x01raw",
        "nothing": None,
        "by_layer": {0: np.ones((2, 2), dtype=np.bool_), 1: np.float64(0.5)},
        "empty": {},
    }


def test_manager_numpy_pytree(root: str) -> None:
    """A pytree of numpy arrays and plain values is stored pickle-free (.npz with a JSON tree) and
    comes back with the same structure, dtypes, shapes, scalar types and values."""
    mgr = CheckpointManager(f"{root}jax", keep_last=1)
    mgr.save(5, jax_like_state(5))
    m = mgr.manifest(5)
    assert m["state_format"] == "numpy" and m["shards"][0]["path"] == "rank-00000.npz"
    back = mgr.load_latest()
    assert back.step == 5
    assert_same(jax_like_state(5), back.state)
    assert isinstance(back.state["opt_state"][1][0], np.int32)
    # format="numpy" refuses a torch tensor with a clear message, before anything is written
    with pytest.raises(InvalidConfigError, match="format='torch'"):
        mgr.save(6, {"w": torch.ones(2)}, format="numpy")
    assert mgr.list() == [5]


def test_manager_raw_bytes(root: str) -> None:
    """Bytes are stored as they are and come back as a zero-copy s3dlio.Buffer."""
    mgr = CheckpointManager(f"{root}raw")
    payload = os.urandom(3 * MiB + 5)
    mgr.save(0, payload)
    back = mgr.load(0)
    assert isinstance(back, s3dlio.Buffer) and bytes(back) == payload
    assert mgr.manifest(0)["state_format"] == "raw"


def test_manager_arguments_are_checked(bucket: str) -> None:
    for bad in ({"keep_last": 0}, {"format": "pickle"}, {"rank": 1}, {"world_size": 2, "rank": 0}):
        with pytest.raises(InvalidConfigError):
            CheckpointManager(f"s3://{bucket}/x", **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfigError):
        CheckpointManager("relative/path")
    mgr = CheckpointManager(f"s3://{bucket}/x")
    with pytest.raises(InvalidConfigError):
        mgr.save(-1, b"x")
    with pytest.raises(TypeError):
        mgr.save(1, b"x", metadata={"f": object()})
    assert mgr.list() == []


def test_manager_ranks_with_a_barrier(bucket: str) -> None:
    """Two ranks without torch.distributed (threads standing in for JAX processes) with a
    barrier: one manifest with both shards, each rank loads its own, and rank 1 can be read by
    rank 0 explicitly."""
    barrier = threading.Barrier(2, timeout=60)
    uri = f"s3://{bucket}/ranks"
    errors: list[BaseException] = []
    loaded: dict[int, Any] = {}

    def run(rank: int) -> None:
        try:
            mgr = CheckpointManager(uri, keep_last=1, rank=rank, world_size=2, barrier=barrier.wait)
            for step in (1, 2):
                mgr.save(step, {"rank": rank, "w": np.full(1000, rank + step, dtype=np.float32)})
            loaded[rank] = mgr.load_latest().state
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in (0, 1):
        assert loaded[r]["rank"] == r and float(loaded[r]["w"][0]) == r + 2
    mgr0 = CheckpointManager(uri, rank=0, world_size=2, barrier=lambda: None)
    assert mgr0.list() == [2]
    m = mgr0.manifest(2)
    assert [s["rank"] for s in m["shards"]] == [0, 1] and m["world_size"] == 2
    assert mgr0.load(2, rank=1)["rank"] == 1
    with pytest.raises(InvalidConfigError, match="rank 2"):
        mgr0.load(2, rank=2)


def test_manager_a_failing_rank_fails_every_rank(bucket: str) -> None:
    """When one rank cannot write its shard, no rank waits forever: the failing rank raises its
    own error, the others a StorageIOError naming it, and nothing is published (latest stays)."""
    barrier = threading.Barrier(2, timeout=60)
    uri = f"s3://{bucket}/failing"
    raised: dict[int, BaseException] = {}

    def run(rank: int) -> None:
        mgr = CheckpointManager(uri, rank=rank, world_size=2, barrier=barrier.wait)
        mgr.save(1, {"w": np.ones(10)})
        bad: object = {"w": np.ones(10)} if rank == 0 else {"w": object()}
        try:
            mgr.save(2, bad, format="numpy")
        except Exception as e:
            raised[rank] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert isinstance(raised[1], InvalidConfigError)
    assert isinstance(raised[0], s3dlio.exceptions.StorageIOError) and "rank 1" in str(raised[0])
    mgr = CheckpointManager(uri, rank=0, world_size=2, barrier=lambda: None)
    assert mgr.list() == [1] and mgr.latest_step() == 1


NO_TORCH = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails, as in a JAX-only environment
import numpy as np, s3dlio
from s3dlio.checkpoint import CheckpointManager
mgr = CheckpointManager(sys.argv[1], keep_last=2)
for step in range(3):
    mgr.save(step, {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3) * step}, "step": step})
latest = mgr.load_latest()
assert latest.step == 2 and mgr.list() == [1, 2], (latest.step, mgr.list())
assert latest.state["params"]["w"].dtype == np.float32 and float(latest.state["params"]["w"][1, 2]) == 10.0
try:
    mgr.save(3, {"x": object()})
except ImportError as e:
    print("needs torch:", e)
print("OK")
"""


def test_manager_without_torch(root: str) -> None:
    """In a process where torch cannot be imported, numpy states save and load; a state only
    torch could serialise is an ImportError that says so."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", NO_TORCH, f"{root}notorch"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "needs torch:" in out.stdout and "format='numpy'" in out.stdout
    assert out.stdout.strip().endswith("OK")


# -------------------------------------------------------------------------------------------------
# Lightning
# -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (num_workers, logging, ...)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # lightning 2.6 on torch 2.15's pytree
def test_lightning_checkpoint_io(bucket: str) -> None:
    """A real Lightning Trainer (CPU, 2 steps) with S3dlioCheckpointIO: trainer.save_checkpoint
    to s3:// and a resumed fit from it (the weights and the global step come back), then
    remove_checkpoint."""
    require("lightning")  # the `lightning` extra; CI installs it
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from s3dlio.lightning import S3dlioCheckpointIO

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def loader() -> DataLoader[Any]:
        g = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)), batch_size=8
        )

    def trainer(max_steps: int) -> pl.Trainer:
        return pl.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            devices=1,
            plugins=[S3dlioCheckpointIO()],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    uri = f"s3://{bucket}/lightning/last.ckpt"
    model = Tiny()
    t1 = trainer(2)
    t1.fit(model, loader())
    t1.save_checkpoint(uri)
    assert s3dlio.exists(uri)
    ckpt = S3dlioCheckpointIO().load_checkpoint(uri)
    assert ckpt["global_step"] == 2
    assert torch.equal(ckpt["state_dict"]["layer.weight"], model.layer.weight.detach())

    resumed = Tiny()
    t2 = trainer(4)
    t2.fit(resumed, loader(), ckpt_path=uri)
    assert t2.global_step == 4

    S3dlioCheckpointIO().remove_checkpoint(uri)
    assert not s3dlio.exists(uri)
    with pytest.raises(FileNotFoundError):
        S3dlioCheckpointIO().load_checkpoint(uri)


# -------------------------------------------------------------------------------------------------
# The docs' examples
# -------------------------------------------------------------------------------------------------


def python_blocks(md: Path, section: str | None = None) -> list[str]:
    """The ```python blocks of a docs page (of one ``## section`` of it); ```py blocks are
    illustrations that need a cluster or a long run and are not executed."""
    text = md.read_text()
    if section is not None:
        text = text[text.index(f"\n## {section}\n") :]
        text = text[: text.find("\n## ", 1)] if "\n## " in text[1:] else text
    return re.findall(r"^```python\n(.*?)^```\s*$", text, re.MULTILINE | re.DOTALL)


def run_blocks(blocks: list[str], bucket: str, name: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks:
        code = compile(block.replace("s3://my-bucket", f"s3://{bucket}"), name, "exec")
        exec(code, ns)  # noqa: S102 - the docs' own examples
    return ns


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_docs_examples_run(bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of docs/checkpoints.md runs, in order, against the local server, and
    prints what its comments say."""
    blocks = python_blocks(DOCS / "checkpoints.md")
    assert len(blocks) >= 4
    ns = run_blocks(blocks, bucket, "docs/checkpoints.md")
    out = capsys.readouterr().out
    assert "[4, 6, 8]" in out and "{'loss':" in out
    assert torch.equal(ns["restored"]["model"]["weight"], ns["model"].state_dict()["weight"])


def test_docs_jax_checkpoint_example_runs(bucket: str) -> None:
    """The CheckpointManager example of docs/jax.md runs with real JAX arrays. In a child
    process: a JAX backend in the pytest process would make every later fork() warn (JAX is
    multithreaded), and tests/test_jax.py checks that none is started here."""
    require("jax")
    (block,) = python_blocks(DOCS / "jax.md", "Checkpoints with CheckpointManager")
    code = block.replace("s3://my-bucket", f"s3://{bucket}") + (
        '\nassert mgr.manifest(3)["state_format"] == "numpy"\nprint("JAX-OK")\n'
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0 and "JAX-OK" in out.stdout, out.stderr[-3000:]
