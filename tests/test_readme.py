"""The README's examples run as written: every ```python block of README.md, in order, in one
namespace, against the suite's local S3 server (its AWS_* variables are exported, so ``config=None``
finds it). The test provides what a reader brings: the bucket ``my-bucket`` with the objects the
examples read, a ``./dataset`` tree in the current directory (on a disk that takes O_DIRECT, for the
``direct://`` line), and the reader's own ``decode`` and ``train_step``. Then it checks that the
examples did what their comments say."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import s3dlio
from helpers import require
from s3dlio.exceptions import S3dlioError
from s3dlio.testing import LocalS3Server

README = Path(__file__).resolve().parent.parent / "README.md"
BUCKET = "s3://my-bucket"  # hard-coded in the README
TRAIN = 1024  # objects under train/: more than the 11 batches of 64 the training example takes
SIZE = 4096  # bytes each: the example reads a 4096-byte range of shard-0000.bin
DATASET = {"a.bin": b"a" * 100, "sub/b.bin": b"b" * 2000, "sub/deeper/c.bin": b"c"}  # ./dataset


def python_blocks() -> list[tuple[int, str]]:
    """(README line number of the block's first line, source) of every ```python block."""
    text = README.read_text()
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```\s*$", text, re.MULTILINE | re.DOTALL):
        blocks.append((text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return blocks


def shard(i: int) -> bytes:
    """The content of train/shard-{i:04d}.bin: its index (8 bytes, little-endian), then a pattern."""
    return i.to_bytes(8, "little") + bytes((i + j) % 251 for j in range(SIZE - 8))


def decode(buf: s3dlio.Buffer) -> int:
    """The reader's transform: the shard's index."""
    return int.from_bytes(bytes(memoryview(buf)[:8]), "little")


@pytest.fixture
def my_bucket(s3_server: LocalS3Server) -> Iterator[str]:
    """The README's bucket, created empty (or emptied, if a killed run left it) and holding
    train/shard-0000.bin ... train/shard-1023.bin; emptied and deleted afterwards."""
    with contextlib.suppress(S3dlioError):  # already there: a previous run died before cleaning up
        s3dlio.create_bucket(BUCKET)
    s3dlio.delete_prefix(f"{BUCKET}/")
    try:
        s3dlio.put_many([(f"{BUCKET}/train/shard-{i:04d}.bin", shard(i)) for i in range(TRAIN)])
        yield BUCKET
    finally:
        with contextlib.suppress(Exception):
            s3dlio.delete_prefix(f"{BUCKET}/")
        with contextlib.suppress(Exception):
            s3dlio.delete_bucket(BUCKET)


def test_readme_shows_the_examples() -> None:
    """The README still has its seven API examples as ```python blocks (so the test below cannot
    pass by finding none), and still shows the CI test command .ci/run greps for."""
    assert len(python_blocks()) >= 7
    assert "pip install nox && nox -s ci" in README.read_text()


@pytest.mark.timeout(300)
def test_readme_examples_run_as_written(
    my_bucket: str, disk_dir: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every README python block runs unchanged, in order, in one namespace, and does what it says:
    the upload of the relative ./dataset stores keys relative to it, the get_range is the first
    4096 bytes, the file:// and direct:// reads of the downloaded copy give the S3 bytes, the
    deleted key is gone, the training loop stops at step 10 with a checkpoint of 11 batches."""
    require("torch")  # the checkpoint example
    monkeypatch.chdir(disk_dir)
    for rel, data in DATASET.items():
        p = Path("dataset", rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    batches: list[Any] = []
    namespace: dict[str, Any] = {"__name__": "readme", "decode": decode, "train_step": batches.append}

    for line, source in python_blocks():
        # Padded with newlines so that a traceback points at the README's own line numbers; exec of
        # the README's own examples is the point of this test.
        code = compile("\n" * (line - 1) + source, str(README), "exec")
        exec(code, namespace)  # noqa: S102

    # Write, list, stat, delete: a.bin was written, listed, stated and deleted (nothing else).
    out = capsys.readouterr().out
    assert f"{BUCKET}/data/a.bin 4096" in out, out
    assert namespace["info"].size == 4096
    assert not s3dlio.exists(f"{BUCKET}/data/a.bin")
    # ... and the relative ./dataset tree landed under dataset/ with keys relative to it.
    stored = {o.uri[len(f"{BUCKET}/dataset/") :] for o in s3dlio.list(f"{BUCKET}/dataset/")}
    assert stored == set(DATASET), stored
    for rel, data in DATASET.items():
        assert bytes(s3dlio.get(f"{BUCKET}/dataset/{rel}")) == data

    # Many objects, ranges, local disks.
    assert len(namespace["bufs"]) == TRAIN
    assert [decode(b) for b in namespace["bufs"]] == list(range(TRAIN))
    assert bytes(namespace["head"]) == shard(0)[:4096]
    local = namespace["local"]
    assert os.path.realpath(local) == os.path.realpath(os.path.join(disk_dir, "train"))
    assert len(os.listdir(local)) == TRAIN
    want = hashlib.sha256(shard(0)).hexdigest()
    assert hashlib.sha256(bytes(namespace["page"])).hexdigest() == want
    assert hashlib.sha256(bytes(namespace["raw"])).hexdigest() == want

    # Configuration and errors: the missing key was caught as FileNotFoundError, naming it.
    assert f"{BUCKET}/no-such-key" in out

    # Training: 11 batches of 64 (steps 0..10), then the checkpoint, then a resumed loader.
    assert len(batches) == 11
    assert all(len(b) == 64 for b in batches)
    seen = [int(i) for b in batches for i in np.asarray(b).tolist()]
    assert len(set(seen)) == len(seen) == 11 * 64 and set(seen) <= set(range(TRAIN))
    assert namespace["checkpoint"]["samples_yielded"] == 11 * 64
    rest = [int(i) for b in namespace["loader"] for i in np.asarray(b).tolist()]
    assert sorted(seen + rest) == list(range(TRAIN)), "the resumed epoch yields exactly the unseen samples"
    namespace["loader"].close()

    # Checkpoints: the streamed torch.save read back; the manager's step 100 is the latest.
    torch = namespace["torch"]
    assert torch.equal(namespace["state"]["w"], torch.arange(10))
    assert namespace["step"] == 100 and torch.equal(namespace["restored"]["w"], torch.ones(4))
    assert namespace["manager"].list() == [100]
