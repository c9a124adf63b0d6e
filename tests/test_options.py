"""The three configuration levels (LoaderOptions -> PoolConfig -> RangeEngineConfig): frozen,
picklable dataclasses, validated once at construction, unknown keys refused, the pool derived from
the loader options unless given explicitly."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest

import s3dlio
from s3dlio import LoaderOptions, PoolConfig, RangeEngineConfig
from s3dlio.exceptions import InvalidConfigError

MiB = 1024 * 1024


@pytest.fixture
def small_ds(tmp_path: Path) -> s3dlio.ObjectDataset:
    """Four tiny local objects (constructing a DataLoader never fetches them)."""
    uris = []
    for i in range(4):
        uri = f"file://{tmp_path}/o{i}"
        s3dlio.put(uri, bytes([i]) * 8)
        uris.append(uri)
    return s3dlio.ObjectDataset.from_uris(uris)


NON_DEFAULT = [
    LoaderOptions(
        batch_size=7,
        shuffle=True,
        seed=42,
        drop_last=True,
        num_workers=3,
        prefetch_factor=5,
        timeout=2.5,
        persistent_workers=True,
        in_order=False,
        on_error="continue",
    ),
    PoolConfig(pool_size=33, readahead_batches=9, request_timeout=1.5),
    RangeEngineConfig(chunk_size=MiB, max_concurrent_ranges=3, min_split_size=4 * MiB, range_timeout=9.0),
]


@pytest.mark.parametrize("obj", NON_DEFAULT, ids=lambda o: type(o).__name__)
def test_options_are_frozen_dataclasses(obj: Any) -> None:
    """Every level is a frozen dataclass: assigning a field raises FrozenInstanceError and leaves
    the value unchanged."""
    assert dataclasses.is_dataclass(obj)
    field = dataclasses.fields(obj)[0].name
    before = getattr(obj, field)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, field, before)
    assert getattr(obj, field) == before


@pytest.mark.parametrize("obj", NON_DEFAULT, ids=lambda o: type(o).__name__)
def test_options_pickle_round_trip(obj: Any) -> None:
    """Each level survives pickling (spawn workers, checkpoints) equal to the original, and its
    to_dict() carries exactly its fields."""
    clone = pickle.loads(pickle.dumps(obj))
    assert clone == obj
    assert type(clone) is type(obj)
    assert obj.to_dict() == {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_defaults_are_valid_and_torch_like() -> None:
    """Constructing each level with its defaults works, and LoaderOptions' defaults are torch
    DataLoader's (batch_size=1, no shuffle, no workers, in order, errors raised)."""
    o = LoaderOptions()
    assert (o.batch_size, o.shuffle, o.drop_last, o.num_workers, o.pin_memory) == (1, False, False, 0, False)
    assert (o.prefetch_factor, o.timeout, o.persistent_workers) == (None, None, False)
    assert (o.in_order, o.on_error) == (True, "raise")
    r = RangeEngineConfig()
    assert r.min_split_size >= r.chunk_size > 0 and r.max_concurrent_ranges >= 1
    PoolConfig(pool_size=1, readahead_batches=1)


INVALID = [
    (LoaderOptions, {"batch_size": 0}, "batch_size"),
    (LoaderOptions, {"batch_size": -3}, "batch_size"),
    (LoaderOptions, {"prefetch_factor": 0}, "prefetch_factor"),
    (LoaderOptions, {"persistent_workers": True, "num_workers": 0}, "num_workers"),
    (LoaderOptions, {"on_error": "bogus"}, "on_error"),
    (LoaderOptions, {"num_workers": -1}, "num_workers"),
    (LoaderOptions, {"timeout": -1.0}, "timeout"),
    (LoaderOptions, {"seed": -1}, "seed"),
    (PoolConfig, {"pool_size": 0, "readahead_batches": 1}, "pool_size"),
    (PoolConfig, {"pool_size": 8, "readahead_batches": 0}, "readahead_batches"),
    (PoolConfig, {"pool_size": 8, "readahead_batches": 1, "request_timeout": -0.5}, "request_timeout"),
    (RangeEngineConfig, {"chunk_size": 8 * MiB, "min_split_size": 4 * MiB}, "min_split_size"),
    (RangeEngineConfig, {"chunk_size": 0}, "chunk_size"),
    (RangeEngineConfig, {"max_concurrent_ranges": 0}, "max_concurrent_ranges"),
    (RangeEngineConfig, {"range_timeout": -1.0}, "range_timeout"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "names"), INVALID, ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _ in INVALID]
)
def test_invalid_values_raise_at_construction(cls: type, kwargs: dict[str, Any], names: str) -> None:
    """A bad value is refused when the object is built, with InvalidConfigError (also a
    ValueError) whose message names the offending field."""
    with pytest.raises(InvalidConfigError, match=names) as info:
        cls(**kwargs)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("cls", [LoaderOptions, PoolConfig, RangeEngineConfig])
def test_unknown_keyword_is_a_type_error(cls: type) -> None:
    """An unknown key is an error (TypeError naming it), never silently ignored."""
    required = {"pool_size": 4, "readahead_batches": 1} if cls is PoolConfig else {}
    with pytest.raises(TypeError, match="batchsize"):
        cls(batchsize=4, **required)


@pytest.mark.parametrize(
    ("num_workers", "prefetch_factor", "expected"),
    [(0, None, 2), (0, 1, 1), (0, 7, 7), (1, None, 2), (3, None, 6), (4, 5, 20)],
)
def test_readahead_batches_from_prefetch_factor_and_workers(
    num_workers: int, prefetch_factor: int | None, expected: int
) -> None:
    """readahead_batches = prefetch_factor (default 2) * max(1, num_workers), as torch prefetches
    prefetch_factor batches per worker."""
    o = LoaderOptions(num_workers=num_workers, prefetch_factor=prefetch_factor)
    assert o.readahead_batches == expected
    assert PoolConfig.from_loader_options(o).readahead_batches == expected


@pytest.mark.parametrize(
    ("batch_size", "num_workers", "prefetch_factor"),
    [(1, 0, None), (4, 0, 1), (8, 0, None), (32, 0, None), (16, 2, 3), (64, 4, 4), (512, 0, None)],
)
def test_pool_from_loader_options(batch_size: int, num_workers: int, prefetch_factor: int | None) -> None:
    """The derived pool keeps enough requests in flight to fill the read-ahead window
    (readahead_batches * batch_size), clamped to 16..256, with no request timeout of its own."""
    o = LoaderOptions(batch_size=batch_size, num_workers=num_workers, prefetch_factor=prefetch_factor)
    pool = PoolConfig.from_loader_options(o)
    readahead = (prefetch_factor or 2) * max(1, num_workers)
    assert pool.readahead_batches == readahead
    assert pool.pool_size == min(256, max(16, readahead * batch_size))
    assert 16 <= pool.pool_size <= 256
    assert pool.request_timeout is None


def test_larger_prefetch_gives_a_larger_pool() -> None:
    """prefetch_factor and num_workers feed through to the pool: more read-ahead, more requests in
    flight (until the 256 cap)."""
    small = PoolConfig.from_loader_options(LoaderOptions(batch_size=8, prefetch_factor=2))
    large = PoolConfig.from_loader_options(LoaderOptions(batch_size=8, prefetch_factor=8))
    assert large.readahead_batches > small.readahead_batches
    assert large.pool_size > small.pool_size


def test_dataloader_derives_pool_and_range_engine(small_ds: s3dlio.ObjectDataset) -> None:
    """Without pool=/range_engine=, a DataLoader uses PoolConfig.from_loader_options(its options)
    and the default RangeEngineConfig; its options mirror the keyword arguments."""
    dl = s3dlio.DataLoader(small_ds, batch_size=16, num_workers=2, prefetch_factor=3, seed=9, shuffle=True)
    assert dl.options == LoaderOptions(batch_size=16, num_workers=2, prefetch_factor=3, seed=9, shuffle=True)
    assert dl.pool == PoolConfig.from_loader_options(dl.options)
    assert dl.pool == PoolConfig(pool_size=96, readahead_batches=6)
    assert dl.range_engine == RangeEngineConfig()
    assert (dl.batch_size, dl.num_workers, dl.drop_last) == (16, 2, False)
    dl.close()


def test_dataloader_explicit_levels_override(small_ds: s3dlio.ObjectDataset) -> None:
    """pool= and range_engine= replace the derived levels as given; options= replaces the
    keyword arguments."""
    pool = PoolConfig(pool_size=3, readahead_batches=1, request_timeout=4.0)
    rng = RangeEngineConfig(chunk_size=MiB, min_split_size=2 * MiB)
    opts = LoaderOptions(batch_size=2, shuffle=True, seed=3)
    dl = s3dlio.DataLoader(small_ds, options=opts, pool=pool, range_engine=rng)
    assert dl.pool is pool and dl.range_engine is rng and dl.options is opts
    assert dl.batch_size == 2
    dl.close()


def test_dataloader_validates_its_arguments(small_ds: s3dlio.ObjectDataset) -> None:
    """DataLoader keyword arguments go through the same validation (InvalidConfigError at
    construction), an unknown keyword is a TypeError, and options= must be a LoaderOptions."""
    with pytest.raises(InvalidConfigError, match="batch_size"):
        s3dlio.DataLoader(small_ds, batch_size=0)
    with pytest.raises(InvalidConfigError, match="prefetch_factor"):
        s3dlio.DataLoader(small_ds, prefetch_factor=0)
    with pytest.raises(InvalidConfigError, match="num_workers"):
        s3dlio.DataLoader(small_ds, persistent_workers=True)
    with pytest.raises(InvalidConfigError, match="on_error"):
        s3dlio.DataLoader(small_ds, on_error="skip")
    with pytest.raises(InvalidConfigError, match="even"):
        s3dlio.DataLoader(small_ds, even="round")
    with pytest.raises(InvalidConfigError, match="timeout"):
        s3dlio.DataLoader(small_ds, timeout=-1)
    with pytest.raises(TypeError, match="batchsize"):
        s3dlio.DataLoader(small_ds, batchsize=4)  # type: ignore[call-arg]
    with pytest.raises(InvalidConfigError, match="LoaderOptions"):
        s3dlio.DataLoader(small_ds, options={"batch_size": 2})  # type: ignore[arg-type]


def test_dataloader_timeout_zero_means_no_timeout(small_ds: s3dlio.ObjectDataset) -> None:
    """torch's timeout=0 (the default) means 'no limit' and becomes LoaderOptions.timeout=None;
    a positive timeout is kept."""
    assert s3dlio.DataLoader(small_ds, timeout=0).options.timeout is None
    assert s3dlio.DataLoader(small_ds, timeout=1.5).options.timeout == 1.5
