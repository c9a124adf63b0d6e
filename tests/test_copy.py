"""s3dlio.copy and copy_tree between any two schemes (s3, az, gs, file), streamed, and inside one
S3 or GCS bucket done by the store itself."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB, rel
from s3dlio.testing import LocalAzurite, LocalS3Server

CFG = s3dlio.StorageConfig(part_size=5 * MiB, multipart_threshold=5 * MiB)


def _root(request: pytest.FixtureRequest, scheme: str, tmp_path: Path) -> str:
    if scheme == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/"
    if scheme == "az":
        return f"az://{request.getfixturevalue('az_container')}/"
    if scheme == "gs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/"
    d = tmp_path / f"copy-{scheme}"
    d.mkdir(parents=True, exist_ok=True)
    return f"file://{d}/"


PAIRS = [("s3", "gs"), ("gs", "az"), ("az", "file"), ("file", "s3"), ("az", "az"), ("gs", "gs"), ("s3", "s3")]


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_copy_between_schemes(request: pytest.FixtureRequest, tmp_path: Path, a: str, b: str) -> None:
    src_root, dst_root = _root(request, a, tmp_path), _root(request, b, tmp_path / "dst")
    small, big = os.urandom(1000), os.urandom(12 * MiB + 7)
    s3dlio.put(src_root + "src/small.bin", small)
    s3dlio.put(src_root + "src/big.bin", big, config=CFG)
    assert s3dlio.copy(src_root + "src/small.bin", dst_root + "out/small.bin", config=CFG) == len(small)
    assert s3dlio.copy(src_root + "src/big.bin", dst_root + "out/big.bin", config=CFG) == len(big)
    assert bytes(s3dlio.get(dst_root + "out/small.bin")) == small
    assert bytes(s3dlio.get(dst_root + "out/big.bin")) == big
    assert bytes(s3dlio.get(src_root + "src/big.bin")) == big  # the source is untouched


@pytest.mark.parametrize(("a", "b"), [("s3", "az"), ("gs", "file"), ("file", "gs")])
def test_copy_tree_keeps_relative_keys_and_the_prefix_boundary(
    request: pytest.FixtureRequest, tmp_path: Path, a: str, b: str
) -> None:
    src_root, dst_root = _root(request, a, tmp_path), _root(request, b, tmp_path / "dst")
    inside = {"ds/a.bin": b"a", "ds/sub/b.bin": os.urandom(6 * MiB), "ds/sub/deeper/c.bin": b"c" * 10}
    outside = {"ds2/x.bin": b"x", "ds_v2/y.bin": b"y"}
    for k, v in {**inside, **outside}.items():
        s3dlio.put(src_root + k, v, config=CFG)
    assert s3dlio.copy_tree(src_root + "ds", dst_root + "copy", config=CFG) == len(inside)
    got = {rel(o.uri, dst_root + "copy/"): bytes(s3dlio.get(o.uri)) for o in s3dlio.list(dst_root + "copy/")}
    assert got == {k[len("ds/") :]: v for k, v in inside.items()}


def test_copy_of_a_missing_object_is_not_found_and_writes_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    src_root, dst_root = _root(request, "gs", tmp_path), _root(request, "az", tmp_path)
    with pytest.raises(FileNotFoundError) as ei:
        s3dlio.copy(src_root + "missing", dst_root + "out")
    assert "missing" in str(ei.value)
    assert not s3dlio.exists(dst_root + "out")


def test_copy_inside_one_s3_bucket_is_done_by_the_server(bucket: str, s3_server: LocalS3Server) -> None:
    """CopyObject: the bytes never come to the client (no GET of the source on the wire)."""
    data = os.urandom(3 * MiB)
    s3dlio.put(f"s3://{bucket}/src", data)
    with FaultProxy(s3_server.endpoint) as proxy:
        cfg = s3_server.config(endpoint_url=proxy.endpoint)
        assert s3dlio.copy(f"s3://{bucket}/src", f"s3://{bucket}/dst", config=cfg) == len(data)
        methods = [(m, p.split("?")[0]) for m, p, _ in proxy.request_log]
    assert ("GET", f"/{bucket}/src") not in methods, methods
    assert ("PUT", f"/{bucket}/dst") in methods, methods
    assert bytes(s3dlio.get(f"s3://{bucket}/dst")) == data


def test_copy_async(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    src_root, dst_root = _root(request, "file", tmp_path), _root(request, "gs", tmp_path)
    s3dlio.put(src_root + "t/a", b"12345")

    async def main() -> tuple[int, int]:
        return (
            await s3dlio.copy_async(src_root + "t/a", dst_root + "a"),
            await s3dlio.copy_tree_async(src_root + "t", dst_root + "tree"),
        )

    assert asyncio.run(main()) == (5, 1)
    assert bytes(s3dlio.get(dst_root + "tree/a")) == b"12345"


def test_copy_inside_one_azure_container_is_done_by_the_service(
    az_container: str, azurite: LocalAzurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copy Blob: the bytes never come to the client (no GET of the source on the wire)."""
    data = os.urandom(3 * MiB)
    s3dlio.put(f"az://{az_container}/src", data)
    with FaultProxy(azurite.blob_url) as proxy:
        cfg = s3dlio.StorageConfig(endpoint_url=f"{proxy.endpoint}/{azurite.account_name}")
        assert s3dlio.copy(f"az://{az_container}/src", f"az://{az_container}/dst", config=cfg) == len(data)
        methods = [(m, p.split("?")[0]) for m, p, _ in proxy.request_log]
    base = f"/{azurite.account_name}/{az_container}"
    assert ("GET", f"{base}/src") not in methods, methods
    assert ("PUT", f"{base}/dst") in methods, methods
    assert bytes(s3dlio.get(f"az://{az_container}/dst")) == data


@pytest.mark.timeout(60)
def test_copy_inside_a_store_that_cannot_copy_itself_with_one_request_in_flight(tmp_path: Path) -> None:
    """file:// has no server-side copy: the copy is streamed, and with max_concurrency=1 the
    permit taken to try the store's own copy must be released before the streamed copy takes
    its own (holding it would hang)."""
    src, dst = tmp_path / "a.bin", tmp_path / "b.bin"
    data = os.urandom(12 * MiB)
    src.write_bytes(data)
    cfg = s3dlio.StorageConfig(max_concurrency=1, part_size=5 * MiB, multipart_threshold=5 * MiB)
    assert s3dlio.copy(f"file://{src}", f"file://{dst}", config=cfg) == len(data)
    assert dst.read_bytes() == data
    s3dlio.put(f"file://{tmp_path}/t/small", b"x")
    assert s3dlio.copy_tree(f"file://{tmp_path}/t", f"file://{tmp_path}/u", config=cfg) == 1


def test_copy_tree_only_copies_the_keys_named(root: str) -> None:
    for k in ("t/a", "t/b", "t/sub/c", "t2/x"):
        s3dlio.put(f"{root}{k}", k.encode())
    assert s3dlio.copy_tree(f"{root}t", f"{root}u", only=["a", "sub/c"]) == 2
    got = {rel(o.uri, f"{root}u/"): bytes(s3dlio.get(o.uri)) for o in s3dlio.list(f"{root}u/")}
    assert got == {"a": b"t/a", "sub/c": b"t/sub/c"}
    # A key that is not under the source (t2/x is a sibling, not t/x): an error, nothing copied.
    with pytest.raises(s3dlio.exceptions.NotFoundError, match="x"):
        s3dlio.copy_tree(f"{root}t", f"{root}v", only=["b", "x"])
    assert s3dlio.list(f"{root}v/") == []
    assert asyncio.run(s3dlio.copy_tree_async(f"{root}t", f"{root}w", only=[])) == 0


def test_delete_many_deletes_exactly_the_uris_given(root: str, tmp_path: Path) -> None:
    keys = [f"d/{i}" for i in range(5)] + ["d2", "d/5/inner"]
    for k in keys:
        s3dlio.put(f"{root}{k}", b"x")
    other = f"file://{tmp_path}/elsewhere"
    s3dlio.put(other, b"y")
    gone = [f"{root}d/1", f"{root}d/3", f"{root}d/missing", other]
    assert s3dlio.delete_many(gone) in (3, 4)  # a missing object is not an error (S3 counts it)
    left = sorted(rel(o.uri, root) for o in s3dlio.list(root))
    assert left == ["d/0", "d/2", "d/4", "d/5/inner", "d2"]
    assert not os.path.exists(f"{tmp_path}/elsewhere")
    assert asyncio.run(s3dlio.delete_many_async([f"{root}d/0"])) == 1
    with pytest.raises(s3dlio.exceptions.InvalidConfigError, match="sequence"):
        s3dlio.delete_many(f"{root}d/2")
