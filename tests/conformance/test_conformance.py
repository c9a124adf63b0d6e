"""Behaviour every backend must have, in the style of the object_store crate's conformance tests.

Each test takes the ``store`` fixture (conftest.py) and therefore runs on every backend: s3://,
file:// and direct:// today, az:// and gs:// when they join. Tests never branch on the backend's
name, only on its declared capabilities. What a backend really stored is checked out of band
(boto3 for S3, the filesystem for local backends) through ``store.raw_keys()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

import s3dlio
from helpers import MiB, rel, wait_until
from s3dlio.exceptions import InvalidConfigError, NotFoundError, RangeError

from .stores import Store

# ---------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, 5 * 1024 + 3, 17 * MiB + 3],
    ids=["empty", "1-byte", "5KiB", "17MiB-multipart"],
)
def test_round_trip(store: Store, size: int) -> None:
    """get returns exactly the bytes put (empty, tiny, small, and above the default 16 MiB
    multipart threshold), stat reports the size, and a second put replaces the object."""
    uri = store.uri(f"rt/obj-{size}")
    data = os.urandom(size)
    s3dlio.put(uri, data)
    assert bytes(s3dlio.get(uri)) == data
    assert s3dlio.stat(uri).size == size
    assert s3dlio.exists(uri) is True
    replacement = b"replaced: " + os.urandom(size // 3)
    s3dlio.put(uri, replacement)
    assert bytes(s3dlio.get(uri)) == replacement
    assert s3dlio.stat(uri).size == len(replacement)
    assert store.raw_keys() == {f"rt/obj-{size}"}


# ---------------------------------------------------------------------------------------------
# Ranges
# ---------------------------------------------------------------------------------------------

RN = 10_007  # not a multiple of 512/4096 (direct:// alignment)


def test_ranges_at_the_edges(store: Store) -> None:
    """Every range inside the object returns exactly ``data[offset:offset+length]``: first byte,
    last byte, the whole object, ``(size-1, 1)``, and ``length=None`` to the end."""
    uri = store.uri("rg/obj")
    data = os.urandom(RN)
    s3dlio.put(uri, data)
    cases: list[tuple[int, int | None]] = [
        (0, 1),
        (RN - 1, 1),
        (0, RN),
        (0, None),
        (RN - 1, None),
        (4095, 2),
        (1, RN - 1),
        (RN - 100, None),
    ]
    for offset, length in cases:
        end = RN if length is None else offset + length
        got = bytes(s3dlio.get_range(uri, offset, length))
        assert got == data[offset:end], f"get_range({offset}, {length}): {len(got)} bytes"


def test_ranges_past_the_end_are_range_errors(store: Store) -> None:
    """A range not entirely inside the object (one byte past the end, offset == size, offset
    beyond, an offset + length overflowing u64) raises RangeError, a ValueError naming the URI, and
    never a panic or short data. length=0 is a ValueError (RangeError or InvalidConfigError)."""
    uri = store.uri("rg/obj")
    s3dlio.put(uri, os.urandom(RN))
    for offset, length in [(RN - 1, 2), (0, RN + 1), (RN, 1), (RN, None), (RN + 5, None), (2**64 - 1, 2)]:
        with pytest.raises(RangeError) as ei:
            s3dlio.get_range(uri, offset, length)
        assert isinstance(ei.value, ValueError)
        assert uri in str(ei.value), f"({offset}, {length}): {ei.value}"
        assert ei.value.uri == uri, f"({offset}, {length}): .uri = {ei.value.uri!r}"
    with pytest.raises((RangeError, InvalidConfigError)) as ei0:
        s3dlio.get_range(uri, 0, 0)
    assert uri in str(ei0.value)


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------

N_FILES = 1_040  # directly under ls/
N_DIRS = 70  # ls/d00/x ... ls/d69/x: 1,110 objects in all, and 1,110 one-level entries


def _listing_keys() -> dict[str, int]:
    keys = {f"ls/obj_{i:04d}": i % 7 for i in range(N_FILES)}
    keys.update({f"ls/d{j:02d}/x": j % 5 + 1 for j in range(N_DIRS)})
    return keys


def test_listing_past_1000_keys(store: Store) -> None:
    """More than 1,000 keys: a recursive listing returns every object exactly once with its size;
    recursive=False returns the objects directly under the prefix as files and each common prefix
    once as an is_dir entry ending in '/'; list_iter yields what list returns, in both modes."""
    keys = _listing_keys()
    s3dlio.put_many([(store.uri(k), bytes(n)) for k, n in keys.items()])
    prefix = store.uri("ls/")

    entries = s3dlio.list(prefix)
    assert len(entries) == len(keys)
    assert {rel(e.uri, store.root): e.size for e in entries} == keys
    assert not any(e.is_dir for e in entries)

    flat = s3dlio.list(prefix, recursive=False)
    files = {rel(e.uri, prefix): e.size for e in flat if not e.is_dir}
    dirs = [e.uri for e in flat if e.is_dir]
    assert files == {k[len("ls/") :]: n for k, n in keys.items() if k.startswith("ls/obj_")}
    assert all(u.endswith("/") for u in dirs), dirs[:5]
    assert sorted(dirs) == [f"{prefix}d{j:02d}/" for j in range(N_DIRS)]
    assert len(flat) == N_FILES + N_DIRS

    inner = s3dlio.list(prefix + "d07/", recursive=False)
    assert [(rel(e.uri, prefix + "d07/"), e.size, e.is_dir) for e in inner] == [("x", 3, False)]

    for recursive in (True, False):
        streamed = sorted((e.uri, e.size, e.is_dir) for e in s3dlio.list_iter(prefix, recursive=recursive))
        listed = sorted((e.uri, e.size, e.is_dir) for e in s3dlio.list(prefix, recursive=recursive))
        assert streamed == listed, f"recursive={recursive}"


def test_list_uses_string_prefix_semantics(store: Store) -> None:
    """list('.../p') is a string prefix: it also lists p2/..., pz and p_v2/...; list('.../p/') only
    p/...; a prefix with nothing under it lists as empty, not an error."""
    for k in ("p/a", "p/sub/b", "p2/obj", "pz", "p_v2/x", "q/other"):
        s3dlio.put(store.uri(k), b"1")
    assert {rel(e.uri, store.root) for e in s3dlio.list(store.uri("p"))} == {
        "p/a",
        "p/sub/b",
        "p2/obj",
        "pz",
        "p_v2/x",
    }
    assert {rel(e.uri, store.root) for e in s3dlio.list(store.uri("p/"))} == {"p/a", "p/sub/b"}
    assert s3dlio.list(store.uri("nothing-here/")) == []


# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------


def test_delete_is_exact(store: Store) -> None:
    """delete('.../obj_1') deletes exactly obj_1: obj_10, obj_11 (and obj_1/x where an object and
    a prefix of the same name can coexist) stay; deleting a missing object is not an error."""
    keys = {"obj_1", "obj_10", "obj_11", "obj_2"}
    if store.object_and_prefix_coexist:
        keys.add("obj_1/x")
    for k in keys:
        s3dlio.put(store.uri(k), k.encode())
    s3dlio.delete(store.uri("obj_1"))
    assert store.raw_keys() == keys - {"obj_1"}
    assert s3dlio.exists(store.uri("obj_1")) is False
    for k in keys - {"obj_1"}:
        assert bytes(s3dlio.get(store.uri(k))) == k.encode()
    s3dlio.delete(store.uri("obj_1"))
    s3dlio.delete(store.uri("never-written"))
    s3dlio.delete(store.uri("no-such-dir/never-written"))
    assert store.raw_keys() == keys - {"obj_1"}


SIBLINGS = {"p2/obj", "pz", "p_v2/x", "pp", "p.bak"}


@pytest.mark.parametrize("form", ["p", "p/", "p-max_concurrency=2"])
def test_delete_prefix_stops_at_the_name_boundary(store: Store, form: str) -> None:
    """delete_prefix treats the prefix as a directory: '.../p' deletes p (the object itself, where
    it can coexist with p/...) and everything under p/, never the siblings p2/obj, pz, p_v2/x, pp;
    it returns the number deleted. '.../p/' deletes p/... likewise; max_concurrency=2 changes
    nothing but the concurrency, and max_concurrency=0 is refused."""
    under = {"p/a", "p/sub/b", "p/sub/deeper/c"}
    if form == "p" and store.object_and_prefix_coexist:
        under.add("p")
    for k in under | SIBLINGS:
        s3dlio.put(store.uri(k), k.encode())
    if form == "p/":
        n = s3dlio.delete_prefix(store.uri("p/"))
    elif form == "p":
        n = s3dlio.delete_prefix(store.uri("p"))
    else:
        with pytest.raises(ValueError, match="max_concurrency"):
            s3dlio.delete_prefix(store.uri("p"), max_concurrency=0)
        assert store.raw_keys() >= under | SIBLINGS, "a refused delete_prefix deleted something"
        n = s3dlio.delete_prefix(store.uri("p"), max_concurrency=2)
    left = {k for k in store.raw_keys() if not k.endswith("/")}  # a local backend may keep empty dirs
    assert left == SIBLINGS, f"deleted siblings: {sorted(SIBLINGS - left)}; kept: {sorted(left - SIBLINGS)}"
    assert n == len(under)
    for k in SIBLINGS:
        assert bytes(s3dlio.get(store.uri(k))) == k.encode()
    assert s3dlio.delete_prefix(store.uri(form.split("-")[0])) == 0


def test_delete_prefix_of_a_file_object(store: Store) -> None:
    """delete_prefix('.../f') where f is a single object deletes f (count 1) and nothing named
    f2 or f.txt; delete_prefix of a missing prefix deletes nothing and returns 0."""
    for k in ("f", "f2", "f.txt", "fz/x"):
        s3dlio.put(store.uri(k), b"x")
    assert s3dlio.delete_prefix(store.uri("f")) == 1
    assert store.raw_keys() == {"f2", "f.txt", "fz/x"}
    assert s3dlio.delete_prefix(store.uri("missing/")) == 0
    assert s3dlio.delete_prefix(store.uri("missing")) == 0


def test_delete_prefix_of_the_root_deletes_everything(store: Store) -> None:
    """delete_prefix of the root prefix deletes every object below it and counts them."""
    keys = {"a", "b/c", "b/d/e", "z"}
    for k in keys:
        s3dlio.put(store.uri(k), b"x")
    assert s3dlio.delete_prefix(store.root) == len(keys)
    assert {k for k in store.raw_keys() if not k.endswith("/")} == set()


# ---------------------------------------------------------------------------------------------
# Folder markers
# ---------------------------------------------------------------------------------------------

MARKED = {"dm/a.bin": b"alpha", "dm/sub/b.bin": b"beta-beta"}
MARKERS = ("dm/", "dm/sub/", "dm/empty/")


@pytest.fixture
def marked(store: Store) -> Store:
    """Two real objects under dm/ plus folder markers dm/, dm/sub/ and dm/empty/ made out of band."""
    for k, v in MARKED.items():
        s3dlio.put(store.uri(k), v)
    for m in MARKERS:
        store.make_marker(m)
    return store


def test_folder_markers_are_not_dataset_samples(marked: Store) -> None:
    """ObjectDataset.from_prefix and ObjectIterableDataset.from_prefix never take a folder marker
    as a sample: exactly the real objects, with their sizes, and each sample reads."""
    for cls in (s3dlio.ObjectDataset, s3dlio.ObjectIterableDataset):
        ds = cls.from_prefix(marked.uri("dm/"))
        assert ds.uris == [marked.uri(k) for k in sorted(MARKED)], cls.__name__
        assert ds.sizes == [len(MARKED[k]) for k in sorted(MARKED)], cls.__name__
    ds = s3dlio.ObjectDataset.from_prefix(marked.uri("dm/"))
    assert [bytes(ds[i]) for i in range(len(ds))] == [MARKED[k] for k in sorted(MARKED)]


def test_download_skips_folder_markers(marked: Store, tmp_path: Path) -> None:
    """download of a prefix holding folder markers succeeds and writes only the real objects; the
    markers still exist (list reports them where they are objects) and delete_prefix counts them."""
    dst = tmp_path / "dst"
    assert s3dlio.download(marked.uri("dm/"), dst) == len(MARKED)
    got = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == {k[len("dm/") :]: v for k, v in MARKED.items()}
    if marked.supports_folder_markers:
        listed = {
            rel(e.uri, marked.root) + ("/" if e.uri.endswith("/") else "")
            for e in s3dlio.list(marked.uri("dm/"))
        }
        assert set(MARKERS) <= listed
        assert s3dlio.delete_prefix(marked.uri("dm")) == len(MARKED) + len(MARKERS)
        assert marked.raw_keys() == set()


# ---------------------------------------------------------------------------------------------
# Special characters in keys
# ---------------------------------------------------------------------------------------------

SPECIAL = [
    "with space.bin",
    "dir with space/inner file",
    "café-é.bin",
    "日本/語.bin",
    "a+b",
    "100%",
    "%20literal",
    "k=v",
    "a&b",
    "what?",
    "hash#tag",
    "tilde~",
    "at@host",
    "com,ma",
    "semi;colon",
    "quo'te",
    "mixed ?#%+=&",
]


def test_special_character_keys_round_trip(store: Store) -> None:
    """Keys with spaces, unicode, + % = & ? # ~ @ , ; ' are taken literally: put/get/stat/exists
    work, list returns exactly the URI string that was put, and delete removes exactly that key."""
    prefix = store.uri("sc/")
    uris = {prefix + k: k.encode() for k in SPECIAL}
    for uri, data in uris.items():
        s3dlio.put(uri, data)
    for uri, data in uris.items():
        assert bytes(s3dlio.get(uri)) == data, uri
        info = s3dlio.stat(uri)
        assert (info.size, info.uri) == (len(data), uri)
        assert s3dlio.exists(uri) is True, uri
    assert {"sc/" + k for k in SPECIAL} == store.raw_keys(), "stored under other names"
    listed = {e.uri for e in s3dlio.list(prefix)}
    assert listed == set(uris), f"missing: {sorted(set(uris) - listed)}; extra: {sorted(listed - set(uris))}"
    for uri in uris:
        s3dlio.delete(uri)
        assert s3dlio.exists(uri) is False, uri
    assert s3dlio.list(prefix) == []


# ---------------------------------------------------------------------------------------------
# Missing objects
# ---------------------------------------------------------------------------------------------


def test_missing_object_is_not_found(store: Store) -> None:
    """get, get_range and stat of a missing object (also one under a missing prefix) raise
    NotFoundError, a FileNotFoundError whose .uri is that URI; exists is False."""
    s3dlio.put(store.uri("present"), b"x")
    for uri in (store.uri("absent"), store.uri("no/such/dir/absent"), store.uri("presen")):
        for call in (
            lambda u: s3dlio.get(u),
            lambda u: s3dlio.get_range(u, 0, 1),
            lambda u: s3dlio.stat(u),
        ):
            with pytest.raises(NotFoundError) as ei:
                call(uri)
            assert isinstance(ei.value, FileNotFoundError)
            assert ei.value.uri == uri, f"{ei.value!r}: .uri = {ei.value.uri!r}"
        assert s3dlio.exists(uri) is False


# ---------------------------------------------------------------------------------------------
# Interrupted (multipart) put
# ---------------------------------------------------------------------------------------------


def test_cancelled_put_leaves_nothing(store: Store) -> None:
    """A large put_async cancelled while in flight (S3: a multipart upload with part 3 blackholed)
    leaves the previous version of the object, no temp file and no incomplete multipart upload,
    and nothing appears later either."""
    key = "victim"
    s3dlio.put(store.uri(key), b"previous version")
    cfg, size = store.interruptible_put(multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = bytes(size)

    async def main() -> None:
        task = asyncio.ensure_future(s3dlio.put_async(store.uri(key), data, config=cfg))
        await store.until_in_flight()
        assert not task.done(), "the put finished before it could be cancelled"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_until(lambda: s3dlio.live_tasks() == 0, timeout=10.0), f"live tasks: {s3dlio.live_tasks()}"
    assert wait_until(lambda: store.pending_uploads() == [], timeout=5.0), store.pending_uploads()
    time.sleep(1.0)  # anything still running detached would land by now
    assert bytes(s3dlio.get(store.uri(key))) == b"previous version"
    assert store.raw_keys() == {key}
    assert store.pending_uploads() == []


# ---------------------------------------------------------------------------------------------
# upload / download
# ---------------------------------------------------------------------------------------------

TREE = {
    "a.bin": b"top",
    "empty": b"",
    "sub/a.bin": b"middle",
    "sub/deeper/a.bin": b"bottom",
    "sub/deeper/big.bin": bytes(range(256)) * 300,
}


@pytest.mark.parametrize("dest", ["tree/", "tree"], ids=["slash", "no-slash"])
def test_upload_download_tree(store: Store, tmp_path: Path, dest: str) -> None:
    """upload of a nested local tree stores one object per file under the prefix (with or without
    a trailing '/'), keys relative to the directory; download brings back the same tree."""
    src = tmp_path / "src"
    for name, data in TREE.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    assert s3dlio.upload(str(src), store.uri(dest)) == len(TREE)
    assert store.raw_keys() == {"tree/" + k for k in TREE}
    dst = tmp_path / "dst"
    assert s3dlio.download(store.uri("tree/"), str(dst)) == len(TREE)
    got = {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert got == TREE
