"""s3dlio.iter_get: many objects streamed in input order through a bounded window of the loader's
Rust pool (issue 14, item 3)."""

from __future__ import annotations

import pytest

import s3dlio
from s3dlio.exceptions import InvalidConfigError, InvalidUriError, NotFoundError


@pytest.fixture
def uris(bucket: str) -> list[str]:
    out = [f"s3://{bucket}/it/{i:04d}" for i in range(300)]
    s3dlio.put_many([(u, i.to_bytes(2, "little") * (500 + i)) for i, u in enumerate(out)])
    return out


def test_input_order_and_bytes(uris: list[str]) -> None:
    picked = uris[::-1][:200] + uris[:5]  # any order, repeats allowed
    got = [bytes(b) for b in s3dlio.iter_get(picked, max_concurrency=16)]
    assert got == [bytes(s3dlio.get(u)) for u in picked]


def test_the_window_bounds_requests_in_flight(uris: list[str]) -> None:
    s3dlio.stats(reset=True)
    n = sum(len(b) for b in s3dlio.iter_get(uris, max_concurrency=8))
    assert n == sum(2 * (500 + i) for i in range(300))
    assert 1 <= s3dlio.stats()["max_in_flight"] <= 8


def test_early_break_cancels_the_rest(uris: list[str]) -> None:
    it = s3dlio.iter_get(uris, max_concurrency=4)
    first = next(it)
    assert bytes(memoryview(first)[:2]) == (0).to_bytes(2, "little")
    it.close()  # what a `break` does to a for loop's generator
    assert s3dlio.live_tasks() == 0


def test_a_missing_object_raises_naming_it(uris: list[str], bucket: str) -> None:
    missing = f"s3://{bucket}/it/nope"
    it = s3dlio.iter_get([uris[0], missing, uris[1]])
    assert bytes(next(it)) == bytes(s3dlio.get(uris[0]))
    with pytest.raises(NotFoundError, match="it/nope"):
        next(it)


def test_bad_arguments_fail_at_the_call() -> None:
    with pytest.raises(InvalidConfigError, match="not a single string"):
        s3dlio.iter_get("s3://b/k")
    with pytest.raises(InvalidUriError):
        s3dlio.iter_get(["not a uri"])
    with pytest.raises(InvalidConfigError, match="max_concurrency"):
        s3dlio.iter_get(["s3://b/k"], max_concurrency=0)
    assert list(s3dlio.iter_get([])) == []
    for bad in (0, -1, True, 1.5, "1M"):
        with pytest.raises(InvalidConfigError, match="max_bytes"):
            s3dlio.iter_get(["s3://b/k"], max_bytes=bad)  # type: ignore[arg-type]


@pytest.fixture
def mib_objects(bucket: str) -> list[str]:
    out = [f"s3://{bucket}/mib/{i:03d}" for i in range(40)]
    s3dlio.put_many([(u, bytes([i]) * MiB) for i, u in enumerate(out)])
    return out


MiB = 1024 * 1024


def test_max_bytes_bounds_the_window_by_bytes(mib_objects: list[str]) -> None:
    """40 objects of 1 MiB with a 3 MiB budget and 64 requests allowed: at most 3 in flight."""
    s3dlio.stats(reset=True)
    got = [bytes(b) for b in s3dlio.iter_get(mib_objects, max_concurrency=64, max_bytes=3 * MiB)]
    assert got == [bytes([i]) * MiB for i in range(40)]
    assert 1 <= s3dlio.stats()["max_in_flight"] <= 3
    s3dlio.stats(reset=True)
    assert sum(len(b) for b in s3dlio.iter_get(mib_objects, max_concurrency=64, max_bytes=None)) == 40 * MiB
    assert s3dlio.stats()["max_in_flight"] > 3, "max_bytes=None bounds by requests only"


def test_an_object_larger_than_the_budget_still_comes_one_at_a_time(mib_objects: list[str]) -> None:
    s3dlio.stats(reset=True)
    got = [bytes(b)[:1] for b in s3dlio.iter_get(mib_objects[:10], max_bytes=1000)]
    assert got == [bytes([i]) for i in range(10)]
    assert s3dlio.stats()["max_in_flight"] == 1


def test_a_loop_that_drops_its_buffers_reuses_their_memory(mib_objects: list[str]) -> None:
    """Within the budget, the buffers the loop drops come back to the pool and serve the next
    reads: only about the first window's worth is fresh memory."""
    before = s3dlio.stats()["buffer_pool"]
    n = 0
    for buf in s3dlio.iter_get(mib_objects, max_bytes=4 * MiB):
        n += len(buf)
        del buf
    after = s3dlio.stats()["buffer_pool"]
    assert n == 40 * MiB
    if after["limit"] >= 16 * MiB:
        assert after["misses"] - before["misses"] <= 8
        assert after["hits"] - before["hits"] >= 32


def test_an_early_break_with_a_budget_leaves_nothing_running(mib_objects: list[str]) -> None:
    for i, buf in enumerate(s3dlio.iter_get(mib_objects, max_bytes=2 * MiB)):
        assert bytes(buf)[:1] == bytes([i])
        if i == 5:
            break
    assert s3dlio.live_tasks() == 0
