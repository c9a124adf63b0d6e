"""``s3dlio.open_async``: the asyncio file objects on s3:// and file://.

A round trip across part boundaries (both ``await open_async(...)`` and ``async with``); an
exception inside ``async with`` aborts (the previous version stays, nothing is left behind); and
cancelling the task awaiting a write or a close while its parts hang on a silent server (the
fault proxy blackholes every part upload) aborts the multipart upload: no object, no upload left
open on the server (observed with boto3), no task left running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB, wait_until

PART = 5 * MiB


def payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


@pytest.fixture(params=["s3", "file"])
def aroot(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable prefix on s3:// and on file://."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/"
    return "file://" + str(tmp_path) + "/"


def leftovers(root: str) -> list[str]:
    """Files in a file:// root other than ``keep.bin`` (none on s3://)."""
    if not root.startswith("file://"):
        return []
    d = Path(root[len("file://") :])
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.name != "keep.bin")


def no_tasks_left() -> None:
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=5.0), f"live tasks: {s3dlio.live_tasks()}"


def test_async_round_trip(aroot: str) -> None:
    """Writes of odd sizes across two part boundaries, then reads of a few sizes, a seek and the
    rest: every byte back; ``size``/``crc32c`` after close; ``read`` returns an s3dlio.Buffer."""
    data = payload(2 * PART + 4321, seed=1)
    uri = aroot + "a/obj.bin"

    async def main() -> None:
        async with s3dlio.open_async(uri, "wb", part_size=PART, max_parts_in_flight=2) as f:
            mv = memoryview(data)
            for i in range(0, len(data), 3 * MiB + 1):
                assert await f.write(mv[i : i + 3 * MiB + 1]) == len(mv[i : i + 3 * MiB + 1])
            assert f.tell() == len(data)
        assert f.closed and (f.size, f.crc32c) == (len(data), s3dlio.crc32c(data))
        with pytest.raises(ValueError, match="closed"):
            await f.write(b"more")

        g = await s3dlio.open_async(aroot + "small.bin", "wb")
        await g.write(b"small")
        await g.close()
        await g.close()  # idempotent
        assert g.size == 5

        async with s3dlio.open_async(uri) as r:
            assert r.size == len(data) and r.uri == uri
            assert isinstance(r.etag, str) and r.etag
            head = await r.read(10)
            assert isinstance(head, s3dlio.Buffer) and bytes(head) == data[:10]
            assert bytes(await r.read(PART)) == data[10 : PART + 10]
            assert r.seek(-100, 2) == len(data) - 100 and r.tell() == len(data) - 100
            assert bytes(await r.read()) == data[-100:]
            assert bytes(await r.read(5)) == b""
            r.seek(0)
            assert bytes(await r.read(-1)) == data
        assert r.closed
        with pytest.raises(ValueError, match="closed"):
            await r.read(1)

        r2 = await s3dlio.open_async(aroot + "small.bin")
        assert bytes(await r2.read()) == b"small"
        await r2.close()

    asyncio.run(main())
    assert bytes(s3dlio.get(uri)) == data
    no_tasks_left()


def test_an_exception_in_async_with_aborts(aroot: str, request: pytest.FixtureRequest) -> None:
    """An exception inside ``async with open_async(uri, "wb")`` after two parts were sent aborts:
    the previous version stays, no temp file or open multipart upload is left."""
    uri = aroot + "keep.bin"
    s3dlio.put(uri, b"previous version")

    async def main() -> None:
        async with s3dlio.open_async(uri, "wb", part_size=PART) as f:
            await f.write(payload(2 * PART + 1, seed=2))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(main())
    assert bytes(s3dlio.get(uri)) == b"previous version"
    assert leftovers(aroot) == []
    if aroot.startswith("s3://"):
        client = request.getfixturevalue("boto3_client")
        bucket = aroot[len("s3://") :].rstrip("/")
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    no_tasks_left()


@pytest.mark.parametrize("during", ["write", "close"])
def test_cancelling_a_write_on_a_silent_server_aborts(
    bucket: str, s3_config, proxy: FaultProxy, boto3_client, during: str
) -> None:  # type: ignore[no-untyped-def]
    """Every part upload is blackholed (the upload itself is created and can be aborted through
    the proxy). Cancelling the task awaiting ``write`` (the window of one part is full) or
    ``close`` (waiting for the parts) returns promptly; afterwards there is no object, no open
    multipart upload and no live task."""
    proxy.set_mode("blackhole", match=r"[?&]partNumber=")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=30, max_attempts=1)
    uri = f"s3://{bucket}/never.bin"
    part = payload(PART, seed=3)

    def open_uploads() -> list[object]:
        return boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[no-any-return]

    async def write() -> None:
        async with s3dlio.open_async(uri, "wb", part_size=PART, max_parts_in_flight=1, config=cfg) as f:
            await f.write(part)  # fills part 1; nothing sent yet
            await f.write(b"x")  # sends part 1 (it hangs), then waits for the window of one part
        raise AssertionError("the write should still be waiting")

    async def close() -> None:
        f = await s3dlio.open_async(uri, "wb", part_size=PART, config=cfg)
        await f.write(part + b"x")  # part 1 is sent (it hangs); the window has room for more
        await f.close()  # sends part 2 (it hangs too) and waits for both
        raise AssertionError("the close should still be waiting")

    async def main() -> None:
        task = asyncio.ensure_future(write() if during == "write" else close())
        assert await asyncio.to_thread(wait_until, lambda: proxy.faults_injected >= 1, 5.0)
        await asyncio.sleep(0.1)
        assert not task.done()
        assert len(await asyncio.to_thread(open_uploads)) == 1  # what the abort must remove
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5.0)

    asyncio.run(main())
    assert wait_until(lambda: open_uploads() == [], 5.0), open_uploads()
    assert boto3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    no_tasks_left()
