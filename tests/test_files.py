"""The streaming writer of ``s3dlio.open(uri, "wb")`` under trust tests: exact bytes and part
sizes for odd-sized writes, nothing published (and nothing left open) after an exception, garbage
collection, a cut connection or a corrupted part, and memory bounded by the window of parts. (Ctrl-C
during a streaming write: tests/test_ctrl_c.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB, require, wait_until
from s3dlio import exceptions as exc


def _payload(n: int, seed: int = 7) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _open_uploads(boto3_client, bucket: str) -> list[object]:  # type: ignore[no-untyped-def]
    return list(boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _no_uploads_left(boto3_client, bucket: str) -> bool:  # type: ignore[no-untyped-def]
    return wait_until(lambda: not _open_uploads(boto3_client, bucket), timeout=5)


def _write_then_fail(uri: str, data: bytes, opened: list[s3dlio.ObjectWriter]) -> None:
    with s3dlio.open(uri, "wb", part_size=5 * MiB) as f:
        opened.append(f)
        f.write(data)
        raise RuntimeError("boom")


def _write_odd_sizes(f: s3dlio.ObjectWriter, data: bytes) -> None:
    sizes = [1, 7, 3 * MiB + 1]
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        f.write(memoryview(data)[pos : pos + n])
        pos += n
        i += 1


@pytest.mark.slow
def test_odd_sized_writes_round_trip_in_full_parts(bucket: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """100 MiB in writes of 1 B, 7 B and 3 MiB + 1 B: the object is byte-exact, every part but
    the last has exactly the configured part size, and size/crc32c describe the object."""
    data = _payload(100 * MiB)
    uri = f"s3://{bucket}/odd.bin"
    with s3dlio.open(uri, "wb", part_size=8 * MiB) as f:
        _write_odd_sizes(f, data)
        assert f.tell() == len(data)
    assert f.size == len(data)
    assert f.crc32c == s3dlio.crc32c(data)
    assert f.parts == 13  # ceil(100 / 8)
    assert s3dlio.get(uri) == data
    sizes = [
        boto3_client.head_object(Bucket=bucket, Key="odd.bin", PartNumber=n)["ContentLength"]
        for n in range(1, f.parts + 1)
    ]
    assert sizes[:-1] == [8 * MiB] * 12, sizes
    assert sizes[-1] == len(data) - 12 * 8 * MiB


def test_odd_sized_writes_round_trip_on_every_backend(root: str) -> None:
    data = _payload(11 * MiB + 5)
    uri = root + "dir/odd.bin"
    with s3dlio.open(uri, "wb", part_size=5 * MiB) as f:
        _write_odd_sizes(f, data)
    # file:// is written in place (no parts); S3 and direct:// (O_DIRECT needs aligned parts) in parts.
    parts = 0 if root.startswith("file://") else 3
    assert (f.size, f.crc32c, f.parts) == (len(data), s3dlio.crc32c(data), parts)
    assert s3dlio.get(uri) == data
    assert s3dlio.stat(uri).size == len(data)


def test_below_one_part_is_a_single_put(root: str) -> None:
    uri = root + "small.bin"
    with s3dlio.open(uri, "wb") as f:
        f.write(b"abc")
        f.write(bytearray(b"def"))
    assert f.parts == 0 and f.size == 6
    assert s3dlio.get(uri) == b"abcdef"


@pytest.mark.parametrize("size", [3 * MiB, 12 * MiB], ids=["single-put", "multipart"])
def test_exception_inside_with_publishes_nothing(root: str, size: int, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """An exception inside ``with`` aborts: the previous version stays, byte for byte, and no
    multipart upload is left open (S3) and no temp file is left beside the object (local)."""
    uri = root + "dir/obj"
    s3dlio.put(uri, b"previous version")
    before = {o.uri for o in s3dlio.list(root)}
    opened: list[s3dlio.ObjectWriter] = []
    with pytest.raises(RuntimeError, match="boom"):
        _write_then_fail(uri, _payload(size), opened)
    assert opened[0].closed
    assert s3dlio.get(uri) == b"previous version"
    assert {o.uri for o in s3dlio.list(root)} == before
    if root.startswith("s3://"):
        assert _no_uploads_left(boto3_client, root[5:].split("/")[0])
    elif root.startswith("az://"):
        # Staged blocks are never visible; no blob exists only as uncommitted blocks either.
        blob = require("azure.storage.blob")
        container = blob.ContainerClient.from_connection_string(
            os.environ["AZURE_STORAGE_CONNECTION_STRING"], root[5:].split("/")[0]
        )
        assert {b.name for b in container.list_blobs(include=["uncommittedblobs"])} == {"dir/obj"}
    elif root.startswith("gs://"):
        # A large write's parts are temporary objects under .s3dlio-uploads/: none is left.
        uploads = root.split("/")[2]
        assert wait_until(lambda: not s3dlio.list(f"gs://{uploads}/.s3dlio-uploads/"), timeout=5)
    else:
        assert sorted(os.listdir(root.split("://", 1)[1] + "dir")) == ["obj"]
    assert wait_until(lambda: s3dlio.live_tasks() == 0)


def test_exception_before_any_write_leaves_no_object(root: str) -> None:
    uri = root + "never"
    with pytest.raises(KeyError), s3dlio.open(uri, "wb"):
        raise KeyError("x")
    assert not s3dlio.exists(uri)


def test_garbage_collection_without_close_aborts(bucket: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    import gc

    uri = f"s3://{bucket}/gc"
    s3dlio.put(uri, b"old")
    f = s3dlio.open(uri, "wb", part_size=5 * MiB)
    f.write(_payload(11 * MiB))  # two parts are uploading or uploaded
    del f
    gc.collect()
    assert _no_uploads_left(boto3_client, bucket)
    assert s3dlio.get(uri) == b"old"


def test_write_after_close_and_after_abort_is_a_value_error(root: str) -> None:
    f = s3dlio.open(root + "a", "wb")
    f.write(b"x")
    f.close()
    f.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        f.write(b"y")
    g = s3dlio.open(root + "b", "wb")
    g.abort()
    with pytest.raises(ValueError, match="closed"):
        g.write(b"y")
    with pytest.raises(ValueError, match="not been published"):
        _ = g.size
    assert s3dlio.get(root + "a") == b"x" and not s3dlio.exists(root + "b")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"part_size": 1}, "part_size"),
        ({"part_size": -1}, "part_size"),
        ({"max_parts_in_flight": 0}, "max_parts_in_flight"),
        ({"fsync": "yes"}, "fsync"),
        ({"readahead": 2}, "readahead"),
    ],
)
def test_bad_writer_options_are_named(root: str, kw: dict[str, object], match: str) -> None:
    with pytest.raises(exc.InvalidConfigError, match=match):
        s3dlio.open(root + "x", "wb", **kw)  # type: ignore[call-overload]


@pytest.mark.parametrize("mode", ["w", "r", "ab", "rb+", "x"])
def test_only_binary_read_or_write_modes(root: str, mode: str) -> None:
    with pytest.raises(exc.InvalidConfigError, match="mode"):
        s3dlio.open(root + "x", mode)


def test_a_cut_connection_during_a_part_is_retried(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """The proxy resets the connection once while part 2 is sent: the part is sent again and the
    object is exact."""
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=3)
    data = _payload(12 * MiB)
    proxy.set_mode("reset", match=r"[?&]partNumber=2[& ]", count=1)
    with s3dlio.open(f"s3://{bucket}/cut", "wb", part_size=5 * MiB, config=cfg) as f:
        f.write(data)
    assert proxy.faults_injected == 1
    assert s3dlio.get(f"s3://{bucket}/cut") == data


def test_a_part_that_keeps_failing_aborts_the_upload(
    bucket: str, s3_config, proxy: FaultProxy, boto3_client
) -> None:  # type: ignore[no-untyped-def]
    """Every attempt at part 2 is cut: the write fails with an error naming the object and the
    part, no object is published, and no upload is left open. Never a completed short object."""
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=2)
    uri = f"s3://{bucket}/cut"
    proxy.set_mode("reset", match=r"[?&]partNumber=2[& ]")
    with pytest.raises(exc.S3dlioError) as info, s3dlio.open(uri, "wb", part_size=5 * MiB, config=cfg) as f:
        f.write(_payload(16 * MiB))
    msg = str(info.value)
    assert uri in msg and "part 2" in msg, msg
    proxy.set_mode("pass")
    assert not s3dlio.exists(uri)
    assert _no_uploads_left(boto3_client, bucket)


def test_a_corrupted_part_is_refused_not_stored(
    bucket: str, s3_config, proxy: FaultProxy, boto3_client
) -> None:  # type: ignore[no-untyped-def]
    """One byte of part 2 is flipped on the wire: its CRC32C no longer matches, the server refuses
    it, the write fails clearly, and nothing is published."""
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=1)
    uri = f"s3://{bucket}/corrupt"
    proxy.set_mode("corrupt_body", match=r"[?&]partNumber=2[& ]")
    with (
        pytest.raises(exc.S3dlioError, match="part 2"),
        s3dlio.open(uri, "wb", part_size=5 * MiB, config=cfg) as f,
    ):
        f.write(_payload(12 * MiB))
    proxy.set_mode("pass")
    assert not s3dlio.exists(uri)
    assert _no_uploads_left(boto3_client, bucket)


RSS_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import s3dlio
    MiB = 1024 * 1024

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    chunk = np.random.default_rng(1).integers(0, 256, 16 * MiB, dtype=np.uint8)
    s3dlio.put(sys.argv[1] + ".warm", b"x")  # client, runtime and backend built before the baseline
    base = hwm()
    with s3dlio.open(sys.argv[1], "wb", part_size=8 * MiB, max_parts_in_flight=4) as f:
        for _ in range(128):  # 2 GiB
            f.write(chunk)
    print(f.size, hwm() - base, flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_peak_rss_writing_2_gib_stays_within_the_window(bucket: str) -> None:
    """2 GiB through a writer with 4 parts of 8 MiB in flight: the process's peak RSS grows by
    the window (32 MiB) plus a fixed allowance for the HTTP client's own buffers, never by
    anything proportional to the object."""
    uri = f"s3://{bucket}/big.bin"
    out = subprocess.run(
        [sys.executable, "-P", "-c", RSS_CHILD, uri], capture_output=True, text=True, timeout=230, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    size, grown = map(int, out.stdout.split())
    assert size == 2048 * MiB
    assert s3dlio.stat(uri).size == size
    window = 4 * 8 * MiB
    assert grown <= window * 1.1 + 32 * MiB, (
        f"peak RSS grew by {grown / MiB:.0f} MiB (window {window / MiB:.0f} MiB)"
    )
    s3dlio.delete(uri)


@pytest.mark.timeout(60)
def test_a_forked_child_leaves_the_parents_open_files_alone(bucket: str) -> None:
    """A child forked while a writer and a reader are open (a torch DataLoader worker) may drop
    them without hanging or touching the parent's upload; the parent then completes its write."""
    import gc

    uri = f"s3://{bucket}/forked"
    s3dlio.put(f"s3://{bucket}/src", _payload(12 * MiB))
    r = s3dlio.open(f"s3://{bucket}/src", readahead=2)
    r.read(10)
    w = s3dlio.open(uri, "wb", part_size=5 * MiB)
    w.write(_payload(7 * MiB))
    pid = os.fork()
    if pid == 0:  # the child: drop both, then prove s3dlio still works here
        code = 1
        try:
            del w, r
            gc.collect()
            s3dlio.put(f"s3://{bucket}/from-child", b"child")
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung dropping its copies of the parent's files")
    assert os.waitstatus_to_exitcode(status) == 0
    w.write(_payload(7 * MiB, seed=8))
    w.close()
    assert s3dlio.get(uri) == _payload(7 * MiB) + _payload(7 * MiB, seed=8)
    assert r.read(5) == _payload(12 * MiB)[10:15]
    assert s3dlio.get(f"s3://{bucket}/from-child") == b"child"
