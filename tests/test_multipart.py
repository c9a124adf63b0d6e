"""Large puts: multipart uploads with sizes that are not a multiple of the part size, and failed
multipart uploads that must be aborted (no object, no incomplete upload left behind).

boto3 is used only as an independent observer of the real server (ETag part counts, pending
multipart uploads)."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB
from s3dlio.exceptions import NotFoundError, S3dlioError, StorageIOError

PART = 5 * MiB


def payload(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def sha(data: object) -> str:
    return hashlib.sha256(memoryview(data)).hexdigest()  # type: ignore[arg-type]


@pytest.fixture
def mp_config(s3_config):  # type: ignore[no-untyped-def]
    return s3_config(part_size=PART, multipart_threshold=PART, max_concurrency=4)


@pytest.mark.parametrize(
    "size",
    [PART - 1, PART, PART + 1, 10 * MiB, 12 * MiB + 12345, 3 * PART - 7],
    ids=[
        "below-threshold",
        "exactly-one-part",
        "one-part-plus-1",
        "exactly-10MiB",
        "12MiB+12345",
        "3parts-minus-7",
    ],
)
def test_multipart_sizes_round_trip(bucket: str, mp_config, boto3_client, size: int) -> None:  # type: ignore[no-untyped-def]
    """Objects around and across part boundaries read back bit-identical; at or above the
    threshold the server holds a multipart object with ceil(size / part_size) parts."""
    uri = f"s3://{bucket}/mp/{size}"
    data = payload(size, seed=size)
    s3dlio.put(uri, data, config=mp_config)
    assert s3dlio.stat(uri, config=mp_config).size == size
    assert sha(s3dlio.get(uri, config=mp_config)) == sha(data)
    etag = boto3_client.head_object(Bucket=bucket, Key=f"mp/{size}")["ETag"].strip('"')
    if size >= PART:
        assert etag.endswith(f"-{math.ceil(size / PART)}"), etag
    else:
        assert "-" not in etag, etag
    assert boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_large_put_default_config(bucket: str) -> None:
    """With the default config (16 MiB threshold, 8 MiB parts) a 37 MiB + 3 put round-trips,
    and get_range reads across part boundaries."""
    uri = f"s3://{bucket}/big"
    data = payload(37 * MiB + 3, seed=1)
    s3dlio.put(uri, data)
    assert sha(s3dlio.get(uri)) == sha(data)
    off = 8 * MiB - 100
    assert bytes(s3dlio.get_range(uri, off, 200)) == data[off : off + 200].tobytes()


@pytest.mark.parametrize("scheme", ["file", "direct"])
def test_large_put_local_backends(scheme: str, tmp_path, request) -> None:  # type: ignore[no-untyped-def]
    """file:// and direct:// write and read a 12 MiB + 12345 object bit-identical."""
    base = request.getfixturevalue("disk_dir") if scheme == "direct" else str(tmp_path)
    uri = f"{scheme}://{base}/big.bin"
    data = payload(12 * MiB + 12345, seed=2)
    s3dlio.put(uri, data)
    assert os.path.getsize(f"{base}/big.bin") == data.size
    assert sha(s3dlio.get(uri)) == sha(data)


def assert_nothing_left(bucket: str, key: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFoundError):
        s3dlio.get(f"s3://{bucket}/{key}")
    assert s3dlio.exists(f"s3://{bucket}/{key}") is False
    uploads = boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"incomplete multipart uploads left behind: {uploads}"


@pytest.mark.parametrize(
    ("match", "what"),
    [
        (r"[?&]partNumber=2[& ]", "a part upload"),
        (r"^POST \S*[?&]uploadId=", "CompleteMultipartUpload"),
    ],
    ids=["part-fails", "complete-fails"],
)
def test_failed_multipart_is_aborted(  # type: ignore[no-untyped-def]
    bucket: str, s3_config, proxy: FaultProxy, boto3_client, match: str, what: str
) -> None:
    """When a part upload or the final CompleteMultipartUpload answers HTTP 500 (no retries), put
    raises StorageIOError naming the URI, and the upload is aborted: no object at the key and no
    incomplete upload left on the server."""
    cfg = s3_config(endpoint_url=proxy.endpoint, part_size=PART, multipart_threshold=PART, max_attempts=1)
    uri = f"s3://{bucket}/failing"
    proxy.set_mode("http500", match=match)
    with pytest.raises(S3dlioError) as ei:
        s3dlio.put(uri, payload(3 * PART + 1, seed=3), config=cfg)
    assert isinstance(ei.value, StorageIOError) and isinstance(ei.value, OSError), repr(ei.value)
    assert uri in str(ei.value)
    assert proxy.faults_injected >= 1, f"the fault on {what} never fired"
    proxy.set_mode("pass")
    assert_nothing_left(bucket, "failing", boto3_client)


def test_failed_multipart_does_not_replace_existing_object(  # type: ignore[no-untyped-def]
    bucket: str, s3_config, proxy: FaultProxy, boto3_client
) -> None:
    """A failed multipart overwrite leaves the previous version of the object intact."""
    uri = f"s3://{bucket}/keep"
    s3dlio.put(uri, b"old version")
    cfg = s3_config(endpoint_url=proxy.endpoint, part_size=PART, multipart_threshold=PART, max_attempts=1)
    proxy.set_mode("http500", match=r"[?&]partNumber=3[& ]")
    with pytest.raises(StorageIOError):
        s3dlio.put(uri, payload(4 * PART, seed=4), config=cfg)
    proxy.set_mode("pass")
    assert bytes(s3dlio.get(uri)) == b"old version"
    assert boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_multipart_retries_transient_part_failures(  # type: ignore[no-untyped-def]
    bucket: str, s3_config, proxy: FaultProxy, boto3_client
) -> None:
    """Two 503 SlowDown answers to a part are retried (max_attempts=5) and the upload completes."""
    cfg = s3_config(endpoint_url=proxy.endpoint, part_size=PART, multipart_threshold=PART, max_attempts=5)
    proxy.set_mode("http503", match=r"[?&]partNumber=2[& ]", count=2)
    data = payload(2 * PART + 99, seed=5)
    s3dlio.put(f"s3://{bucket}/retried", data, config=cfg)
    assert proxy.faults_injected == 2
    assert sha(s3dlio.get(f"s3://{bucket}/retried")) == sha(data)
    assert boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize(
    ("size", "match"),
    [(100_000, r"^PUT "), (3 * PART + 1, r"[?&]partNumber=2[& ]")],
    ids=["single-put", "multipart-part"],
)
def test_a_body_corrupted_on_the_wire_is_refused_never_stored(  # type: ignore[no-untyped-def]
    bucket: str, s3_config, proxy: FaultProxy, boto3_client, size: int, match: str
) -> None:
    """Every upload body carries its CRC32C: when the proxy flips one byte of a PUT body (or of one
    part's), the server refuses it (BadDigest) and put raises naming the URI. The previous version
    of the object stays, and no incomplete multipart upload is left. Uploads are not SHA-256
    payload-signed (UNSIGNED-PAYLOAD), so the checksum is what catches this."""
    uri = f"s3://{bucket}/guarded"
    s3dlio.put(uri, b"previous version")
    cfg = s3_config(endpoint_url=proxy.endpoint, part_size=PART, multipart_threshold=PART, max_attempts=1)
    proxy.set_mode("corrupt_body", match=match, count=1)
    with pytest.raises(S3dlioError) as ei:
        s3dlio.put(uri, payload(size, seed=5), config=cfg)
    assert uri in str(ei.value)
    assert proxy.faults_injected == 1
    proxy.set_mode("pass")
    assert bytes(s3dlio.get(uri)) == b"previous version"
    assert boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # Without the fault the same upload goes through, checksum included.
    s3dlio.put(uri, payload(size, seed=5), config=cfg)
    assert sha(s3dlio.get(uri)) == sha(payload(size, seed=5))
    head = boto3_client.head_object(Bucket=bucket, Key="guarded", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32C"), head
