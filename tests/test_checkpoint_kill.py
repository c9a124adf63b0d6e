"""A process SIGKILLed in the middle of CheckpointManager.save (inside a shard's upload, after
the shards before the manifest, after the manifest before the pointer) leaves ``latest`` on the
previous complete checkpoint: load_latest returns it, a step without a manifest is never
listed, and the next save cleans up what the killed one left."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

import s3dlio
from s3dlio.checkpoint import CheckpointManager

CHILD = r"""
import sys, time
import numpy as np
import s3dlio
from s3dlio.checkpoint import CheckpointManager

uri, mode = sys.argv[1], sys.argv[2]
MiB = 1 << 20


def hang(marker):
    print(marker, flush=True)
    time.sleep(600)  # the parent SIGKILLs us here


mgr = CheckpointManager(uri, keep_last=1, part_size=5 * MiB)
mgr.save(1, {"w": np.arange(1000, dtype=np.float32), "step": 1})
print("SAVED 1", flush=True)

if mode == "mid-shard-torch":
    import torch

    real_open = s3dlio.open

    class HangAfter:
        # Forwards to the real writer; once 12 MiB went through (parts uploaded), hangs.
        def __init__(self, w):
            self._w, self._n = w, 0

        def write(self, b):
            n = self._w.write(b)
            self._n += n
            if self._n > 12 * MiB:
                hang("MID-SHARD")
            return n

        def __getattr__(self, name):
            return getattr(self._w, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._w.__exit__(*exc)

    def open_(u, mode="rb", **kw):
        f = real_open(u, mode, **kw)
        return HangAfter(f) if mode == "wb" else f

    s3dlio.open = open_
    state = {"big": torch.ones(24 * MiB // 4), "step": 2}
elif mode == "mid-shard-numpy":

    class Slow:
        # A leaf converted to an array while the shard is written, after the big one.
        def __array__(self, dtype=None, copy=None):
            hang("MID-SHARD")

    state = {"a": np.ones(16 * MiB, dtype=np.uint8), "b": Slow()}
else:
    real_put = s3dlio.put
    suffix = {"before-manifest": "/manifest.json", "before-latest": "/latest"}[mode]

    def put(u, data, **kw):
        if u.endswith(suffix):
            hang("BEFORE-PUT " + u)
        return real_put(u, data, **kw)

    s3dlio.put = put
    state = {"w": np.arange(1000, dtype=np.float32) * 2, "step": 2}

mgr.save(2, state)
print("SAVED 2 (must not happen)", flush=True)
"""


def run_until(marker: str, uri: str, mode: str) -> None:
    """Start the child, wait until it prints ``marker`` (after step 1 is saved), SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD, uri, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line.strip())
            if line.startswith(marker):
                break
        assert lines and lines[-1].startswith(marker), (
            lines,
            proc.stderr.read() if proc.poll() is not None else "",
        )  # type: ignore[union-attr]
        assert "SAVED 1" in lines
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def check_step1(mgr: CheckpointManager) -> None:
    latest = mgr.load_latest()
    assert latest.step == 1 and latest.state["step"] == 1
    np.testing.assert_array_equal(latest.state["w"], np.arange(1000, dtype=np.float32))


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("mode", "scheme"),
    [
        ("mid-shard-torch", "s3"),
        ("mid-shard-numpy", "file"),
        ("before-manifest", "s3"),
        ("before-latest", "file"),
    ],
)
def test_sigkill_during_save(mode: str, scheme: str, request: pytest.FixtureRequest, tmp_path: Any) -> None:
    if mode == "mid-shard-torch":
        pytest.importorskip("torch")
    base = f"s3://{request.getfixturevalue('bucket')}" if scheme == "s3" else f"file://{tmp_path}"
    uri = f"{base}/run"
    marker = "MID-SHARD" if mode.startswith("mid-shard") else "BEFORE-PUT"
    run_until(marker, uri, mode)

    mgr = CheckpointManager(uri, keep_last=1)
    assert mgr.latest_step() == 1
    check_step1(mgr)
    step2 = mgr.step_uri(2)
    ext = "pt" if mode == "mid-shard-torch" else "npz"
    shard2 = f"{step2}/rank-00000.{ext}"
    if mode.startswith("mid-shard"):
        assert mgr.list() == [1]
        assert not s3dlio.exists(shard2)  # the half-written shard was never published
        if scheme == "s3":  # ...though its upload had started: parts are on the server
            boto3_client = request.getfixturevalue("boto3_client")
            bucket = base.removeprefix("s3://")
            ups = boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            assert any(u["Key"] == "run/step-00000002/rank-00000.pt" for u in ups), ups
    elif mode == "before-manifest":
        assert mgr.list() == [1]
        assert s3dlio.exists(shard2) and not s3dlio.exists(f"{step2}/manifest.json")
    else:  # the manifest is complete, the pointer was not moved: step 2 is complete, not latest
        assert mgr.list() == [1, 2]
        assert mgr.latest_step() == 1

    # The next save publishes normally and cleans what the killed one left.
    mgr.save(3, {"w": np.zeros(4), "step": 3})
    assert mgr.list() == [3] and mgr.load_latest().step == 3
    assert not s3dlio.list(step2 + "/") and not s3dlio.list(mgr.step_uri(1) + "/")
    assert len(s3dlio.list(mgr.step_uri(3) + "/")) == 2  # shard + manifest, nothing else
