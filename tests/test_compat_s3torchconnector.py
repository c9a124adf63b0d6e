"""s3dlio.compat.s3torchconnector: AWS s3torchconnector's API on s3dlio, against the local S3 server.

The cases follow what s3torchconnector's own unit and e2e tests assert (datasets from a prefix and
from URIs, transform, length and order, rank-then-worker sharding, reader read/seek/tell/readinto
semantics for both reader kinds, the writer, checkpoints through torch.save/torch.load, DataLoader
workers started by fork and spawn), written for this module and run on real objects.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Iterator
from operator import methodcaller
from typing import Any

import pytest

import s3dlio
from helpers import fresh_bucket, require
from s3dlio.compat import s3torchconnector as stc
from s3dlio.compat.s3torchconnector import (
    S3Checkpoint,
    S3Client,
    S3ClientConfig,
    S3Exception,
    S3IterableDataset,
    S3MapDataset,
    S3Reader,
    S3ReaderConstructor,
    S3Writer,
)
from s3dlio.testing import LocalS3Server

torch = require("torch")  # a skip outside CI, a failure in CI (CI=true)
from torch.utils.data import DataLoader  # noqa: E402

REGION = "us-east-1"
N = 10

READERS = {
    "sequential": S3ReaderConstructor.sequential(),
    "range_based": S3ReaderConstructor.range_based(),
    "range_based_small_buffer": S3ReaderConstructor.range_based(buffer_size=7),
    "range_based_unbuffered": S3ReaderConstructor.range_based(buffer_size=0),
}


def payload(i: int) -> bytes:
    return f"object-{i:02d}:".encode() + bytes([i]) * (20 + i)


@pytest.fixture
def endpoint(s3_server: LocalS3Server) -> str:
    return s3_server.endpoint


@pytest.fixture(scope="module")
def shared_bucket(s3_server: LocalS3Server) -> Iterator[str]:
    """One bucket for the module's read-only objects: N objects under ``data/``, written out of
    order, a folder marker ``data/`` (made with boto3, as the AWS console makes it: s3dlio
    refuses to write one) and a neighbour prefix ``other/``. Tests that write use ``bucket``."""
    boto3 = require("boto3")
    with fresh_bucket("stc") as name:
        uris = [f"s3://{name}/data/{i:02d}.bin" for i in range(N)]
        s3dlio.put_many([(uris[i], payload(i)) for i in reversed(range(N))])
        s3dlio.put(f"s3://{name}/other/x.bin", b"x")
        boto3.client(
            "s3",
            endpoint_url=s3_server.endpoint,
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            region_name=s3_server.region,
        ).put_object(Bucket=name, Key="data/", Body=b"")
        yield name


@pytest.fixture
def objects(shared_bucket: str) -> list[str]:
    return [f"s3://{shared_bucket}/data/{i:02d}.bin" for i in range(N)]


@pytest.fixture(params=list(READERS))
def reader_constructor(request: pytest.FixtureRequest) -> Callable[..., S3Reader]:
    return READERS[request.param]


def client(endpoint: str, **config: Any) -> S3Client:
    return S3Client(REGION, endpoint=endpoint, s3client_config=S3ClientConfig(**config))


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def test_map_dataset_from_prefix(shared_bucket: str, objects: list[str], endpoint: str) -> None:
    """len is the number of objects under the prefix (folder marker and other prefixes left out);
    items are in listing (key) order; the default transform returns the reader itself."""
    ds = S3MapDataset.from_prefix(f"s3://{shared_bucket}/data/", region=REGION, endpoint=endpoint)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert (ds.region, ds.endpoint) == (REGION, endpoint)
    assert len(ds) == N
    for i in range(N):
        item = ds[i]
        assert isinstance(item, S3Reader)
        assert (item.bucket, item.key) == (shared_bucket, f"data/{i:02d}.bin")
        assert item.read() == payload(i)
    assert ds[-1].key == f"data/{N - 1:02d}.bin"
    with pytest.raises(IndexError):
        ds[N]


def test_map_dataset_from_objects_keeps_given_order_and_transforms(
    shared_bucket: str, objects: list[str], endpoint: str, reader_constructor: Callable[..., S3Reader]
) -> None:
    order = [objects[3], objects[0], objects[7]]
    ds = S3MapDataset.from_objects(
        order,
        region=REGION,
        endpoint=endpoint,
        transform=methodcaller("read"),
        reader_constructor=reader_constructor,
    )
    assert len(ds) == 3
    assert [ds[i] for i in range(3)] == [payload(3), payload(0), payload(7)]
    one = S3MapDataset.from_objects(objects[5], region=REGION, endpoint=endpoint)
    assert len(one) == 1 and one[0].read() == payload(5)


def test_dataset_rejects_uris_that_are_not_s3(endpoint: str) -> None:
    with pytest.raises(ValueError, match="Only s3:// URIs are supported"):
        len(S3MapDataset.from_objects("file:///tmp/x", region=REGION, endpoint=endpoint))
    with pytest.raises(ValueError, match="Bucket name must be non-empty"):
        list(S3IterableDataset.from_prefix("s3://", region=REGION, endpoint=endpoint))


def test_iterable_dataset_from_prefix_in_listing_order(bucket: str, endpoint: str) -> None:
    """Listing (key) order whatever the write order; prefixes are string prefixes as in S3
    (``d/0`` matches ``d/00.bin`` and ``d/0x/y``, not ``d/1.bin``); every iteration lists again."""
    for k in ("d/05.bin", "d/0x/y", "d/01.bin", "d/1.bin", "d/00.bin"):
        s3dlio.put(f"s3://{bucket}/{k}", k.encode())
    ds = S3IterableDataset.from_prefix(
        f"s3://{bucket}/d/0", region=REGION, endpoint=endpoint, transform=methodcaller("read")
    )
    assert isinstance(ds, torch.utils.data.IterableDataset)
    assert list(ds) == [b"d/00.bin", b"d/01.bin", b"d/05.bin", b"d/0x/y"]
    s3dlio.put(f"s3://{bucket}/d/02.bin", b"new")
    assert list(ds) == [b"d/00.bin", b"d/01.bin", b"new", b"d/05.bin", b"d/0x/y"]


def _pretend_distributed(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)


def key_of(reader: S3Reader) -> str:
    return reader.key


@pytest.mark.parametrize(("rank", "world"), [(0, 2), (1, 2), (2, 3)])
def test_iterable_dataset_shards_by_rank(
    shared_bucket: str,
    objects: list[str],
    endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    rank: int,
    world: int,
) -> None:
    """With enable_sharding, rank r of w gets objects r, r+w, r+2w, ... (the rank is read when the
    dataset is built); without it, every rank gets everything."""
    _pretend_distributed(monkeypatch, rank, world)
    prefix = f"s3://{shared_bucket}/data/"
    sharded = S3IterableDataset.from_prefix(
        prefix, region=REGION, endpoint=endpoint, transform=key_of, enable_sharding=True
    )
    whole = S3IterableDataset.from_prefix(prefix, region=REGION, endpoint=endpoint, transform=key_of)
    monkeypatch.undo()
    keys = [f"data/{i:02d}.bin" for i in range(N)]
    assert list(sharded) == keys[rank::world]
    assert list(whole) == keys


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_iterable_dataset_shards_by_rank_then_worker(
    shared_bucket: str, objects: list[str], endpoint: str, monkeypatch: pytest.MonkeyPatch, context: str
) -> None:
    """Rank 1 of 2 with 2 DataLoader workers: its share (objects 1, 3, 5, 7, 9) is dealt between the
    workers (worker 0: 1, 5, 9; worker 1: 3, 7), which torch interleaves back into order."""
    _pretend_distributed(monkeypatch, 1, 2)
    ds = S3IterableDataset.from_objects(
        objects, region=REGION, endpoint=endpoint, transform=methodcaller("read"), enable_sharding=True
    )
    monkeypatch.undo()
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    assert list(loader) == [payload(i) for i in (1, 3, 5, 7, 9)]


def test_iterable_dataset_without_sharding_repeats_in_every_worker(
    shared_bucket: str, objects: list[str], endpoint: str
) -> None:
    ds = S3IterableDataset.from_objects(objects[:3], region=REGION, endpoint=endpoint, transform=key_of)
    got = list(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    assert sorted(got) == sorted([f"data/{i:02d}.bin" for i in range(3)] * 2)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_map_dataset_in_dataloader_workers(
    shared_bucket: str, objects: list[str], endpoint: str, context: str
) -> None:
    """Listed in the parent (len), pickled or forked to 2 workers, every object read once; the
    parent's client has been used before the fork."""
    ds = S3MapDataset.from_prefix(
        f"s3://{shared_bucket}/data/", region=REGION, endpoint=endpoint, transform=methodcaller("read")
    )
    assert ds[0] == payload(0)
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context, collate_fn=list)
    got = [b for batch in loader for b in batch]
    assert got == [payload(i) for i in range(N)]


def test_dataset_and_client_pickle(shared_bucket: str, objects: list[str], endpoint: str) -> None:
    ds = S3MapDataset.from_prefix(f"s3://{shared_bucket}/data/", region=REGION, endpoint=endpoint)
    assert len(ds) == N
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy) == N and copy[2].read() == payload(2)
    c = pickle.loads(pickle.dumps(client(endpoint)))
    assert c.head_object(shared_bucket, "data/01.bin").size == len(payload(1))


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes


@pytest.fixture
def obj(bucket: str) -> tuple[str, str]:
    s3dlio.put(f"s3://{bucket}/r/obj.bin", DATA)
    return bucket, "r/obj.bin"


def open_reader(endpoint: str, obj: tuple[str, str], make: Callable[..., S3Reader]) -> S3Reader:
    return client(endpoint).get_object(*obj, reader_constructor=make)


def test_reader_kind_follows_the_constructor(endpoint: str, obj: tuple[str, str]) -> None:
    c = client(endpoint)
    assert isinstance(c.get_object(*obj), stc.SequentialS3Reader)
    assert isinstance(c.get_object(*obj, reader_constructor=READERS["range_based"]), stc.RangedS3Reader)
    assert S3ReaderConstructor.get_reader_type_string(READERS["range_based"]) == "range_based"
    assert S3ReaderConstructor.get_reader_type_string(None) == "sequential"
    with pytest.raises(TypeError, match="reader_constructor"):
        c.get_object(*obj, reader_constructor=lambda **kw: io.BytesIO())  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="Bucket should be specified"):
        c.get_object("", "k")


def test_reader_reads_like_bytesio(
    endpoint: str, obj: tuple[str, str], reader_constructor: Callable[..., S3Reader]
) -> None:
    """read(n) in steps, read(0), read past the end, read(-1)/read(None) to the end, tell() after
    each: the same answers as io.BytesIO over the same bytes."""
    r = open_reader(endpoint, obj, reader_constructor)
    ref = io.BytesIO(DATA)
    assert (r.readable(), r.seekable(), r.writable()) == (True, True, False)
    assert (r.bucket, r.key, r.tell()) == (*obj, 0)
    for n in (0, 1, 6, 100, 9, 500, 0, 3):
        assert r.read(n) == ref.read(n)
        assert r.tell() == ref.tell()
    assert r.read(-1) == ref.read(-1)
    assert r.tell() == len(DATA)
    assert r.read(10) == b"" and r.read() == b"" and r.tell() == len(DATA)
    r.seek(1000)
    assert r.read(10_000) == DATA[1000:]
    r.seek(5)
    assert r.read(None) == DATA[5:]
    for bad in (0.5, "1", [1]):
        with pytest.raises(TypeError):
            r.read(bad)  # type: ignore[arg-type]


def test_reader_seek(
    endpoint: str, obj: tuple[str, str], reader_constructor: Callable[..., S3Reader]
) -> None:
    """whence 0/1/2; a seek past the end stays at the end; a negative position, a bad whence or a
    non-int offset raise, leaving the position alone."""
    r = open_reader(endpoint, obj, reader_constructor)
    size = len(DATA)
    assert r.seek(10) == 10 and r.read(2) == DATA[10:12]
    assert r.seek(5, os.SEEK_CUR) == 17 and r.read(3) == DATA[17:20]
    assert r.seek(-4, os.SEEK_END) == size - 4 and r.read() == b"tail"
    assert r.seek(-10, os.SEEK_CUR) == size - 10
    assert r.seek(0, os.SEEK_END) == size and r.read() == b""
    assert r.seek(10, os.SEEK_END) == size
    assert r.seek(size + 100) == size and r.tell() == size
    assert r.seek(5, os.SEEK_CUR) == size
    assert r.seek(0) == 0 and r.read(4) == DATA[:4]
    with pytest.raises(ValueError, match="negative seek value -1"):
        r.seek(-1)
    with pytest.raises(ValueError, match="negative seek value"):
        r.seek(-5, os.SEEK_CUR)
    with pytest.raises(ValueError, match="negative seek value"):
        r.seek(-(size + 1), os.SEEK_END)
    with pytest.raises(ValueError, match="SEEK_CUR, SEEK_SET, or SEEK_END"):
        r.seek(0, 5)
    with pytest.raises(TypeError):
        r.seek(0, "foo")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r.seek(1.0)  # type: ignore[arg-type]
    assert r.tell() == 4


def test_reader_readinto(
    endpoint: str, obj: tuple[str, str], reader_constructor: Callable[..., S3Reader]
) -> None:
    """readinto fills min(len(buf), bytes left); 0 for an empty buffer or at the end; writes into
    numpy arrays and memoryview slices; a read-only buffer is a TypeError."""
    np = require("numpy")
    r = open_reader(endpoint, obj, reader_constructor)
    small = bytearray(5)
    assert r.readinto(small) == 5 and small == DATA[:5] and r.tell() == 5
    assert r.readinto(bytearray(0)) == 0 and r.tell() == 5
    arr = np.zeros(100, dtype=np.uint32)  # 400 bytes
    assert r.readinto(arr) == 400 and arr.tobytes() == DATA[5:405]
    big = bytearray(2000)
    assert r.readinto(memoryview(big)[10:]) == len(DATA) - 405
    assert big[10 : 10 + len(DATA) - 405] == DATA[405:]
    assert r.readinto(bytearray(10)) == 0 and r.tell() == len(DATA)
    with pytest.raises(TypeError):
        r.readinto(b"readonly")


def test_reader_of_an_empty_object(
    bucket: str, endpoint: str, reader_constructor: Callable[..., S3Reader]
) -> None:
    s3dlio.put(f"s3://{bucket}/empty", b"")
    r = open_reader(endpoint, (bucket, "empty"), reader_constructor)
    assert r.read() == b"" and r.read(10) == b"" and r.tell() == 0
    assert r.seek(0, os.SEEK_END) == 0 and r.seek(10) == 0
    assert r.readinto(bytearray(4)) == 0


def test_missing_object_raises_s3exception_on_first_read(
    bucket: str, endpoint: str, reader_constructor: Callable[..., S3Reader]
) -> None:
    """get_object requests nothing; the first read raises an S3Exception that is also a
    FileNotFoundError naming the URI."""
    r = open_reader(endpoint, (bucket, "missing"), reader_constructor)
    with pytest.raises(S3Exception, match="missing") as e:
        r.read()
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, s3dlio.exceptions.NotFoundError)
    assert e.value.uri == f"s3://{bucket}/missing"
    assert pickle.loads(pickle.dumps(e.value)).uri == e.value.uri
    with pytest.raises(S3Exception):
        client(endpoint).head_object(bucket, "missing")


def test_torch_load_through_both_readers(
    bucket: str, endpoint: str, reader_constructor: Callable[..., S3Reader]
) -> None:
    """torch.load seeks and reads the zip container through the reader."""
    t = torch.arange(1000, dtype=torch.float32)
    buf = io.BytesIO()
    torch.save({"t": t}, buf)
    s3dlio.put(f"s3://{bucket}/t.pt", buf.getvalue())
    r = open_reader(endpoint, (bucket, "t.pt"), reader_constructor)
    assert torch.equal(torch.load(r, weights_only=True)["t"], t)


# ---------------------------------------------------------------------------------------------
# Writer and checkpoints
# ---------------------------------------------------------------------------------------------


def test_writer_round_trip(bucket: str, endpoint: str) -> None:
    c = client(endpoint, part_size=5 * 1024 * 1024)
    big = os.urandom(11 * 1024 * 1024)  # three 5 MiB parts
    with c.put_object(bucket, "w/obj") as w:
        assert isinstance(w, S3Writer) and w.writable() and not w.readable()
        assert w.write(b"abc") == 3
        assert w.write(memoryview(b"defg")) == 4
        assert w.write(big) == len(big)
        assert w.tell() == 7 + len(big)
        assert not s3dlio.exists(f"s3://{bucket}/w/obj")  # nothing published before close
    assert w.closed and not w.writable()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")
    assert bytes(s3dlio.get(f"s3://{bucket}/w/obj")) == b"abcdefg" + big


def test_writer_aborts_on_exception_and_when_dropped(bucket: str, endpoint: str) -> None:
    """An exception inside ``with`` or a writer garbage collected unclosed publishes nothing, and
    the previous version of the key stays."""
    uri = f"s3://{bucket}/w/keep"
    s3dlio.put(uri, b"old")
    c = client(endpoint)

    def fail_halfway(w: S3Writer) -> None:
        with w:
            w.write(b"new, half written")
            raise RuntimeError("boom")

    w = c.put_object(bucket, "w/keep")
    with pytest.raises(RuntimeError, match="boom"):
        fail_halfway(w)
    assert w.closed
    w2 = c.put_object(bucket, "w/keep")
    w2.write(b"also new")
    del w2
    assert bytes(s3dlio.get(uri)) == b"old"


def test_checkpoint_round_trip(bucket: str, endpoint: str) -> None:
    model = torch.nn.Linear(8, 3)
    ckpt = S3Checkpoint(region=REGION, endpoint=endpoint)
    uri = f"s3://{bucket}/ckpt/epoch_1.pt"
    with ckpt.writer(uri) as f:
        torch.save(model.state_dict(), f)
    loaded = torch.load(ckpt.reader(uri), weights_only=True)
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="Only s3://"):
        ckpt.reader("/local/path.pt")


# ---------------------------------------------------------------------------------------------
# Client and config
# ---------------------------------------------------------------------------------------------


def test_client_object_operations(shared_bucket: str, objects: list[str], bucket: str, endpoint: str) -> None:
    c = client(endpoint)
    head = c.head_object(shared_bucket, "data/03.bin")
    assert head.size == len(payload(3)) and head.etag and head.last_modified > 0
    c.copy_object(shared_bucket, "data/03.bin", bucket, "copy/03.bin")
    assert c.get_object(bucket, "copy/03.bin").read() == payload(3)
    c.delete_object(bucket, "copy/03.bin")
    c.delete_object(bucket, "copy/03.bin")  # a missing object is not an error
    assert not s3dlio.exists(f"s3://{bucket}/copy/03.bin")


def test_list_objects_pages_and_delimiter(shared_bucket: str, objects: list[str], endpoint: str) -> None:
    c = client(endpoint)
    pages = list(c.list_objects(shared_bucket, "data/", max_keys=4))
    assert [len(p.object_info) for p in pages] == [4, 4, 3]  # the folder marker is an object here
    keys = [o.key for p in pages for o in p.object_info]
    assert keys == ["data/", *(f"data/{i:02d}.bin" for i in range(N))]
    assert pages[0].object_info[1].size == len(payload(0))
    top = list(c.list_objects(shared_bucket, "", delimiter="/"))
    assert [p for page in top for p in page.common_prefixes] == ["data/", "other/"]
    assert [o for page in top for o in page.object_info] == []
    with pytest.raises(S3Exception, match="delimiter"):
        c.list_objects(shared_bucket, delimiter=",")


def test_client_config_maps_to_storage_config(endpoint: str) -> None:
    c = client(endpoint, part_size=16 * 1024 * 1024, max_attempts=3, force_path_style=True)
    cfg = c.storage_config
    assert (cfg.endpoint_url, cfg.region, cfg.part_size, cfg.max_attempts) == (endpoint, REGION, 16 << 20, 3)
    assert cfg.force_path_style is True
    assert (
        client(endpoint).storage_config.force_path_style is None
    )  # s3dlio's choice: path style with an endpoint


def test_client_config_knobs_we_cannot_honour(endpoint: str) -> None:
    with pytest.raises(S3Exception, match="unsigned") as e:
        client(endpoint, unsigned=True)
    assert isinstance(e.value, ValueError)
    with pytest.warns(UserWarning, match="throughput_target_gbps"):
        client(endpoint, throughput_target_gbps=100.0)
    with pytest.warns(UserWarning, match="user_agent"):
        S3Client(REGION, endpoint=endpoint, user_agent=object())
    with pytest.raises(S3Exception, match="part_size"):
        client(endpoint, part_size=1024)
    with pytest.raises(S3Exception, match="storage_class"):
        client(endpoint).put_object("b", "k", storage_class="GLACIER")
    with pytest.raises(NotImplementedError, match=r"s3dlio\.dcp"):
        S3ReaderConstructor.dcp_optimized()
