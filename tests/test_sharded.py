"""ShardedDataset and ShardStream over shards that other tools wrote (the webdataset package's
TarWriter, the tfrecord package's writer and index tool, numpy.savez) on the local S3 server:
a global shuffle with every sample once, rank sharding, exact mid-epoch resume, coalesced ranged
GETs, CRC checks, the index cache and sidecars, the torch drop-in, and the streaming mode."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import s3dlio
from helpers import require, run_doc_examples
from s3dlio.exceptions import CorruptShardError, InvalidConfigError, NotFoundError
from s3dlio.sharded import ShardedDataset, ShardStream

wds = require("webdataset")

SHARDS, PER_SHARD = 4, 25  # 100 samples


def label(sample: dict[str, Any]) -> int:
    return int(bytes(sample["cls"]))


def payload(n: int) -> bytes:
    return struct.pack("<I", n) * (50 + n % 7 * 30)  # sizes vary: 200 .. 920 bytes


def write_wds(root: Path, shards: int = SHARDS, per: int = PER_SHARD) -> None:
    """Shards as the webdataset package writes them: a .bin and a .cls file per sample."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        with wds.TarWriter(str(root / f"train-{k:04d}.tar")) as w:
            for i in range(per):
                n = k * per + i
                w.write({"__key__": f"sample{n:06d}", "bin": payload(n), "cls": str(n).encode()})


def upload(local: Path, uri: str) -> None:
    for p in sorted(local.iterdir()):
        s3dlio.put(f"{uri}/{p.name}", p.read_bytes())


@pytest.fixture
def wds_prefix(bucket: str, tmp_path: Path) -> str:
    write_wds(tmp_path / "wds")
    uri = f"s3://{bucket}/wds"
    upload(tmp_path / "wds", uri)
    return uri


def dataset(uri: str, tmp_path: Path, **kw: Any) -> ShardedDataset:
    return ShardedDataset.from_prefix(uri, format="wds", index_cache=tmp_path / "cache", **kw)


def labels_of(loader: Any) -> list[int]:
    return [label(s) for batch in loader for s in batch]


def as_list(batch: list[Any]) -> list[Any]:
    return batch


# -------------------------------------------------------------------------------------------------
# WebDataset
# -------------------------------------------------------------------------------------------------


def test_wds_samples_match_what_webdataset_wrote(wds_prefix: str, tmp_path: Path) -> None:
    """len is the total sample count; ds[i] is sample i in shard order with every file, byte for
    byte, as zero-copy views, and the shard it came from."""
    ds = dataset(wds_prefix, tmp_path)
    assert len(ds) == SHARDS * PER_SHARD and len(ds.shards) == SHARDS
    for n in (0, 24, 25, 99, -1):
        s = ds[n]
        m = n % len(ds)
        assert s["__key__"] == f"sample{m:06d}" and label(s) == m
        assert bytes(s["bin"]) == payload(m)
        assert isinstance(s["bin"], memoryview)
        assert s["__url__"] == ds.shards[m // PER_SHARD]
    assert ds.locate(57) == (2, 7)
    with pytest.raises(IndexError):
        ds[100]


def test_global_shuffle_every_sample_once_new_order_each_epoch(wds_prefix: str, tmp_path: Path) -> None:
    """A shuffled epoch yields every sample exactly once, mixed across shards (not shard by
    shard), in an order that is new each epoch and the same for the same seed."""
    ds = dataset(wds_prefix, tmp_path)
    dl = s3dlio.DataLoader(ds, batch_size=8, shuffle=True, seed=3, collate_fn=as_list)
    e0, e1 = labels_of(dl), labels_of(dl)
    assert sorted(e0) == sorted(e1) == list(range(100))
    assert e0 != e1
    first_batch_shards = {n // PER_SHARD for n in e0[:8]}
    assert len(first_batch_shards) > 1  # a global shuffle, not one shard at a time
    again = s3dlio.DataLoader(ds, batch_size=8, shuffle=True, seed=3, collate_fn=as_list)
    assert labels_of(again) == e0


def test_ranks_split_the_samples(wds_prefix: str, tmp_path: Path) -> None:
    ds = dataset(wds_prefix, tmp_path)
    parts = [
        labels_of(s3dlio.DataLoader(ds, batch_size=5, shuffle=True, rank=r, world_size=2, collate_fn=as_list))
        for r in range(2)
    ]
    assert len(parts[0]) == len(parts[1]) == 50
    assert sorted(parts[0] + parts[1]) == list(range(100))


def test_mid_epoch_resume_is_exact(wds_prefix: str, tmp_path: Path) -> None:
    """A state taken after 3 batches, loaded into a new loader (other num_workers), yields
    exactly the rest of the epoch: nothing lost, nothing twice."""
    ds = dataset(wds_prefix, tmp_path)
    dl = s3dlio.DataLoader(ds, batch_size=7, shuffle=True, seed=11, collate_fn=as_list)
    it = iter(dl)
    head = [label(s) for _ in range(3) for s in next(it)]
    state = dl.state_dict()
    it.close()
    fresh = s3dlio.DataLoader(
        dataset(wds_prefix, tmp_path), batch_size=7, shuffle=True, seed=11, num_workers=2, collate_fn=as_list
    )
    fresh.load_state_dict(state)
    rest = labels_of(fresh)
    assert len(head) == 21 and sorted(head + rest) == list(range(100))
    whole = labels_of(s3dlio.DataLoader(ds, batch_size=7, shuffle=True, seed=11, collate_fn=as_list))
    assert head + rest == whole


def test_adjacent_samples_of_a_batch_share_a_request(wds_prefix: str, tmp_path: Path) -> None:
    """In shard order a batch of 25 lies in one shard: one ranged GET per batch. With
    max_gap=0 and max_range below two samples every sample is its own GET."""
    ds = dataset(wds_prefix, tmp_path)
    dl = s3dlio.DataLoader(ds, batch_size=PER_SHARD, collate_fn=as_list)
    assert labels_of(dl) == list(range(100))
    assert dl.stats()["ops"]["get"]["requests"] == SHARDS
    apart = dataset(wds_prefix, tmp_path, max_gap=0, max_range=1000)
    dl = s3dlio.DataLoader(apart, batch_size=PER_SHARD, collate_fn=as_list)
    assert labels_of(dl) == list(range(100))
    assert dl.stats()["ops"]["get"]["requests"] == 100
    # bytes read: each sample's range once (the tar headers between a sample's files included)
    total = sum(int(ix.lengths.sum()) for ix in apart._indexes if ix is not None)
    assert dl.stats()["ops"]["get"]["bytes"] == total


def test_block_cache_reads_each_block_once_whatever_the_order(wds_prefix: str, tmp_path: Path) -> None:
    """With cache_bytes above the dataset, a shuffled epoch is one GET per block (samples that
    cross a block boundary included, byte for byte), and the next epoch reads nothing."""
    ds = dataset(wds_prefix, tmp_path, cache_bytes=64 << 20, block_size=4096)
    sizes = [int(o.size) for o in s3dlio.list(wds_prefix + "/")]
    blocks = sum(-(-size // 4096) for size in sizes)
    dl = s3dlio.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=as_list)
    first = [(label(s), bytes(s["bin"])) for b in dl for s in b]
    assert sorted(first) == [(n, payload(n)) for n in range(100)]
    stats = ds.cache_stats()
    assert stats is not None
    # every block holding a sample's bytes, once (the tar's trailing zero blocks are never read)
    assert stats["blocks_fetched"] == dl.stats()["ops"]["get"]["requests"] <= blocks
    assert stats["bytes"] <= sum(sizes)
    second = [(label(s), bytes(s["bin"])) for b in dl for s in b]
    assert sorted(second) == sorted(first) and second != first
    assert ds.cache_stats()["blocks_fetched"] == stats["blocks_fetched"]  # type: ignore[index]


def test_block_cache_under_budget_evicts_and_stays_correct(wds_prefix: str, tmp_path: Path) -> None:
    ds = dataset(wds_prefix, tmp_path, cache_bytes=16 << 10, block_size=4096)
    dl = s3dlio.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=as_list)
    got = [(label(s), bytes(s["bin"])) for b in dl for s in b]
    assert sorted(got) == [(n, payload(n)) for n in range(100)]
    stats = ds.cache_stats()
    assert stats is not None and stats["bytes"] <= 16 << 10
    with pytest.raises(InvalidConfigError, match="cache_bytes"):
        dataset(wds_prefix, tmp_path, cache_bytes=-1)


def test_index_cache_and_a_changed_shard(wds_prefix: str, tmp_path: Path) -> None:
    """The second from_prefix reads no shard (the index comes from the cache); rewriting a shard
    changes its ETag, so that shard alone is indexed again."""
    dataset(wds_prefix, tmp_path)
    before = s3dlio.stats()["ops"]["get"]
    ds = dataset(wds_prefix, tmp_path)
    after = s3dlio.stats()["ops"]["get"]
    assert after["requests"] == before["requests"] and len(ds) == 100
    write_wds(tmp_path / "small", shards=1, per=3)
    s3dlio.put(f"{wds_prefix}/train-0002.tar", (tmp_path / "small" / "train-0000.tar").read_bytes())
    before = s3dlio.stats()["ops"]["get"]
    ds = dataset(wds_prefix, tmp_path)
    assert len(ds) == 3 * PER_SHARD + 3
    assert s3dlio.stats()["ops"]["get"]["requests"] - before["requests"] == 1
    assert [label(ds[50 + i]) for i in range(3)] == [0, 1, 2]


def test_sidecar_indexes(wds_prefix: str, tmp_path: Path) -> None:
    """sidecar=True writes <shard>.s3dlio-index objects next to the shards and later reads them
    instead of the shards (with no local cache)."""
    ds = ShardedDataset.from_prefix(wds_prefix, format="wds", index_cache=False, sidecar=True)
    names = sorted(o.uri.rsplit("/", 1)[1] for o in s3dlio.list(wds_prefix + "/"))
    assert names.count("train-0000.tar.s3dlio-index") == 1 and len(names) == 2 * SHARDS
    before = s3dlio.stats()["ops"]["get"]
    again = ShardedDataset.from_prefix(wds_prefix, format="wds", index_cache=False, sidecar=True)
    got = s3dlio.stats()["ops"]["get"]
    assert got["requests"] - before["requests"] == SHARDS  # the sidecars
    assert got["bytes"] - before["bytes"] < 20_000  # not the shards
    assert len(again) == len(ds) and label(again[77]) == 77


def test_torch_dataloader_drop_in(wds_prefix: str, tmp_path: Path) -> None:
    """torch's DataLoader with forked workers fetches whole batches through __getitems__."""
    torch = require("torch")
    ds = dataset(wds_prefix, tmp_path, transform=label)
    dl = torch.utils.data.DataLoader(ds, batch_size=10, shuffle=True, num_workers=2)
    got = [int(x) for batch in dl for x in batch]
    assert sorted(got) == list(range(100))
    assert ds.__getitems__([99, 0, 50]) == [99, 0, 50]


def test_decode_true_gives_python_values(wds_prefix: str, tmp_path: Path) -> None:
    ds = dataset(wds_prefix, tmp_path, decode=True)
    s = ds[42]
    assert s["cls"] == 42 and s["__key__"] == "sample000042"


def test_bad_arguments(wds_prefix: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="format must be one of"):
        ShardedDataset.from_prefix(wds_prefix, format="parquet")
    with pytest.raises(NotFoundError, match="no tfrecord shards"):
        ShardedDataset.from_prefix(wds_prefix, format="tfrecord", index_cache=False)
    with pytest.raises(InvalidConfigError, match="max_gap"):
        dataset(wds_prefix, tmp_path, max_gap=-1)


# -------------------------------------------------------------------------------------------------
# TFRecord
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def tfrecord_prefix(bucket: str, tmp_path: Path) -> str:
    """Two shards written by the tfrecord package, with its .index files next to them."""
    tfrecord = require("tfrecord")
    from tfrecord.tools.tfrecord2idx import create_index

    local = tmp_path / "tfr"
    local.mkdir()
    for k in range(2):
        path = local / f"part-{k}.tfrecord"
        w = tfrecord.TFRecordWriter(str(path))
        for i in range(30):
            n = k * 30 + i
            w.write({"data": (payload(n), "byte"), "label": (n, "int")})
        w.close()
        create_index(str(path), str(local / f"part-{k}.index"))
    uri = f"s3://{bucket}/tfr"
    upload(local, uri)
    return uri


def test_tfrecord_with_the_tfrecord_packages_index(tfrecord_prefix: str) -> None:
    """The .index files are used (the shards are not read to index them); each record decodes
    to the Example that was written; a shuffled epoch has every record once."""
    before = s3dlio.stats()["ops"]["get"]
    ds = ShardedDataset.from_prefix(tfrecord_prefix, format="tfrecord", index_cache=False, decode=True)
    used = s3dlio.stats()["ops"]["get"]
    assert used["requests"] - before["requests"] == 2 and used["bytes"] - before["bytes"] < 2000
    assert len(ds) == 60
    ex = ds[45]
    assert int(ex["label"][0]) == 45 and bytes(ex["data"][0]) == payload(45)
    dl = s3dlio.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=as_list)
    assert sorted(int(e["label"][0]) for b in dl for e in b) == list(range(60))


def test_tfrecord_without_an_index_and_a_corrupt_record(tfrecord_prefix: str) -> None:
    """Without .index files the shards are scanned; a flipped payload byte fails that sample's
    batch with a CorruptShardError naming the shard and the record."""
    for k in range(2):
        s3dlio.delete(f"{tfrecord_prefix}/part-{k}.index")
    ds = ShardedDataset.from_prefix(tfrecord_prefix, format="tfrecord", index_cache=False)
    assert len(ds) == 60
    shard = f"{tfrecord_prefix}/part-1.tfrecord"
    data = bytearray(bytes(s3dlio.get(shard)))
    ix = ds._indexes[1]
    assert ix is not None
    data[int(ix.starts[4]) + 20] ^= 0xFF  # inside record 4's payload
    s3dlio.put(shard, bytes(data))
    ds = ShardedDataset.from_prefix(tfrecord_prefix, format="tfrecord", index_cache=False)
    with pytest.raises(CorruptShardError, match=r"part-1\.tfrecord.*record 4") as ei:
        ds[34]
    assert ei.value.uri == shard
    assert bytes(ds[33])  # its neighbours are fine
    dl = s3dlio.DataLoader(ds, batch_size=10, collate_fn=as_list)
    with pytest.raises(CorruptShardError, match="record 4"):
        list(dl)


# -------------------------------------------------------------------------------------------------
# NPZ / NPY
# -------------------------------------------------------------------------------------------------


def test_npz_and_npy_files_are_samples(bucket: str) -> None:
    """One .npz is one sample (a dict of its arrays, zero-copy where stored), one .npy one
    array; the loader reads them as whole objects."""
    for i in range(6):
        b = io.BytesIO()
        np.savez(b, x=np.full((4, 3), i, dtype=np.float32), y=np.int64(i))
        s3dlio.put(f"s3://{bucket}/npz/img_{i}_of_6.npz", b.getvalue())
        b = io.BytesIO()
        np.save(b, np.arange(i, i + 5, dtype=np.int16))
        s3dlio.put(f"s3://{bucket}/npy/{i}.npy", b.getvalue())
    ds = ShardedDataset.from_prefix(f"s3://{bucket}/npz", format="npz")
    assert len(ds) == 6
    s = ds[2]
    assert s["x"].shape == (4, 3) and float(s["x"][0, 0]) == 2.0 and int(s["y"]) == 2
    assert not s["x"].flags.writeable  # a view of the fetched buffer
    dl = s3dlio.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=as_list)
    assert sorted(int(s["y"]) for b in dl for s in b) == list(range(6))
    arrays = ShardedDataset.from_prefix(f"s3://{bucket}/npy", format="npy")
    assert [int(a[0]) for b in s3dlio.DataLoader(arrays, batch_size=6, collate_fn=as_list) for a in b] == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]


# -------------------------------------------------------------------------------------------------
# Streaming mode
# -------------------------------------------------------------------------------------------------


def stream_labels(stream: Iterator[Any] | ShardStream) -> list[int]:
    return [label(s) for s in stream]


def test_stream_every_sample_once_shard_order_new_each_epoch(wds_prefix: str) -> None:
    st = ShardStream.from_prefix(wds_prefix, format="wds", shuffle_buffer=30, seed=1)
    e0 = stream_labels(st)
    e1 = stream_labels(st)
    assert sorted(e0) == sorted(e1) == list(range(100)) and e0 != e1
    assert st.epoch == 2
    plain = ShardStream.from_prefix(wds_prefix, format="wds", shuffle=False, shuffle_buffer=0)
    assert stream_labels(plain) == list(range(100))


def test_stream_resume_yields_exactly_the_rest(wds_prefix: str) -> None:
    """A state taken mid-epoch (shards in the shuffle buffer partly yielded) resumes with
    exactly the samples not yet yielded."""
    st = ShardStream.from_prefix(wds_prefix, format="wds", shuffle_buffer=40, seed=5)
    it = iter(st)
    head = [label(next(it)) for _ in range(37)]
    state = st.state_dict()
    assert state["partial"]  # some shard was partly yielded
    it.close()  # type: ignore[attr-defined]
    again = ShardStream.from_prefix(wds_prefix, format="wds", shuffle_buffer=40, seed=5)
    again.load_state_dict(state)
    rest = stream_labels(again)
    assert sorted(head + rest) == list(range(100)) and len(head + rest) == 100


def test_stream_shards_split_between_torch_workers(wds_prefix: str) -> None:
    torch = require("torch")
    st = ShardStream.from_prefix(wds_prefix, format="wds", transform=label, shuffle_buffer=10)
    got = [int(x) for x in torch.utils.data.DataLoader(st, batch_size=None, num_workers=2)]
    assert sorted(got) == list(range(100))


def test_stream_tfrecord(tfrecord_prefix: str) -> None:
    st = ShardStream.from_prefix(
        tfrecord_prefix, format="tfrecord", decode=True, shuffle_buffer=0, shuffle=False
    )
    assert [int(e["label"][0]) for e in st] == list(range(60))


def test_local_cache_dir_from_environment(
    wds_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3DLIO_CACHE_DIR", str(tmp_path / "envcache"))
    ShardedDataset.from_prefix(wds_prefix, format="wds")
    assert len(os.listdir(tmp_path / "envcache" / "index")) == SHARDS


# -------------------------------------------------------------------------------------------------
# What s3dlio.gen writes (DLIO layout), read back
# -------------------------------------------------------------------------------------------------


def test_generated_dlio_tfrecord_uses_dlios_index_folder(bucket: str) -> None:
    """s3dlio.gen's DLIO layout puts TFRecord indexes in <root>/index/train/<shard>.idx, where
    DLIO does: ShardedDataset finds them there (the shards are not read to index them), and each
    record is the Example gen wrote."""
    from s3dlio import gen

    root = f"s3://{bucket}/dlio"
    gen.generate(root, count=40, size=300, format="tfrecord", samples_per_shard=16, seed=4)
    before = s3dlio.stats()["ops"]["get"]["bytes"]
    ds = ShardedDataset.from_prefix(f"{root}/train", format="tfrecord", index_cache=False, decode=True)
    assert s3dlio.stats()["ops"]["get"]["bytes"] - before < 4000  # three small .idx files
    assert len(ds) == 40 and len(ds.shards) == 3
    labels = gen.sample_labels(40, seed=4)
    dl = s3dlio.DataLoader(ds, batch_size=8, shuffle=True, collate_fn=as_list)
    got = sorted(int(e["label"][0]) for b in dl for e in b)
    assert got == sorted(int(x) for x in labels)
    assert int(ds[17]["label"][0]) == int(labels[17]) and len(bytes(ds[17]["data"][0])) == 300


def test_generated_wds_shards(bucket: str) -> None:
    from s3dlio import gen

    root = f"s3://{bucket}/gwds"
    gen.generate(root, count=30, size=(100, 400), format="wds", samples_per_shard=7, layout="flat", seed=2)
    ds = ShardedDataset.from_prefix(root, format="wds", index_cache=False, decode=True)
    assert len(ds) == 30 and len(ds.shards) == 5
    sizes = gen.sample_sizes((100, 400), 30, seed=2)
    assert [len(ds[i]["bin"]) for i in range(30)] == [int(s) for s in sizes]
    assert [ds[i]["cls"] for i in range(30)] == [int(x) for x in gen.sample_labels(30, seed=2)]


# -------------------------------------------------------------------------------------------------
# HDF5
# -------------------------------------------------------------------------------------------------


def test_hdf5_rows_of_several_datasets(bucket: str, tmp_path: Path) -> None:
    """Rows of two datasets (one contiguous, one in uncompressed chunks) across two files: each
    sample is {name: row}, both rows fetched by ranged GETs into zero-copy arrays; a shuffled
    epoch has every row once; a compressed dataset is refused with its filter named."""
    h5py = require("h5py")
    for k in range(2):
        path = tmp_path / f"part{k}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.arange(k * 20, k * 20 + 20, dtype=np.float32)[:, None] * np.ones(6))
            f.create_dataset("y", data=np.arange(k * 20, k * 20 + 20, dtype=np.int64), chunks=(5,))
        s3dlio.put(f"s3://{bucket}/h5/part{k}.h5", path.read_bytes())
    ds = ShardedDataset.from_prefix(f"s3://{bucket}/h5", format="hdf5", datasets=["x", "y"])
    assert len(ds) == 40
    row = ds[27]
    assert int(row["y"]) == 27 and row["x"].shape == (6,) and float(row["x"][3]) == 27.0
    assert not row["x"].flags.writeable
    dl = s3dlio.DataLoader(ds, batch_size=6, shuffle=True, collate_fn=as_list)
    got = [(int(r["y"]), float(r["x"][0])) for b in dl for r in b]
    assert sorted(got) == [(i, float(i)) for i in range(40)]
    assert [int(r["y"]) for r in ds.__getitems__([39, 0, 21])] == [39, 0, 21]
    with h5py.File(tmp_path / "gz.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((10, 4)), chunks=(2, 4), compression="gzip")
    s3dlio.put(f"s3://{bucket}/h5gz/gz.h5", (tmp_path / "gz.h5").read_bytes())
    with pytest.raises(InvalidConfigError, match=r"gz\.h5.*'x'.*deflate"):
        ShardedDataset.from_prefix(f"s3://{bucket}/h5gz", format="hdf5")


def test_generated_hdf5(bucket: str) -> None:
    from s3dlio import gen

    root = f"s3://{bucket}/gh5"
    gen.generate(root, count=12, size=64, format="hdf5", samples_per_shard=5, seed=9)
    ds = ShardedDataset.from_prefix(f"{root}/train", format="hdf5")
    assert len(ds) == 12 and len(ds.shards) == 3
    labels = [int(x) for x in gen.sample_labels(12, seed=9)]
    assert [int(ds[i]["y"]) for i in range(12)] == labels
    assert ds[7]["x"].shape == (64,)


def test_docs_examples_run(bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of docs/datasets.md runs, in order, against the local server, and
    prints what its comments say."""
    ns: dict[str, Any] = run_doc_examples("datasets.md", bucket, blocks=4)
    out = capsys.readouterr().out.splitlines()
    label = int(ns["sample"]["cls"])
    assert out == [
        "2000 4",
        f"001234 {label} 16384",
        "2000",
        "2000",
        "4 ['train', 'img_0_of_4.tfrecord']",
        "64 True",
    ]
    assert sorted(ns["first"] + ns["rest"]) == sorted(ns["labels"])


def test_stream_buffered_samples_do_not_hold_their_shard(wds_prefix: str) -> None:
    """Samples that pass through the shuffle buffer own their bytes (no whole 64 MiB shard kept
    alive per buffered sample); without a buffer they stay zero-copy views of the shard."""
    mixed = next(iter(ShardStream.from_prefix(wds_prefix, format="wds", shuffle_buffer=10)))
    assert isinstance(mixed["bin"].obj, bytes)
    plain = next(iter(ShardStream.from_prefix(wds_prefix, format="wds", shuffle_buffer=0)))
    assert isinstance(plain["bin"].obj, s3dlio.Buffer)
