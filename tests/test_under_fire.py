"""Under fire: throttling storms, adaptive concurrency, and the loader's own counters (stall
attribution, the per-epoch log line), through the real fault proxy in front of the real server."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import index_of, write_indexed
from s3dlio import DataLoader, ObjectDataset, PoolConfig
from s3dlio.exceptions import InvalidConfigError


def _indices(batches: list[list[int]]) -> list[int]:
    return sorted(i for b in batches for i in b)


@pytest.mark.timeout(120)
def test_a_10_second_503_storm_at_256_in_flight_loses_nothing(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """Default retry and adaptive settings, 256 requests in flight, every GET answered 503
    SlowDown for 10 s mid-epoch: no request fails, the attempts in flight fall to the floor while
    the storm lasts and climb back after it, and every sample arrives exactly once."""
    n = 3000
    uris = write_indexed(f"s3://{bucket}/storm/", n, 256)
    cfg = s3_config(endpoint_url=proxy.endpoint)  # every retry setting at its default
    ds = ObjectDataset.from_uris(uris, [256] * n, transform=index_of, config=cfg)
    loader = DataLoader(
        ds, batch_size=8, collate_fn=list, pool=PoolConfig(pool_size=256, readahead_batches=4)
    )
    during: list[dict[str, Any]] = []

    def storm() -> None:
        proxy.set_mode("http503", match="^GET ")
        end = time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(0.25)
            during.append(loader.stats()["concurrency"])
        proxy.set_mode("pass")

    got: list[list[int]] = []
    stormer = threading.Thread(target=storm)
    it = iter(loader)
    for _ in range(20):
        got.append(next(it))
    stormer.start()
    got.extend(it)
    stormer.join()
    assert _indices(got) == list(range(n))  # each sample exactly once, none lost
    s = loader.stats()
    assert s["errors"]["throttled"] == 0 and s["ops"]["get"]["errors"] == 0
    assert s["retries"]["throttled"] > 0, s["retries"]
    late = during[len(during) // 2 :]
    assert max(c["limit"] for c in late) <= 2, during  # at the floor while the storm lasts
    assert max(c["in_flight"] for c in late) <= 2, during
    # Climbed back once the storm was over.
    assert s["concurrency"]["limit"] >= 8 and s["concurrency"]["cuts"] >= 3, s["concurrency"]
    assert proxy.faults_injected >= s["retries"]["throttled"] >= 1


def test_fixed_concurrency_does_not_adapt(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    uris = write_indexed(f"s3://{bucket}/fixed/", 40, 64)
    cfg = s3_config(endpoint_url=proxy.endpoint, initial_backoff=0.01)
    ds = ObjectDataset.from_uris(uris, [64] * 40, transform=index_of, config=cfg)
    pool = PoolConfig(pool_size=8, readahead_batches=2, adaptive=False)
    loader = DataLoader(ds, batch_size=4, collate_fn=list, pool=pool)
    proxy.set_mode("http503", count=3, match="^GET ")
    assert _indices(list(loader)) == list(range(40))
    s = loader.stats()
    assert s["concurrency"] == {"adaptive": False}
    assert s["retries"]["throttled"] == 3


def test_pool_bounds_are_checked() -> None:
    with pytest.raises(InvalidConfigError, match="min_pool_size"):
        PoolConfig(pool_size=4, readahead_batches=1, min_pool_size=5)
    with pytest.raises(InvalidConfigError, match="min_pool_size"):
        PoolConfig(pool_size=4, readahead_batches=1, min_pool_size=0)
    p = PoolConfig(pool_size=4, readahead_batches=1, min_pool_size=4)
    assert (p.adaptive, p.min_pool_size) == (True, 4)


def test_loader_stats_are_its_own_and_attribute_the_stalls(bucket: str) -> None:
    """A loader counts only its own requests. A slow consumer: batches wait for it (producer_s).
    A fast consumer over a slow store: the consumer waits (consumer_s)."""
    uris = write_indexed(f"s3://{bucket}/ls/", 64, 1000)
    s3dlio.get(uris[0])  # a request outside the loader
    ds = ObjectDataset.from_uris(uris, [1000] * 64, transform=index_of)
    pool = PoolConfig(pool_size=8, readahead_batches=2)
    slow = DataLoader(ds, batch_size=8, collate_fn=list, pool=pool)
    for _ in slow:
        time.sleep(0.1)  # the training step
    s = slow.stats()
    assert (s["objects_read"], s["bytes_read"], s["ops"]["get"]["requests"]) == (64, 64_000, 64)
    assert s["wait"]["batches"] == 8
    assert s["wait"]["producer_s"] > s["wait"]["consumer_s"], s["wait"]  # not input-bound
    assert slow.stats(reset=True)["objects_read"] == 64
    assert slow.stats()["objects_read"] == 0 and slow.stats()["wait"]["batches"] == 0
    fast = DataLoader(ds, batch_size=8, collate_fn=list, pool=PoolConfig(pool_size=1, readahead_batches=1))
    assert _indices(list(fast)) == list(range(64))
    w = fast.stats()["wait"]
    assert w["consumer_s"] > 0 and w["batches"] == 8


def test_log_stats_logs_one_line_per_epoch(bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    uris = write_indexed(f"s3://{bucket}/log/", 20, 500)
    ds = ObjectDataset.from_uris(uris, [500] * 20, transform=index_of)
    loader = DataLoader(ds, batch_size=5, collate_fn=list, log_stats=True)
    with caplog.at_level(logging.INFO, logger="s3dlio"):
        for _ in range(2):
            assert _indices(list(loader)) == list(range(20))
    lines = [r.getMessage() for r in caplog.records if r.name == "s3dlio"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("s3dlio epoch 0: 20 objects, 0.0 MB") and "waited" in lines[0], lines
    assert lines[1].startswith("s3dlio epoch 1: 20 objects"), lines


# -------------------------------------------------------------------------------------------------
# Faults mid-transfer: never short, never zero-filled, always named
# -------------------------------------------------------------------------------------------------

MiB = 1024 * 1024


def _ranges(proxy: FaultProxy) -> list[str]:
    return [r for m, _, r in proxy.request_log if m == "GET" and r]


@pytest.mark.parametrize("fault", ["reset_body", "close_body", "stall_body"])
def test_a_ranged_read_cut_mid_body_resumes_from_the_byte_it_reached(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig], fault: str
) -> None:
    data = bytes(range(256)) * (16 * MiB // 256)
    s3dlio.put(f"s3://{bucket}/big", data)
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=1.0, initial_backoff=0.01)
    proxy.set_mode(fault, count=1, stall_after=3 * MiB, match="^GET ")
    off, n = 1000, 12 * MiB
    got = s3dlio.get_range(f"s3://{bucket}/big", off, n, config=cfg)
    assert bytes(got) == data[off : off + n]  # never short, never zero-filled
    first, second = _ranges(proxy)[-2:]
    assert first == f"bytes={off}-{off + n - 1}"
    resumed_at = int(second.split("=")[1].split("-")[0])
    # Not from the start (a reset drops what the client's kernel had not yet handed over).
    assert off < resumed_at <= off + 3 * MiB, (first, second)
    assert second.endswith(f"-{off + n - 1}")


@pytest.mark.parametrize("fault", ["reset_body", "close_body"])
def test_a_whole_read_cut_mid_body_is_retried_whole(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig], fault: str
) -> None:
    data = os.urandom(3 * MiB)
    s3dlio.put(f"s3://{bucket}/whole", data)
    cfg = s3_config(endpoint_url=proxy.endpoint, initial_backoff=0.01)
    proxy.set_mode(fault, count=1, stall_after=MiB, match="^GET ")
    assert bytes(s3dlio.get(f"s3://{bucket}/whole", config=cfg)) == data
    assert proxy.faults_injected == 1


def test_cuts_past_the_budget_are_a_named_error(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    s3dlio.put(f"s3://{bucket}/k", os.urandom(2 * MiB))
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=3, initial_backoff=0.01)
    proxy.set_mode("reset_body", stall_after=100_000, match="^GET ")
    with pytest.raises(s3dlio.exceptions.StorageIOError, match=f"s3://{bucket}/k"):
        s3dlio.get_range(f"s3://{bucket}/k", 0, 2 * MiB, config=cfg)
    assert len(_ranges(proxy)) == 3  # the budget: three attempts, each resuming further on


@pytest.mark.timeout(180)
def test_the_server_killed_and_restarted_mid_epoch(tmp_path: Any) -> None:
    """SIGKILL the store in the middle of an epoch and start it again (same data, same port):
    with default settings the loader waits for it and every sample arrives exactly once."""
    from s3dlio.testing import LocalS3Server

    srv = LocalS3Server(data_dir=str(tmp_path / "weed")).start()
    try:
        cfg = srv.config()
        s3dlio.create_bucket("s3://restart", config=cfg)
        n = 400
        items = [(f"s3://restart/{i:05d}", i.to_bytes(8, "little") * 64) for i in range(n)]
        s3dlio.put_many(items, config=cfg)
        ds = ObjectDataset.from_uris([u for u, _ in items], [512] * n, transform=index_of, config=cfg)
        loader = DataLoader(
            ds, batch_size=8, collate_fn=list, pool=PoolConfig(pool_size=16, readahead_batches=2)
        )
        it = iter(loader)
        got = [next(it) for _ in range(5)]
        failed: list[BaseException] = []

        def rest_of_epoch() -> None:
            try:
                got.extend(it)
            except BaseException as e:  # reported below
                failed.append(e)

        # The server is started from this thread: it dies with the thread that started it.
        reader = threading.Thread(target=rest_of_epoch)
        srv.kill()
        reader.start()
        time.sleep(1)
        srv.start()
        reader.join(120)
        assert not reader.is_alive() and not failed, failed
    finally:
        srv.stop()
    assert _indices(got) == list(range(n))
    s = loader.stats()
    assert s["retries"]["connection"] > 0 and s["errors"]["connection"] == 0, s["retries"]


def test_a_list_storm_is_waited_out(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """Every listing request answered 503 SlowDown for 4 s (as 512 ranks listing at once draw),
    default settings: the listing waits on paced probes and returns every key, once."""
    s3dlio.put_many([(f"s3://{bucket}/ls/{i:03d}", b"x") for i in range(30)])
    cfg = s3_config(endpoint_url=proxy.endpoint)
    proxy.set_mode("http503", match=r"[?&]list-type=2")
    calm = threading.Timer(4.0, proxy.set_mode, args=("pass",))
    calm.start()
    t0 = time.monotonic()
    try:
        got = [o.uri for o in s3dlio.list(f"s3://{bucket}/ls/", config=cfg)]
    finally:
        calm.join()
    assert got == [f"s3://{bucket}/ls/{i:03d}" for i in range(30)]
    assert time.monotonic() - t0 >= 3.5 and proxy.faults_injected >= 3  # it did wait the storm out
