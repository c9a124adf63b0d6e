"""s3dlio.gen: synthetic datasets in every format, read back by each format's own library
(numpy, webdataset and tarfile, the tfrecord package, h5py, Pillow), on file:// and on the local
S3 server; seeds, size distributions, dedup/compress ratios, DLIO names, the CLI."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import s3dlio
import s3dlio.gen as gen
from faultproxy import FaultProxy
from helpers import interrupt_cli
from s3dlio.exceptions import CorruptShardError, InvalidConfigError
from s3dlio.formats.example import decode_example, encode_example
from s3dlio.formats.tfrecord import frame_record

KiB = 1024


@pytest.fixture(params=["file", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh prefix on file:// or on the local S3 server (ending in no slash)."""
    if request.param == "file":
        return f"file://{tmp_path}/ds"
    bucket: str = request.getfixturevalue("bucket")
    return f"s3://{bucket}/ds"


def local(uri: str, tmp_path: Path) -> Path:
    """A local file holding the object's bytes (the object itself for file://)."""
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    p = tmp_path / "copies" / uri.rsplit("/", 1)[1]
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(bytes(s3dlio.get(uri)))
    return p


def expected(i: int, size: int, seed: int = 0) -> bytes:
    return gen.sample_data(i, size, seed=seed)


# --- every format, read by its own library -------------------------------------------------------


def test_raw_npy_npz(where: str, tmp_path: Path) -> None:
    labels = gen.sample_labels(7, seed=5)
    r = gen.generate(where + "/raw", count=7, size=(1, 3000), format="raw", seed=5)
    sizes = gen.sample_sizes((1, 3000), 7, seed=5)
    assert r.samples == 7 and len(r.files) == 7 and r.format == "raw"
    assert [bytes(b) for b in s3dlio.get_many(r.files)] == [expected(i, int(sizes[i]), 5) for i in range(7)]
    assert r.bytes == int(sizes.sum()) == sum(o.size for o in s3dlio.list(where + "/raw/"))

    r = gen.generate(where + "/npy", count=3, size=1000, format="npy", seed=5)
    for i, uri in enumerate(r.files):
        a = np.load(io.BytesIO(bytes(s3dlio.get(uri))))
        assert a.dtype == np.uint8 and a.shape == (1000,) and a.tobytes() == expected(i, 1000, 5)

    r = gen.generate(where + "/npz", count=7, size=999, format="npz", seed=5)
    for i, uri in enumerate(r.files):
        with np.load(local(uri, tmp_path)) as z:
            assert sorted(z.files) == ["x", "y"]
            assert z["x"].dtype == np.uint8 and z["x"].tobytes() == expected(i, 999, 5)
            assert z["y"].dtype == np.int64 and z["y"].shape == () and int(z["y"]) == labels[i]
    assert r.bytes == sum(o.size for o in s3dlio.list(where + "/npz/"))


def test_wds_reads_with_webdataset_and_tarfile(where: str, tmp_path: Path) -> None:
    import webdataset as wds

    r = gen.generate(where, count=10, size=[100, 2000, 513], format="wds", samples_per_shard=4, seed=1)
    assert len(r.files) == 3 and r.files[0].endswith("/train/img_0_of_3.tar")
    sizes, labels = gen.sample_sizes([100, 2000, 513], 10, seed=1), gen.sample_labels(10, seed=1)
    paths = [local(u, tmp_path) for u in r.files]
    for p in paths:
        with tarfile.open(p) as t:
            names = t.getnames()
        assert names[:2] == [names[0].split(".")[0] + ".bin", names[0].split(".")[0] + ".cls"]
        assert p.stat().st_size % tarfile.RECORDSIZE == 0
    got = list(wds.WebDataset([str(p) for p in paths], shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"{i:06d}" for i in range(10)]
    for i, s in enumerate(got):
        assert s["bin"] == expected(i, int(sizes[i]), 1) and int(s["cls"]) == labels[i]


def test_tfrecord_reads_with_the_tfrecord_package_through_its_index(where: str, tmp_path: Path) -> None:
    from tfrecord.reader import tfrecord_loader

    r = gen.generate(where, count=9, size=(10, 3000), format="tfrecord", samples_per_shard=5, seed=2)
    sizes, labels = gen.sample_sizes((10, 3000), 9, seed=2), gen.sample_labels(9, seed=2)
    assert [u.rsplit("/", 2)[1:] for u in r.files] == [
        ["train", "img_0_of_2.tfrecord"],
        ["train", "img_1_of_2.tfrecord"],
    ]
    assert r.indexes == [f"{where}/index/train/img_{i}_of_2.tfrecord.idx" for i in range(2)]
    got = []
    for shard, index in zip(r.files, r.indexes, strict=True):
        data, idx = local(shard, tmp_path), local(index, tmp_path)
        lines = [tuple(map(int, ln.split())) for ln in idx.read_text().splitlines()]
        assert lines[0][0] == 0 and sum(n for _, n in lines) == data.stat().st_size
        assert all(o1 + n1 == o2 for (o1, n1), (o2, _) in itertools.pairwise(lines))
        # Two halves through the index (the reader seeks to the index's offsets), in order.
        for part in range(2):
            got += list(
                tfrecord_loader(str(data), str(idx), {"data": "byte", "label": "int"}, shard=(part, 2))
            )
    assert len(got) == 9
    for i, rec in enumerate(got):
        assert bytes(rec["data"]) == expected(i, int(sizes[i]), 2) and int(rec["label"][0]) == labels[i]


def test_hdf5_reads_with_h5py(where: str, tmp_path: Path) -> None:
    import h5py

    r = gen.generate(where, count=5, size=300, format="hdf5", samples_per_shard=2, layout="flat", seed=3)
    assert [u.rsplit("/", 1)[1] for u in r.files] == [f"shard-00000{i}.hdf5" for i in range(3)]
    labels = gen.sample_labels(5, seed=3)
    i = 0
    for uri in r.files:
        with h5py.File(local(uri, tmp_path), "r") as f:
            x, y = f["x"][()], f["y"][()]
        assert x.dtype == np.uint8 and x.shape[1] == 300 and y.dtype == np.int64 and len(y) == len(x)
        for row, label in zip(x, y, strict=True):
            assert row.tobytes() == expected(i, 300, 3) and label == labels[i]
            i += 1
    assert i == 5


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_images_verify_with_pillow_and_are_about_the_size_asked(where: str, tmp_path: Path, fmt: str) -> None:
    from PIL import Image

    sizes = [4 * KiB, 40 * KiB, 100 * KiB]
    r = gen.generate(where, count=3, size=sizes, format=fmt)
    for uri, size in zip(r.files, sizes, strict=True):
        assert uri.endswith(f".{fmt}")
        p = local(uri, tmp_path)
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == fmt.upper() and im.mode == "RGB"
        got = p.stat().st_size
        tolerance = 0.01 if fmt == "png" else (0.07 if size < 32 * KiB else 0.02)  # as gen's docs say
        assert abs(got - size) <= tolerance * size, (fmt, size, got)


# --- determinism, sizes, ratios, names -----------------------------------------------------------


def _contents(files: list[str]) -> list[bytes]:
    return [bytes(b) for b in s3dlio.get_many(files)]


@pytest.mark.parametrize("fmt", gen.FORMATS)
def test_the_same_seed_writes_the_same_bytes(tmp_path: Path, fmt: str) -> None:
    size: gen.SizeSpec = 700 if fmt == "hdf5" else (200, 2000)
    shards = 3 if fmt in gen.SHARDED else None

    def run(name: str, seed: int, jobs: int) -> list[bytes]:
        r = gen.generate(
            f"file://{tmp_path}/{name}", count=8, size=size, format=fmt, seed=seed, samples_per_shard=shards,
            max_concurrency=jobs,
        )  # fmt: skip
        return _contents(r.files + r.indexes)

    a = run("a", 11, 1)
    assert run("b", 11, 16) == a  # the same seed, any concurrency: the same bytes
    assert run("c", 12, 4) != a


def test_size_distributions() -> None:
    fixed = gen.sample_sizes(4096, 50)
    assert fixed.tolist() == [4096] * 50
    uni = gen.sample_sizes((10, 20), 500, seed=1)
    assert uni.min() >= 10 and uni.max() <= 20 and len(set(uni.tolist())) == 11
    normal = gen.sample_sizes({"dist": "normal", "mean": 1000, "std": 100}, 2000, seed=1)
    assert abs(normal.mean() - 1000) < 20 and 80 < normal.std() < 120 and normal.min() >= 1
    tiny = gen.sample_sizes({"dist": "normal", "mean": 0, "std": 5}, 100)
    assert tiny.min() == 1  # clipped to >= 1
    assert gen.sample_sizes([1, 2, 3], 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert (gen.sample_sizes((10, 20), 500, seed=1) == uni).all()
    assert not (gen.sample_sizes((10, 20), 500, seed=2) == uni).all()


def test_sizes_written_are_the_sizes_asked(tmp_path: Path) -> None:
    spec = {"dist": "normal", "mean": 3000, "std": 500}
    r = gen.generate(f"file://{tmp_path}", count=40, size=spec, format="raw", layout="flat", seed=9)
    got = [Path(u[len("file://") :]).stat().st_size for u in r.files]
    assert got == gen.sample_sizes(spec, 40, seed=9).tolist() and len(set(got)) > 10


@pytest.mark.parametrize("m", [2, 4, 8])
def test_compress_factor_compresses_about_m_to_1(m: int) -> None:
    data = gen.sample_data(0, 1024 * KiB, seed=1, compress_factor=m)
    ratio = len(data) / len(zlib.compress(data, 6))
    assert abs(ratio - m) <= 0.1 * m, ratio
    plain = gen.sample_data(0, 1024 * KiB, seed=1)
    assert len(plain) / len(zlib.compress(plain, 6)) < 1.01  # random bytes do not compress


def _blocks(data: bytes) -> list[bytes]:
    return [data[i : i + gen.BLOCK] for i in range(0, len(data), gen.BLOCK)]


@pytest.mark.parametrize("n", [1, 2, 3, 10])
def test_dedup_factor_keeps_one_block_in_n_unique(n: int) -> None:
    data = gen.sample_data(4, 300 * gen.BLOCK, seed=1, dedup_factor=n)
    blocks = _blocks(data)
    assert len(blocks) == 300 and len(set(blocks)) == -(-300 // n)


def test_dedup_and_compress_together_and_in_a_format(tmp_path: Path) -> None:
    data = gen.sample_data(0, 64 * gen.BLOCK + 100, dedup_factor=4, compress_factor=2)
    assert len(data) == 64 * gen.BLOCK + 100 and len(set(_blocks(data)[:64])) == 17  # ceil(65 / 4)
    assert all(b[gen.BLOCK // 2 :] == bytes(gen.BLOCK // 2) for b in _blocks(data)[:64])
    r = gen.generate(
        f"file://{tmp_path}", count=2, size=40 * gen.BLOCK, format="npz", dedup_factor=4, compress_factor=2
    )
    with np.load(r.files[1][len("file://") :]) as z:
        assert z["x"].tobytes() == gen.sample_data(1, 40 * gen.BLOCK, dedup_factor=4, compress_factor=2)


def test_dlio_and_flat_names(tmp_path: Path) -> None:
    root = f"file://{tmp_path}"
    names = {
        fmt: [
            u[len(root) + 1 :] for u in gen.generate(f"{root}/d/{fmt}", count=12, size=64, format=fmt).files
        ]
        for fmt in ("raw", "npy", "npz", "jpeg", "png")
    }
    for fmt, ext in (("raw", "bin"), ("npy", "npy"), ("npz", "npz"), ("jpeg", "jpeg"), ("png", "png")):
        assert names[fmt] == [f"d/{fmt}/train/img_{i:02d}_of_12.{ext}" for i in range(12)]
    r = gen.generate(f"{root}/d/tf", count=12, size=64, format="tfrecord", samples_per_shard=1)
    assert r.files[0] == f"{root}/d/tf/train/img_00_of_12.tfrecord"
    assert r.indexes[11] == f"{root}/d/tf/index/train/img_11_of_12.tfrecord.idx"
    r = gen.generate(f"{root}/d/h5", count=3, size=64, format="hdf5", samples_per_shard=1)
    assert r.files[2] == f"{root}/d/h5/train/img_2_of_3.hdf5"
    r = gen.generate(f"{root}/f/raw/", count=3, size=8, format="raw", layout="flat")
    assert r.prefix == f"{root}/f/raw/" and r.files == [f"{root}/f/raw/0000{i}.bin" for i in range(3)]
    r = gen.generate(f"{root}/f/tf", count=3, size=8, format="tfrecord", layout="flat", samples_per_shard=2)
    assert r.files == [f"{root}/f/tf/shard-00000{i}.tfrecord" for i in range(2)]
    assert r.indexes == [f + ".index" for f in r.files]
    r = gen.generate(f"{root}/f/wds", count=3, size=8, format="wds", layout="flat")
    assert r.files == [f"{root}/f/wds/shard-000000.tar"]
    assert gen.generate(f"{root}/empty", count=0, size=8, format="wds").files == []


def test_default_shards_are_about_shard_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "SHARD_BYTES", 10 * KiB)
    r = gen.generate(f"file://{tmp_path}", count=30, size=3 * KiB, format="wds")
    assert len(r.files) == 10  # three 3 KiB samples per 10 KiB shard
    r = gen.generate(f"file://{tmp_path}/big", count=2, size=50 * KiB, format="tfrecord")
    assert len(r.files) == 2  # a sample bigger than a shard is a shard of its own


def test_big_shards_stream_and_batches_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(name: str) -> list[bytes]:
        r = gen.generate(
            f"file://{tmp_path}/{name}", count=20, size=5000, format="tfrecord", samples_per_shard=7
        )
        assert r.bytes == sum(len(b) for b in _contents(r.files + r.indexes))
        return _contents(r.files + r.indexes)

    batched = run("batched")
    sent: list[int] = []
    real = s3dlio.put_many

    def spy(items: list[tuple[str, bytes]], **kw: object) -> None:
        sent.append(sum(len(d) for _, d in items))
        real(items, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(s3dlio, "put_many", spy)
    monkeypatch.setattr(gen, "_STREAM_ABOVE", 1000)  # every shard streams through s3dlio.open
    monkeypatch.setattr(gen, "_CHUNK", 3000)
    monkeypatch.setattr(gen, "_BATCH_BYTES", 100)
    assert run("streamed") == batched
    assert sent and max(sent) < 1000  # only the indexes went through put_many, a few at a time


# --- errors --------------------------------------------------------------------------------------

BAD: list[tuple[dict[str, object], str]] = [
    ({"format": "parquet"}, "unknown format 'parquet'"),
    ({"format": "hdf5", "size": (1, 9)}, "hdf5 needs a fixed size"),
    ({"format": "hdf5", "size": {"dist": "normal", "mean": 9, "std": 1}}, "hdf5 needs a fixed size"),
    ({"count": -1}, "count must be an integer >= 0"),
    ({"dedup_factor": 0}, "dedup_factor must be an integer >= 1"),
    ({"compress_factor": 0.5}, "compress_factor must be a number >= 1"),
    ({"layout": "tree"}, "unknown layout 'tree'"),
    ({"size": (9, 3)}, "lo <= hi"),
    ({"size": {"dist": "lognormal", "mean": 9, "std": 1}}, "normal"),
    ({"size": -5}, "size must be an integer >= 0"),
    ({"size": "1MiB"}, "size must be an int"),
    ({"samples_per_shard": 4}, "samples_per_shard applies to tfrecord, wds and hdf5"),
    ({"format": "wds", "samples_per_shard": 0}, "samples_per_shard must be an integer >= 1"),
    ({"format": "png", "compress_factor": 2}, "do not apply to png"),
    ({"seed": -1}, "seed must be an integer >= 0"),
]


@pytest.mark.parametrize(("kw", "msg"), BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_invalid_config_before_writing(
    tmp_path: Path, kw: dict[str, object], msg: str
) -> None:
    args: dict[str, object] = {"count": 3, "size": 10, "format": "raw"} | kw
    with pytest.raises(InvalidConfigError, match=msg) as e:
        gen.generate(f"file://{tmp_path}/x", **args)  # type: ignore[arg-type]
    assert isinstance(e.value, ValueError) and not (tmp_path / "x").exists()


# --- tf.train.Example ----------------------------------------------------------------------------


def test_example_roundtrip_and_unpacked_lists() -> None:
    ex = encode_example(
        {
            "data": b"\x00abc",
            "label": -3,
            "f": [1.5, -2.0],
            "s": ["x", b"yy"],
            "a": np.arange(3, dtype=np.uint8),
        }
    )
    d = decode_example(ex)
    assert d["data"] == [b"\x00abc"] and d["s"] == [b"x", b"yy"]
    assert isinstance(d["label"], np.ndarray) and d["label"].dtype == np.int64 and d["label"].tolist() == [-3]
    assert isinstance(d["f"], np.ndarray) and d["f"].dtype == np.float32 and d["f"].tolist() == [1.5, -2.0]
    assert isinstance(d["a"], np.ndarray) and d["a"].tolist() == [0, 1, 2]
    # Unpacked numeric lists (legal protobuf; old writers emit them): tag 0x08 varints, 0x0d fixed32.
    int64_list = b"\x08\x05\x08\x7f"
    float_list = b"\x0d" + np.float32(0.5).tobytes()
    feats = [(b"i", b"\x1a" + bytes([len(int64_list)]) + int64_list), (b"g", b"\x12\x05" + float_list)]
    entries = b"".join(
        b"\x0a" + bytes([len(e)]) + e
        for e in (b"\x0a\x01" + k + b"\x12" + bytes([len(v)]) + v for k, v in feats)
    )
    d = decode_example(b"\x0a" + bytes([len(entries)]) + entries)
    assert d["i"].tolist() == [5, 127] and d["g"].tolist() == [0.5]  # type: ignore[union-attr]
    with pytest.raises(CorruptShardError):
        decode_example(b"\x0a\x50abc")  # a length past the end


def test_decode_example_of_a_generated_record_is_zero_copy() -> None:
    payload = encode_example({"data": b"z" * 100, "label": 7})
    framed = frame_record(payload)
    mv = memoryview(framed)[12:-4]
    d = decode_example(mv)
    data = d["data"]
    assert isinstance(data, list) and data[0].obj is framed and bytes(data[0]) == b"z" * 100


# --- the CLI -------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "s3dlio", *args], cwd=cwd, capture_output=True, timeout=120, check=False
    )


def test_cli_gen_wds_end_to_end(bucket: str, tmp_path: Path) -> None:
    import webdataset as wds

    p = cli(
        "--json", "gen", f"s3://{bucket}/w", "--format", "wds", "--count", "9", "--size", "1KiB-4KiB",
        "--samples-per-shard", "4", "--seed", "3", "--layout", "dlio", "-j", "8", cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["format"] == "wds" and rec["objects"] == 3 and rec["samples"] == 9
    assert rec["files"] == [f"s3://{bucket}/w/train/img_{i}_of_3.tar" for i in range(3)]
    assert rec["bytes"] == sum(o.size for o in s3dlio.list(f"s3://{bucket}/w/"))
    paths = [local(u, tmp_path) for u in rec["files"]]
    got = list(wds.WebDataset([str(q) for q in paths], shardshuffle=False))
    sizes = gen.sample_sizes((1024, 4096), 9, seed=3)
    assert [s["bin"] for s in got] == [expected(i, int(sizes[i]), 3) for i in range(9)]


def test_cli_gen_sizes_dedup_compress_and_default_layout(tmp_path: Path) -> None:
    p = cli("gen", "n", "--count", "5", "--size", "normal:2KiB,100", "--seed", "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    spec = {"dist": "normal", "mean": 2048, "std": 100}
    got = sorted((tmp_path / "n").iterdir())
    assert [q.name for q in got] == [f"0000{i}.bin" for i in range(5)]  # raw, flat: as gen always wrote
    assert [q.stat().st_size for q in got] == gen.sample_sizes(spec, 5, seed=1).tolist()
    p = cli("gen", "c", "--count", "1", "--size", "64KiB", "--dedup", "2", "--compress", "4", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "c" / "00000.bin").read_bytes() == gen.sample_data(
        0, 64 * KiB, dedup_factor=2, compress_factor=4
    )
    p = cli(
        "gen", "l", "--count", "4", "--size", "1,2,3", "--format", "npy", "--layout", "dlio", cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert [np.load(q).size for q in sorted((tmp_path / "l" / "train").iterdir())] == [1, 2, 3, 1]


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--format", "parquet"], b"invalid choice: 'parquet'"),
        (["--format", "hdf5", "--size", "1KiB-2KiB"], b"hdf5 needs a fixed size"),
        (["--count", "-1"], b"count must be"),
        (["--dedup", "0"], b"dedup_factor must be"),
        (["--size", "normal:1MiB"], b"--size"),
    ],
)
def test_cli_gen_bad_arguments_exit_2(tmp_path: Path, args: list[str], msg: bytes) -> None:
    p = cli("gen", "x", "--count", "2", *args, cwd=tmp_path)
    assert p.returncode == 2 and msg in p.stderr, p.stderr
    assert b"Traceback" not in p.stderr and not (tmp_path / "x").exists()


@pytest.mark.timeout(90)
def test_ctrl_c_stops_gen_promptly(bucket: str, tmp_path: Path, proxy: FaultProxy) -> None:
    """Five PUTs reach the server, the rest hang in the proxy; Ctrl-C: exit 130 within seconds,
    with the interruption note and no traceback; the objects written stay, nothing else appears."""
    proxy.set_mode("pass", count=5, then="blackhole", match="^PUT ")
    args = ["--endpoint-url", proxy.endpoint, "gen", f"s3://{bucket}/g", "--format", "npz"]
    args += ["--count", "2000", "--size", "16KiB", "-j", "4"]
    interrupt_cli(args, tmp_path, lambda: proxy.faults_injected >= 1)
    assert len(s3dlio.list(f"s3://{bucket}/g/")) <= 5
