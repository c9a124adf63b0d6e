"""The buffer pool (issue 14, item 1): a Buffer's memory is reused by a later read only once no
view, array, tensor or Buffer refers to it any more; the pool is bounded, trimmed when idle, per
process, and can be turned off."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import s3dlio
from s3dlio.exceptions import InvalidConfigError

MiB = 1024 * 1024


def pool() -> dict[str, int]:
    return dict(s3dlio.stats()["buffer_pool"])


def run_child(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(code)],  # -P: the installed s3dlio, not the source tree
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _numpy(b: s3dlio.Buffer) -> Any:
    return np.frombuffer(b, dtype=np.uint8)


def _memoryview(b: s3dlio.Buffer) -> Any:
    return memoryview(b)


def _torch(b: s3dlio.Buffer) -> Any:
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "the given buffer is not writable"
        return torch.frombuffer(b, dtype=torch.uint8)


def _slice(b: s3dlio.Buffer) -> Any:
    return memoryview(b)[1000:2000]


@pytest.mark.parametrize(
    "view", [_numpy, _memoryview, _torch, _slice], ids=["numpy", "memoryview", "torch", "slice"]
)
@pytest.mark.parametrize("size", [64 * 1024, 3 * MiB], ids=["heap", "mapped"])
def test_a_held_view_keeps_its_bytes_while_later_reads_reuse_memory(
    root: str, view: Callable[[s3dlio.Buffer], Any], size: int
) -> None:
    """Hold a view, drop the Buffer, read objects of the same size again and again: the old view's
    bytes never change; once the view is gone too, the memory is reused."""
    # Garbage from earlier tests (Buffers in reference cycles) freed by the cyclic GC in the middle
    # of this test would land in the pool after ours and be taken first: collect it now, and keep
    # the collector off while the addresses are compared.
    gc.collect()
    gc.disable()
    try:
        _held_view_case(root, view, size)
    finally:
        gc.enable()


def _held_view_case(root: str, view: Callable[[s3dlio.Buffer], Any], size: int) -> None:
    a, b = f"{root}pool/a", f"{root}pool/b"
    s3dlio.put(a, b"\xaa" * size)
    s3dlio.put(b, b"\xbb" * size)
    buf = s3dlio.get(a)
    held = view(buf)
    addr = buf.address
    copy = bytes(buf)
    del buf
    for _ in range(4):
        other = s3dlio.get(b)
        assert other.address != addr, "memory still viewed was handed to another read"
        assert bytes(other) == b"\xbb" * size
        del other
    kept = held.numpy().tobytes() if hasattr(held, "numpy") else bytes(held)
    assert len(kept) in (size, 1000) and kept == b"\xaa" * len(kept), "the held view's bytes changed"
    assert copy == b"\xaa" * size
    del held
    # Held together, the reads take the newest pooled buffers of the class one after another
    # (ours among them even if another buffer of this size was freed meanwhile).
    again = [s3dlio.get(b) for _ in range(4)]
    assert all(bytes(g) == b"\xbb" * size for g in again)
    seen = {g.address for g in again}
    assert addr in seen or pool()["limit"] == 0, "a buffer nothing refers to is reused"


def test_a_recycled_buffer_never_shows_an_earlier_objects_bytes(root: str) -> None:
    """Objects of different sizes in one size class (17 and 18 MiB both round to 20 MiB): the second
    read takes the first one's memory and shows only its own bytes, its own length."""
    s3dlio.put(f"{root}cls/17", b"\x11" * (17 * MiB))
    s3dlio.put(f"{root}cls/18", b"\x22" * (18 * MiB))
    s3dlio.put(f"{root}cls/small", b"\x33" * (17 * MiB - 5))
    del_me = s3dlio.get(f"{root}cls/18")
    del del_me
    for name, byte, n in [("17", 0x11, 17 * MiB), ("small", 0x33, 17 * MiB - 5), ("18", 0x22, 18 * MiB)]:
        got = s3dlio.get(f"{root}cls/{name}")
        arr = np.frombuffer(got, dtype=np.uint8)
        assert len(arr) == n
        assert int(arr.min()) == byte and int(arr.max()) == byte
        del arr, got
    part = s3dlio.get_range(f"{root}cls/18", 5, 17 * MiB)
    assert bytes(part) == b"\x22" * (17 * MiB)
    del part
    # A smaller read may take a larger free buffer (up to twice its size): 12 MiB in a 20 MiB one.
    s3dlio.put(f"{root}cls/12", b"\x44" * (12 * MiB))
    got = np.frombuffer(s3dlio.get(f"{root}cls/12"), dtype=np.uint8)
    assert len(got) == 12 * MiB and int(got.min()) == 0x44 and int(got.max()) == 0x44


def test_reads_take_buffers_from_the_pool(root: str) -> None:
    uris = [f"{root}hits/{i}" for i in range(4)]
    s3dlio.put_many([(u, os.urandom(2 * MiB)) for u in uris])
    s3dlio.get_many(uris)  # warm: four 2 MiB buffers back in the pool
    before = pool()
    got = s3dlio.get_many(uris)
    after = pool()
    assert [bytes(g) for g in got] == [bytes(s3dlio.get(u)) for u in uris]
    if before["limit"] > 8 * MiB:
        assert after["hits"] - before["hits"] >= 4


def test_the_bound_holds_and_zero_turns_pooling_off(tmp_path: Any) -> None:
    """In a child (the bound is per process): 32 MiB holds at most 32 MiB of freed buffers; 0 holds
    none and every read allocates."""
    got = run_child(
        f"""
        import json, os, s3dlio
        root = "file://{tmp_path}/"
        uris = [root + str(i) for i in range(6)]
        s3dlio.put_many([(u, os.urandom(16 << 20)) for u in uris])
        small = s3dlio.StorageConfig(buffer_pool_bytes=32 << 20)
        del_me = s3dlio.get_many(uris, config=small)
        del del_me
        bounded = s3dlio.stats()["buffer_pool"]
        off = s3dlio.StorageConfig(buffer_pool_bytes=0)
        s3dlio.stats(reset=True)
        for _ in range(3):
            s3dlio.get_many(uris, config=off)
        print(json.dumps({{"bounded": bounded, "off": s3dlio.stats()["buffer_pool"]}}))
        """
    )
    assert got["bounded"]["limit"] == 32 * MiB
    assert 0 < got["bounded"]["held_bytes"] <= 32 * MiB
    assert got["bounded"]["released"] >= 4
    assert got["off"]["limit"] == 0
    assert got["off"]["held_bytes"] == 0
    assert got["off"]["hits"] == 0


def test_the_environment_sets_the_bound_and_a_bad_value_is_a_clear_error(tmp_path: Any) -> None:
    code = f"""
        import json, s3dlio
        s3dlio.put("file://{tmp_path}/x", b"x" * (1 << 20))
        try:
            s3dlio.get("file://{tmp_path}/x")
            print(json.dumps({{"limit": s3dlio.stats()["buffer_pool"]["limit"]}}))
        except s3dlio.exceptions.InvalidConfigError as e:
            print(json.dumps({{"error": str(e)}}))
        """
    assert run_child(code, {"S3DLIO_BUFFER_POOL_BYTES": "512M"}) == {"limit": 512 * MiB}
    bad = run_child(code, {"S3DLIO_BUFFER_POOL_BYTES": "lots"})
    assert "S3DLIO_BUFFER_POOL_BYTES" in bad["error"] and "lots" in bad["error"]


def test_idle_buffers_are_released(tmp_path: Any) -> None:
    got = run_child(
        f"""
        import json, time, s3dlio
        s3dlio.put("file://{tmp_path}/x", b"x" * (4 << 20))
        b = s3dlio.get("file://{tmp_path}/x")
        del b
        held = s3dlio.stats()["buffer_pool"]["held_bytes"]
        time.sleep(1.5)
        print(json.dumps({{"held": held, "after": s3dlio.stats()["buffer_pool"]}}))
        """,
        {"S3DLIO_BUFFER_POOL_IDLE": "0.2"},
    )
    assert got["held"] >= 4 * MiB
    assert got["after"]["held_bytes"] == 0
    assert got["after"]["released"] >= 1


def test_a_forked_child_starts_with_an_empty_pool(tmp_path: Any) -> None:
    """The parent's pooled buffers are never handed out in a child; buffers the parent made and the
    child drops are freed, not pooled; the child pools its own reads."""
    got = run_child(
        f"""
        import json, os, s3dlio
        uri = "file://{tmp_path}/x"
        s3dlio.put(uri, b"p" * (4 << 20))
        kept = s3dlio.get(uri)  # alive across the fork
        dropped = s3dlio.get(uri)
        del dropped  # pooled in the parent
        assert s3dlio.stats()["buffer_pool"]["held_bytes"] >= 4 << 20
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            start = dict(s3dlio.stats()["buffer_pool"])
            del globals()["kept"]  # the parent's buffer, dropped in the child
            after_drop = dict(s3dlio.stats()["buffer_pool"])
            b = s3dlio.get(uri)
            ok = bytes(b) == b"p" * (4 << 20)
            del b
            mine = dict(s3dlio.stats()["buffer_pool"])
            os.write(w, json.dumps({{"start": start, "after_drop": after_drop, "mine": mine, "ok": ok}}).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.waitpid(pid, 0)
        child = json.loads(data)
        child["parent_intact"] = bytes(kept) == b"p" * (4 << 20)
        print(json.dumps(child))
        """
    )
    assert got["start"]["held_bytes"] == 0
    assert got["after_drop"]["held_bytes"] == 0
    assert got["ok"] and got["parent_intact"]
    assert got["mine"]["held_bytes"] >= 4 * MiB


def test_a_bad_bound_in_the_config_is_refused() -> None:
    with pytest.raises(InvalidConfigError, match="buffer_pool_bytes"):
        s3dlio.StorageConfig(buffer_pool_bytes=-1)
    with pytest.raises(InvalidConfigError, match="buffer_pool_bytes"):
        s3dlio.StorageConfig(buffer_pool_bytes=1.5)  # type: ignore[arg-type]
