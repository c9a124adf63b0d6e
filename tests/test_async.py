"""The ``_async`` twins: same results and same error types as the sync calls, real concurrency on
one event loop, and cancellation that stops the Rust work."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import rel, wait_until
from s3dlio import exceptions as exc


def test_async_round_trip_of_every_operation(root: str, tmp_path: Path) -> None:
    """put/get/get_range/get_many/stat/exists/list/delete/delete_prefix/upload/download _async
    behave like their sync twins on every backend."""
    data = os.urandom(50_001)

    async def main() -> None:
        await s3dlio.put_async(root + "a/obj", data)
        assert bytes(await s3dlio.get_async(root + "a/obj")) == data
        assert bytes(await s3dlio.get_range_async(root + "a/obj", 50_000, 1)) == data[-1:]
        assert bytes(await s3dlio.get_range_async(root + "a/obj", 100)) == data[100:]
        info = await s3dlio.stat_async(root + "a/obj")
        assert info.size == len(data) and not info.is_dir
        assert await s3dlio.exists_async(root + "a/obj") is True
        assert await s3dlio.exists_async(root + "a/nope") is False
        await asyncio.gather(*(s3dlio.put_async(f"{root}b/{i}", str(i).encode()) for i in range(20)))
        bufs = await s3dlio.get_many_async([f"{root}b/{i}" for i in reversed(range(20))])
        assert [bytes(b) for b in bufs] == [str(i).encode() for i in reversed(range(20))]
        listed = await s3dlio.list_async(root, recursive=False)
        assert {(rel(i.uri, root), i.is_dir) for i in listed} == {("a", True), ("b", True)}
        assert len(await s3dlio.list_async(root + "b/", pattern="1*")) == 11
        await s3dlio.delete_async(root + "a/obj")
        assert await s3dlio.exists_async(root + "a/obj") is False
        assert await s3dlio.delete_prefix_async(root + "b/") == 20
        (tmp_path / "up" / "sub").mkdir(parents=True)
        (tmp_path / "up" / "x").write_bytes(b"x")
        (tmp_path / "up" / "sub" / "x").write_bytes(b"sub-x")
        assert await s3dlio.upload_async(tmp_path / "up", root + "t/") == 2
        assert await s3dlio.download_async(root + "t/", tmp_path / "down") == 2
        assert (tmp_path / "down" / "sub" / "x").read_bytes() == b"sub-x"

    asyncio.run(main())


def test_async_bucket_lifecycle(s3_server: object) -> None:
    """create_bucket_async / delete_bucket_async create and remove a usable bucket."""
    name = f"s3://async-{os.urandom(6).hex()}"

    async def main() -> None:
        await s3dlio.create_bucket_async(name)
        await s3dlio.put_async(name + "/k", b"v")
        assert bytes(await s3dlio.get_async(name + "/k")) == b"v"
        await s3dlio.delete_async(name + "/k")
        await s3dlio.delete_bucket_async(name)

    asyncio.run(main())
    with pytest.raises(exc.NotFoundError):
        s3dlio.list(name + "/")


def test_async_errors_have_the_sync_types(bucket: str) -> None:
    """Async failures raise the same exception classes as the sync calls."""

    async def main() -> None:
        await s3dlio.put_async(f"s3://{bucket}/k", b"12345")
        with pytest.raises(exc.NotFoundError) as ei:
            await s3dlio.get_async(f"s3://{bucket}/missing")
        assert f"s3://{bucket}/missing" in str(ei.value)
        with pytest.raises(exc.NotFoundError):
            await s3dlio.stat_async(f"s3://{bucket}/missing")
        with pytest.raises(exc.NotFoundError):
            await s3dlio.get_many_async([f"s3://{bucket}/k", f"s3://{bucket}/missing"])
        with pytest.raises(exc.RangeError):
            await s3dlio.get_range_async(f"s3://{bucket}/k", 3, 10)
        with pytest.raises(exc.InvalidUriError):
            await s3dlio.get_async("ftp://x/y")
        with pytest.raises(exc.InvalidUriError):
            await s3dlio.put_async("bucket/key", b"x")

    asyncio.run(main())


def test_many_concurrent_gets_on_one_loop(bucket: str) -> None:
    """200 get_async calls gathered on one loop all complete with the right data."""
    uris = [f"s3://{bucket}/c/{i}" for i in range(200)]
    for i, u in enumerate(uris):
        s3dlio.put(u, i.to_bytes(4, "little") * 100)

    async def main() -> list[bytes]:
        return [bytes(b) for b in await asyncio.gather(*(s3dlio.get_async(u) for u in uris))]

    assert asyncio.run(main()) == [i.to_bytes(4, "little") * 100 for i in range(200)]


def test_loop_stays_responsive_during_a_slow_call(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """While a get_async waits on a silent server, other coroutines keep running."""
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=1.0, max_attempts=1)

    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        with pytest.raises(exc.StorageTimeoutError):
            await s3dlio.get_async(f"s3://{bucket}/k", config=cfg)
        t.cancel()
        return ticks

    assert asyncio.run(main()) >= 20


def test_cancelling_get_async_stops_the_rust_task(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """asyncio.wait_for cancels a get_async hung on a silent server promptly, and afterwards no
    s3dlio task is left running (live_tasks() returns to 0)."""
    s3dlio.put(f"s3://{bucket}/k", b"v")
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=30, max_attempts=5)

    async def main() -> float:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(s3dlio.get_async(f"s3://{bucket}/k", config=cfg), timeout=0.3)
        return time.monotonic() - t0

    assert asyncio.run(main()) < 2.0
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=2.0), f"live tasks: {s3dlio.live_tasks()}"


def test_cancelling_get_many_async_stops_every_request(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """Cancelling a get_many_async with 16 requests hung in flight leaves no task behind."""
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=30)

    async def main() -> None:
        task = asyncio.ensure_future(
            s3dlio.get_many_async([f"s3://{bucket}/k{i}" for i in range(16)], config=cfg)
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert proxy.requests_seen >= 1
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=2.0), f"live tasks: {s3dlio.live_tasks()}"


EXIT_CHILD = """
import asyncio, sys, s3dlio
uri = sys.argv[1]
async def main():
    async with s3dlio.open_async(uri) as r:
        await r.read()
    await asyncio.gather(*(s3dlio.get_async(uri) for _ in range(4)))
asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_interpreter_exit_right_after_asyncio_calls_is_clean(tmp_path: Path) -> None:
    """A script that ends right after its last await exits with 0: tokio threads still handing
    results to the (closed) event loop are waited for at exit, never ended by the interpreter's
    finalization (which aborted the process, exit code 134, in about 1 run of 10 under load)."""
    import subprocess
    import sys

    uri = f"file://{tmp_path}/obj"
    s3dlio.put(uri, b"x" * 1000)
    for _ in range(4):  # 4 waves of 4 concurrent interpreters: contention widens the window
        procs = [
            subprocess.Popen([sys.executable, "-P", "-c", EXIT_CHILD, uri], stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, (p.returncode, err.decode()[-2000:])
