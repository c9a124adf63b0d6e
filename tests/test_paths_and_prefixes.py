"""Issue 9, items 1-3: relative local paths, prefix-boundary deletes and folder markers, on every
backend where the behaviour applies.

1. ``upload`` / ``download`` resolve relative local paths (``dataset``, ``./dataset``,
   ``../x/dataset``) against the current directory at the call; keys are relative to the directory.
2. ``delete_prefix`` treats its prefix as a directory (``p`` is ``p`` itself and ``p/...``, never
   ``p2/obj``, ``pz``, ``p_v2/x``), counts what it deleted, and validates ``max_concurrency``.
3. Folder markers (zero-byte keys ending in ``/``) are never downloaded or sampled, but ``list``
   still reports them and ``delete_prefix`` deletes (and counts) them.

Complements tests/test_trust.py and the conformance suite (tests/conformance), which test the
same items from other angles.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import s3dlio
from helpers import rel
from s3dlio import exceptions as exc

TREE = {"a.bin": b"alpha", "sub/c.bin": b"charlie-charlie", "sub/deeper/d.bin": b"d"}


def make_tree(base: Path, files: dict[str, bytes] = TREE) -> Path:
    """Write ``files`` under ``base`` (created); returns ``base``."""
    for name, data in files.items():
        p = base / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return base


def stored(prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (relative key -> content), read back through s3dlio."""
    return {rel(o.uri, prefix): bytes(s3dlio.get(o.uri)) for o in s3dlio.list(prefix) if not o.is_dir}


def files_under(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


# -------------------------------------------------------------------------------------------------
# 1. relative local paths
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("local", ["dataset", "./dataset", "dataset/", "../cwd/dataset", "./sub/../dataset"])
@pytest.mark.parametrize("slash", ["/", ""], ids=["prefix-slash", "prefix-no-slash"])
def test_upload_of_a_relative_directory_to_every_backend(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: str, slash: str
) -> None:
    """After ``chdir``, ``upload(<relative dir>, root + "ds" [+ "/"])`` stores exactly ``ds/a.bin``,
    ``ds/sub/c.bin``, ``ds/sub/deeper/d.bin`` on s3://, file:// and direct:// (the release stored
    ``ds/file:/<abs path>/...`` keys for "dataset" and failed with HTTP 400 for "./dataset")."""
    cwd = tmp_path / "cwd"
    make_tree(cwd / "dataset")
    (cwd / "sub").mkdir()
    monkeypatch.chdir(cwd)
    assert s3dlio.upload(local, root + "ds" + slash) == len(TREE)
    assert stored(root) == {f"ds/{k}": v for k, v in TREE.items()}


def test_relative_paths_are_resolved_at_each_call(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same relative path names a different directory after ``chdir``: each upload takes the
    tree of the current directory at its call."""
    make_tree(tmp_path / "one" / "dataset", {"x.bin": b"from one"})
    make_tree(tmp_path / "two" / "dataset", {"x.bin": b"from two", "y.bin": b"only in two"})
    monkeypatch.chdir(tmp_path / "one")
    assert s3dlio.upload("dataset", f"s3://{bucket}/one/") == 1
    monkeypatch.chdir(tmp_path / "two")
    assert s3dlio.upload("dataset", f"s3://{bucket}/two/") == 2
    assert stored(f"s3://{bucket}/") == {
        "one/x.bin": b"from one",
        "two/x.bin": b"from two",
        "two/y.bin": b"only in two",
    }


@pytest.mark.parametrize("local", ["out", "./out", "../cwd/out", "out/nested"])
def test_download_into_a_relative_directory(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: str
) -> None:
    """``download(root + "ds/", <relative dir>)`` writes the tree under the current directory's
    ``<relative dir>``, on every backend, and nothing anywhere else in the current directory.
    (The release already resolved download's target this way: a regression test.)"""
    for k, v in TREE.items():
        s3dlio.put(root + "ds/" + k, v)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert s3dlio.download(root + "ds/", local) == len(TREE)
    assert files_under(cwd) == {str(Path(local.removeprefix("../cwd/")) / k): v for k, v in TREE.items()}


def test_async_upload_and_download_resolve_relative_paths(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio twins resolve relative local paths exactly as the blocking calls do."""
    make_tree(tmp_path / "dataset")
    monkeypatch.chdir(tmp_path)

    async def both() -> tuple[int, int]:
        up = await s3dlio.upload_async("./dataset", f"s3://{bucket}/ds")
        down = await s3dlio.download_async(f"s3://{bucket}/ds/", "back")
        return up, down

    assert asyncio.run(both()) == (len(TREE), len(TREE))
    assert stored(f"s3://{bucket}/") == {f"ds/{k}": v for k, v in TREE.items()}
    assert files_under(tmp_path / "back") == TREE


def test_relative_file_uri_destination_and_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative ``file://`` URI (``file://store/ds/``) is relative to the current directory,
    as upload destination and as download source (the local directories are absolute here, so
    only the URI is relative). Already so in the release: a regression test."""
    src = make_tree(tmp_path / "dataset")
    monkeypatch.chdir(tmp_path)
    assert s3dlio.upload(src, "file://store/ds/") == len(TREE)
    assert files_under(tmp_path / "store" / "ds") == TREE
    assert s3dlio.download("file://store/ds/", tmp_path / "back") == len(TREE)
    assert files_under(tmp_path / "back") == TREE


# -------------------------------------------------------------------------------------------------
# 2. delete_prefix stops at the name boundary
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["file", "direct"])
def test_delete_prefix_never_touches_a_local_sibling_sharing_the_name(
    scheme: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The issue's example: ``delete_prefix("file:///x/data")`` deletes ``/x/data/...`` (2 files)
    and never ``/x/data_v2/keep``, ``/x/database.db``, ``/x/data.bak`` or ``/x/data2/y`` (the
    release deleted every path starting with ``/x/data``)."""
    x = Path(request.getfixturevalue("disk_dir")) if scheme == "direct" else tmp_path / "x"
    siblings = {"data_v2/keep": b"k", "database.db": b"db", "data.bak": b"bak", "data2/y": b"y"}
    make_tree(x, {"data/a": b"1", "data/sub/b": b"2", **siblings})
    assert s3dlio.delete_prefix(f"{scheme}://{x}/data") == 2
    assert files_under(x) == siblings


def test_delete_prefix_on_s3_deletes_the_object_its_children_and_markers_only(
    bucket: str,
    boto3_client,  # type: ignore[no-untyped-def]
) -> None:
    """On S3 ``delete_prefix("s3://b/p")`` deletes the object ``p``, everything under ``p/`` and the
    marker ``p/sub/`` (counted: 4), and leaves ``p2/obj``, ``pz``, ``p_v2/x``,
    ``p.txt``; seen by an independent client."""
    # (SeaweedFS refuses a marker "p/" beside an object "p": ExistingObjectIsFile.)
    deleted = ["p", "p/a", "p/sub/", "p/sub/b"]
    kept = ["p2/obj", "pz", "p_v2/x", "p.txt"]
    for k in deleted + kept:
        boto3_client.put_object(Bucket=bucket, Key=k, Body=b"" if k.endswith("/") else k.encode())
    assert s3dlio.delete_prefix(f"s3://{bucket}/p") == len(deleted)
    left = [o["Key"] for o in boto3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert sorted(left) == sorted(kept)


def test_delete_prefix_of_the_bucket_root_deletes_everything_and_counts_markers(
    bucket: str,
    boto3_client,  # type: ignore[no-untyped-def]
) -> None:
    """``delete_prefix("s3://b/")`` empties the bucket: objects and folder markers, all counted."""
    keys = ["a", "d/", "d/b", "d/e/", "z/y/x"]
    for k in keys:
        boto3_client.put_object(Bucket=bucket, Key=k, Body=b"" if k.endswith("/") else b"x")
    assert s3dlio.delete_prefix(f"s3://{bucket}/") == len(keys)
    assert boto3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("bad", [0, -1, -1000])
def test_delete_prefix_refuses_a_max_concurrency_below_one(root: str, bad: int) -> None:
    """``max_concurrency`` must be >= 1: 0 or negative raises InvalidConfigError (a ValueError)
    naming the option, and deletes nothing (sync and async)."""
    for i in range(3):
        s3dlio.put(f"{root}p/{i}", b"x")
    with pytest.raises(exc.InvalidConfigError, match="max_concurrency") as ei:
        s3dlio.delete_prefix(root + "p", max_concurrency=bad)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(exc.InvalidConfigError, match="max_concurrency"):
        asyncio.run(s3dlio.delete_prefix_async(root + "p", max_concurrency=bad))
    assert len(s3dlio.list(root + "p/")) == 3


@pytest.mark.parametrize("n", [1, 2, 64])
def test_delete_prefix_with_max_concurrency_deletes_exactly_the_prefix(root: str, n: int) -> None:
    """Any valid ``max_concurrency`` (1, 2, 64) deletes all 40 objects under ``p/`` and returns 40;
    the sibling ``p2`` stays."""
    s3dlio.put_many([(f"{root}p/{i:03d}", b"x") for i in range(40)])
    s3dlio.put(root + "p2", b"sibling")
    assert s3dlio.delete_prefix(root + "p", max_concurrency=n) == 40
    assert [rel(o.uri, root) for o in s3dlio.list(root)] == ["p2"]
    assert asyncio.run(s3dlio.delete_prefix_async(root + "p", max_concurrency=n)) == 0


def test_list_keeps_string_prefix_semantics(bucket: str) -> None:
    """``list("s3://b/p")`` is a string prefix (it also lists ``p2/obj`` and ``pz``): only the
    destructive call is boundary-safe. (Already so in the release: a regression test.)"""
    for k in ("p/a", "p2/obj", "pz", "q"):
        s3dlio.put(f"s3://{bucket}/{k}", b"x")
    assert sorted(rel(o.uri, f"s3://{bucket}/") for o in s3dlio.list(f"s3://{bucket}/p")) == [
        "p/a",
        "p2/obj",
        "pz",
    ]


# -------------------------------------------------------------------------------------------------
# 3. folder markers
# -------------------------------------------------------------------------------------------------

REAL = {"dm/a.bin": b"alpha", "dm/sub/c.bin": b"charlie"}
MARKERS = ["dm/", "dm/sub/", "dm/empty/"]


@pytest.fixture
def marked(bucket: str, boto3_client) -> str:  # type: ignore[no-untyped-def]
    """A bucket with two real objects under ``dm/`` and the folder markers ``dm/``, ``dm/sub/`` and
    ``dm/empty/``, created as the AWS console does (boto3 ``put_object(Key="dm/", Body=b"")``)."""
    for k, v in REAL.items():
        boto3_client.put_object(Bucket=bucket, Key=k, Body=v)
    for m in MARKERS:
        boto3_client.put_object(Bucket=bucket, Key=m, Body=b"")
    return bucket


def test_download_of_a_prefix_with_folder_markers(marked: str, tmp_path: Path) -> None:
    """``download("s3://b/dm/", dir)`` succeeds and writes only the real objects (the release
    failed with 'refusing to download key ""')."""
    dst = tmp_path / "dst"
    assert s3dlio.download(f"s3://{marked}/dm/", dst) == len(REAL)
    assert files_under(dst) == {k.removeprefix("dm/"): v for k, v in REAL.items()}


def test_download_of_a_prefix_holding_only_markers(bucket: str, tmp_path: Path, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """A prefix holding nothing but markers downloads nothing, successfully: 0 files written."""
    for m in ("only/", "only/x/"):
        boto3_client.put_object(Bucket=bucket, Key=m, Body=b"")
    dst = tmp_path / "dst"
    assert s3dlio.download(f"s3://{bucket}/only/", dst) == 0
    assert not dst.exists() or files_under(dst) == {}


def test_from_prefix_datasets_and_the_loader_skip_markers(marked: str) -> None:
    """``ObjectDataset.from_prefix`` and ``ObjectIterableDataset.from_prefix`` hold exactly the two
    real objects (never a marker); a DataLoader over the first and iterating the second yield
    exactly their contents (the release counted the markers as samples, and the loader then
    failed on them)."""
    want = [f"s3://{marked}/{k}" for k in sorted(REAL)]
    ds = s3dlio.ObjectDataset.from_prefix(f"s3://{marked}/dm/")
    assert ds.uris == want
    loader = s3dlio.DataLoader(ds, batch_size=1, collate_fn=lambda xs: bytes(xs[0]))
    assert list(loader) == [REAL[k] for k in sorted(REAL)]
    it = s3dlio.ObjectIterableDataset.from_prefix(f"s3://{marked}/dm/")
    assert it.uris == want
    assert [bytes(b) for b in it] == [REAL[k] for k in sorted(REAL)]


def test_list_still_reports_folder_markers(marked: str) -> None:
    """Markers exist, so ``list`` reports them (with size 0) besides the real objects."""
    listed = {
        rel(o.uri, f"s3://{marked}/") + ("/" if o.uri.endswith("/") else ""): o.size
        for o in s3dlio.list(f"s3://{marked}/dm/")
    }
    assert set(listed) == set(REAL) | set(MARKERS), listed
    assert all(listed[m] == 0 for m in MARKERS)


def test_delete_prefix_deletes_and_counts_markers(marked: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """``delete_prefix("s3://b/dm")`` deletes the real objects and the three markers: 5."""
    assert s3dlio.delete_prefix(f"s3://{marked}/dm") == len(REAL) + len(MARKERS)
    assert boto3_client.list_objects_v2(Bucket=marked).get("KeyCount", 0) == 0


def test_upload_of_a_tree_with_empty_directories_creates_no_markers(bucket: str, tmp_path: Path) -> None:
    """upload's walk stores files only: an empty local directory never becomes a marker object.
    (Already so in the release: a regression test.)"""
    src = make_tree(tmp_path / "src")
    (src / "empty" / "deeper").mkdir(parents=True)
    assert s3dlio.upload(src, f"s3://{bucket}/u/") == len(TREE)
    assert sorted(rel(o.uri, f"s3://{bucket}/u/") for o in s3dlio.list(f"s3://{bucket}/u/")) == sorted(TREE)
