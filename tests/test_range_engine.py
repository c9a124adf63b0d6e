"""The range engine and the pool's request deadline, observed on the wire: the fault proxy in front
of the real server logs every request (method, path, Range) and how many were in flight at once."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB
from s3dlio import exceptions as exc

SIZE = 12 * MiB + 12345


@pytest.fixture
def big(bucket: str) -> tuple[str, bytes]:
    data = os.urandom(SIZE)
    uri = f"s3://{bucket}/big/obj.bin"
    s3dlio.put(uri, data)
    return uri, data


def load_one(uri: str, size: int | None, cfg: s3dlio.StorageConfig, **loader_kw: object) -> bytes:
    ds = s3dlio.ObjectDataset.from_uris([uri], [size], config=cfg)
    batches = list(s3dlio.DataLoader(ds, batch_size=1, collate_fn=lambda xs: bytes(xs[0]), **loader_kw))
    assert len(batches) == 1
    return batches[0]


def gets(proxy: FaultProxy) -> list[tuple[str, str, str | None]]:
    return [r for r in proxy.request_log if r[0] == "GET" and "list-type" not in r[1]]


def test_large_object_is_fetched_as_exact_ranges(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """An object of known size >= min_split_size arrives as ceil(size / chunk_size) ranged GETs
    that tile it exactly, with no HEAD (the size came with the dataset), and the bytes are right."""
    uri, data = big
    cfg = s3_config(endpoint_url=proxy.endpoint)
    rng = s3dlio.RangeEngineConfig(chunk_size=4 * MiB, min_split_size=8 * MiB)
    out = load_one(uri, SIZE, cfg, range_engine=rng)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    ranges = sorted(r[2] for r in gets(proxy))
    chunk = 4 * MiB
    expected = sorted(f"bytes={o}-{min(o + chunk, SIZE) - 1}" for o in range(0, SIZE, chunk))
    assert ranges == expected
    assert not [r for r in proxy.request_log if r[0] == "HEAD"]


def test_below_min_split_size_is_one_plain_get(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """min_split_size above the object's size: one GET without a Range header."""
    uri, data = big
    rng = s3dlio.RangeEngineConfig(chunk_size=4 * MiB, min_split_size=64 * MiB)
    out = load_one(uri, SIZE, s3_config(endpoint_url=proxy.endpoint), range_engine=rng)
    assert out == data
    assert [r[2] for r in gets(proxy)] == [None]


def test_unknown_size_is_one_plain_get(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """Without a size (a manifest without sizes) the engine cannot split: one plain GET."""
    uri, data = big
    rng = s3dlio.RangeEngineConfig(chunk_size=1 * MiB, min_split_size=2 * MiB)
    assert load_one(uri, None, s3_config(endpoint_url=proxy.endpoint), range_engine=rng) == data
    assert [r[2] for r in gets(proxy)] == [None]


def test_get_splits_a_large_object_after_its_first_chunk(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """s3dlio.get of an object of unknown size: the first ranged GET (chunk_size bytes) tells the
    size, the rest comes as chunk_size ranges, at most max_concurrent_ranges in flight, no HEAD,
    and the bytes are right. The sync and async forms agree."""
    import asyncio

    uri, data = big
    cfg = s3_config(endpoint_url=proxy.endpoint)
    rng = s3dlio.RangeEngineConfig(chunk_size=2 * MiB, min_split_size=4 * MiB, max_concurrent_ranges=3)
    assert (
        hashlib.sha256(s3dlio.get(uri, range_engine=rng, config=cfg)).digest()
        == hashlib.sha256(data).digest()
    )
    chunk = 2 * MiB
    expected = [f"bytes={o}-{min(o + chunk, SIZE) - 1}" for o in range(0, SIZE, chunk)]
    log = [r[2] for r in gets(proxy)]
    assert log[0] == expected[0] and sorted(log) == sorted(expected)
    assert not [r for r in proxy.request_log if r[0] == "HEAD"]
    assert 1 < proxy.max_in_flight <= 3
    assert bytes(asyncio.run(s3dlio.get_async(uri, range_engine=rng, config=cfg))) == data


def test_get_below_min_split_size_is_two_requests(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """Below min_split_size, the rest after the first chunk is one more ranged GET; with the
    default engine (8 MiB chunks, 32 MiB threshold) the same."""
    uri, data = big
    cfg = s3_config(endpoint_url=proxy.endpoint)
    rng = s3dlio.RangeEngineConfig(chunk_size=1 * MiB, min_split_size=64 * MiB)
    assert s3dlio.get(uri, range_engine=rng, config=cfg) == data
    assert [r[2] for r in gets(proxy)] == [f"bytes=0-{MiB - 1}", f"bytes={MiB}-{SIZE - 1}"]


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_get_small_and_empty_objects(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig], size: int
) -> None:
    """Objects within the first chunk are one request; an empty object (HTTP 416 for the first
    range) comes back empty, not as an error."""
    uri = f"s3://{bucket}/small/{size}"
    data = os.urandom(size)
    s3dlio.put(uri, data)
    assert s3dlio.get(uri, config=s3_config(endpoint_url=proxy.endpoint)) == data
    assert len(gets(proxy)) == (2 if size == 0 else 1)


def test_get_missing_object_and_bad_range_config(bucket: str) -> None:
    """A missing object is NotFoundError naming it; a bad RangeEngineConfig is refused up front."""
    with pytest.raises(exc.NotFoundError, match="nope"):
        s3dlio.get(f"s3://{bucket}/nope")
    with pytest.raises(exc.InvalidConfigError, match="min_split_size"):
        s3dlio.get(
            f"s3://{bucket}/nope",
            range_engine=s3dlio.RangeEngineConfig(chunk_size=8 * MiB, min_split_size=MiB),
        )


@pytest.mark.parametrize("concurrency", [1, 4])
def test_max_concurrent_ranges_bounds_requests_in_flight(
    big: tuple[str, bytes],
    proxy: FaultProxy,
    s3_config: Callable[..., s3dlio.StorageConfig],
    concurrency: int,
) -> None:
    """max_concurrent_ranges caps the ranged GETs in flight for one object (1: strictly one at a
    time; 4: several at once, never more than 4)."""
    uri, data = big
    rng = s3dlio.RangeEngineConfig(
        chunk_size=1 * MiB, min_split_size=1 * MiB, max_concurrent_ranges=concurrency
    )
    assert load_one(uri, SIZE, s3_config(endpoint_url=proxy.endpoint), range_engine=rng) == data
    assert len(gets(proxy)) == 13
    if concurrency == 1:
        assert proxy.max_in_flight == 1
    else:
        assert 2 <= proxy.max_in_flight <= concurrency


def test_a_stale_size_is_an_error_never_truncated_or_padded_data(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """A size from the listing that no longer matches the object (it changed since) fails the
    object with an error naming the URI, instead of returning a prefix or zero padding."""
    uri, _ = big
    cfg = s3_config(endpoint_url=proxy.endpoint)
    rng = s3dlio.RangeEngineConfig(chunk_size=1 * MiB, min_split_size=1 * MiB)
    for wrong in (SIZE - 5000, SIZE + 5000):
        with pytest.raises(exc.S3dlioError) as ei:
            load_one(uri, wrong, cfg, range_engine=rng)
        assert uri in str(ei.value)
        assert not isinstance(ei.value, exc.NotFoundError)


@pytest.mark.timeout(60)
def test_range_timeout_ends_a_stalled_range(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """range_timeout bounds one ranged GET: a server that stops sending mid-range gives a
    StorageTimeoutError (a TimeoutError) naming the URI, not a hang."""
    uri, _ = big
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=30, max_attempts=1)
    rng = s3dlio.RangeEngineConfig(chunk_size=4 * MiB, min_split_size=4 * MiB, range_timeout=0.5)
    proxy.set_mode("stall_body", stall_after=64 * 1024)
    with pytest.raises(TimeoutError) as ei:
        load_one(uri, SIZE, cfg, range_engine=rng)
    assert isinstance(ei.value, exc.StorageTimeoutError) and uri in str(ei.value)


@pytest.mark.timeout(60)
def test_pool_request_timeout_ends_a_silent_request(
    big: tuple[str, bytes], proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """PoolConfig.request_timeout bounds each object request, retries included: against a server
    that never answers, the loader raises StorageTimeoutError naming the URI and the setting."""
    uri, _ = big
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=30)
    proxy.set_mode("blackhole")
    pool = s3dlio.PoolConfig(pool_size=4, readahead_batches=1, request_timeout=0.5)
    with pytest.raises(exc.StorageTimeoutError) as ei:
        load_one(uri, SIZE, cfg, pool=pool)
    assert uri in str(ei.value) and "request_timeout" in str(ei.value)
