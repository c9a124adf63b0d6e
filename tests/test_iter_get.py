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
