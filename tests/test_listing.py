"""Listings past the 1,000-key page size of S3: 2,600 keys, recursive and one level with a
delimiter, glob filters, and streaming with list_iter."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import s3dlio
from helpers import fresh_bucket, rel, wait_until

pytestmark = pytest.mark.slow

DIRS = ("alpha", "beta", "gamma")
N_TOP = 100
N_NESTED = 2500  # spread over DIRS
TOTAL = N_TOP + N_NESTED


def expected_keys() -> dict[str, int]:
    keys = {f"top_{i:04d}": i % 97 + 1 for i in range(N_TOP)}
    for i in range(N_NESTED):
        keys[f"{DIRS[i % 3]}/k_{i:04d}"] = i % 89 + 1
    return keys


KEYS = expected_keys()


@pytest.fixture(scope="module")
def big(s3_server: object) -> Iterator[str]:
    """A bucket holding the 2,600 KEYS (written once for the module); yields ``s3://name/``."""
    with fresh_bucket("list") as name:
        root = f"s3://{name}/"

        def write(item: tuple[str, int]) -> None:
            key, size = item
            s3dlio.put(root + key, bytes([size % 256]) * size)

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(write, KEYS.items()))
        yield root


def test_recursive_listing_has_every_key_and_size(big: str) -> None:
    """A recursive listing of 2,600 keys follows every page: each key exactly once, right size."""
    entries = s3dlio.list(big)
    assert len(entries) == TOTAL
    got = {rel(e.uri, big): e.size for e in entries}
    assert got == KEYS
    assert not any(e.is_dir for e in entries)


def test_one_level_listing_with_delimiter(big: str) -> None:
    """recursive=False at the root: the 100 top-level files plus exactly three is_dir prefixes."""
    entries = s3dlio.list(big, recursive=False)
    dirs = {rel(e.uri, big) for e in entries if e.is_dir}
    files = {rel(e.uri, big): e.size for e in entries if not e.is_dir}
    assert dirs == set(DIRS)
    assert files == {k: v for k, v in KEYS.items() if "/" not in k}
    assert len(entries) == N_TOP + len(DIRS)


@pytest.mark.parametrize("d", DIRS)
def test_one_level_listing_inside_a_directory(big: str, d: str) -> None:
    """recursive=False inside a 'directory' of more than 800 keys pages through all of them."""
    prefix = f"{big}{d}/"
    entries = s3dlio.list(prefix, recursive=False)
    want = {k[len(d) + 1 :]: v for k, v in KEYS.items() if k.startswith(d + "/")}
    assert len(want) > 800
    assert {rel(e.uri, prefix): e.size for e in entries} == want
    assert not any(e.is_dir for e in entries)


def test_string_prefix_listing(big: str) -> None:
    """A prefix that is not a directory boundary ('top_00') selects keys by string prefix."""
    got = {rel(e.uri, big) for e in s3dlio.list(big + "top_00")}
    assert got == {f"top_{i:04d}" for i in range(100)}


@pytest.mark.parametrize("pattern", ["alpha/*7", "*_00[0-4]?", "top_*", "*/k_1???", "gamma/*", "nomatch*"])
def test_pattern_filter(big: str, pattern: str) -> None:
    """pattern keeps exactly the keys the glob matches (fnmatch semantics, '*' crosses '/')."""
    got = {rel(e.uri, big) for e in s3dlio.list(big, pattern=pattern)}
    assert got == {k for k in KEYS if fnmatch.fnmatchcase(k, pattern)}


def test_pattern_with_braces(big: str) -> None:
    """{a,b} alternatives in a pattern select from both branches."""
    got = {rel(e.uri, big) for e in s3dlio.list(big, pattern="{alpha,beta}/k_000?")}
    want = {
        k for k in KEYS if fnmatch.fnmatchcase(k, "alpha/k_000?") or fnmatch.fnmatchcase(k, "beta/k_000?")
    }
    assert got == want and want


def test_pattern_with_one_level_listing(big: str) -> None:
    """A pattern combined with recursive=False filters the top-level files."""
    got = {rel(e.uri, big) for e in s3dlio.list(big, recursive=False, pattern="top_009*")}
    assert got == {f"top_{i:04d}" for i in range(90, 100)}


def test_list_iter_streams_everything(big: str) -> None:
    """list_iter yields all 2,600 entries, each once, identical to list()."""
    it = s3dlio.list_iter(big)
    streamed = [(e.uri, e.size) for e in it]
    assert len(streamed) == TOTAL
    assert sorted(streamed) == sorted((e.uri, e.size) for e in s3dlio.list(big))
    with pytest.raises(StopIteration):
        next(it)


def test_list_iter_close_stops_the_background_task(big: str) -> None:
    """Closing (or dropping) a ListIter after a few entries stops its listing task."""
    it = s3dlio.list_iter(big)
    first = list(itertools.islice(it, 10))
    assert len(first) == 10
    it.close()
    it.close()  # idempotent
    with pytest.raises(StopIteration):
        next(it)
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=2.0), s3dlio.live_tasks()
    it2 = s3dlio.list_iter(big)
    next(it2)
    del it2
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=2.0), s3dlio.live_tasks()
