"""Self-test of tests/faultproxy.py with boto3 as an independent client, so that a failing fault
test means s3dlio misbehaved, not the proxy."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from faultproxy import FaultProxy
from helpers import require

boto3 = require("boto3")  # a skip outside CI, a failure in CI (CI=true)
botocore = require("botocore")
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.config import Config  # noqa: E402

MiB = 1024 * 1024


def client(s3_server, endpoint: str, attempts: int = 5, read_timeout: float = 5):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
        config=Config(
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=1,
            read_timeout=read_timeout,
            s3={"addressing_style": "path"},
        ),
    )


@pytest.fixture
def bkt(boto3_client):  # type: ignore[no-untyped-def]
    name = f"proxy-{os.urandom(6).hex()}"
    boto3_client.create_bucket(Bucket=name)
    yield name
    for o in boto3_client.list_objects_v2(Bucket=name).get("Contents", []):
        boto3_client.delete_object(Bucket=name, Key=o["Key"])
    boto3_client.delete_bucket(Bucket=name)


def test_pass_mode_keeps_alive_and_forwards_everything(s3_server, proxy: FaultProxy, bkt: str) -> None:  # type: ignore[no-untyped-def]
    """Puts, gets, listings and a multipart upload (with Expect: 100-continue) pass unchanged,
    several requests per keep-alive connection."""
    c = client(s3_server, proxy.endpoint)
    data = os.urandom(3 * MiB + 7)
    for i in range(4):
        c.put_object(Bucket=bkt, Key=f"k{i}", Body=data)
    for i in range(4):
        assert c.get_object(Bucket=bkt, Key=f"k{i}")["Body"].read() == data
    assert c.list_objects_v2(Bucket=bkt)["KeyCount"] == 4
    assert c.head_object(Bucket=bkt, Key="k0")["ContentLength"] == len(data)
    big = os.urandom(11 * MiB)
    c.upload_fileobj(io.BytesIO(big), bkt, "big", Config=TransferConfig(multipart_threshold=5 * MiB))
    assert c.get_object(Bucket=bkt, Key="big")["Body"].read() == big
    assert proxy.requests_seen >= 15
    assert proxy.connections_seen < proxy.requests_seen  # connections were reused
    assert proxy.faults_injected == 0


def test_http503_then_pass_and_persistent(s3_server, proxy: FaultProxy, bkt: str) -> None:  # type: ignore[no-untyped-def]
    """http503 with count=2 fails two requests then forwards; without count it fails them all."""
    client(s3_server, proxy.endpoint).put_object(Bucket=bkt, Key="k", Body=b"v")
    proxy.set_mode("http503", count=2)
    assert (
        client(s3_server, proxy.endpoint, attempts=5).get_object(Bucket=bkt, Key="k")["Body"].read() == b"v"
    )
    assert proxy.faults_injected == 2
    proxy.set_mode("http500")
    with pytest.raises(botocore.exceptions.ClientError) as ei:
        client(s3_server, proxy.endpoint, attempts=2).get_object(Bucket=bkt, Key="k")
    assert ei.value.response["Error"]["Code"] == "InternalError"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_match_selects_requests(s3_server, proxy: FaultProxy, bkt: str, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """A fault limited by ``match`` hits only the matching request (here: part 2 of a multipart)."""
    proxy.set_mode("http500", match=r"[?&]partNumber=2[& ]")
    with pytest.raises(Exception, match="InternalError"):
        client(s3_server, proxy.endpoint, attempts=1).upload_fileobj(
            io.BytesIO(os.urandom(11 * MiB)), bkt, "mp", Config=TransferConfig(multipart_threshold=5 * MiB)
        )
    assert 1 <= proxy.faults_injected < proxy.requests_seen  # only part 2 (and its retries) failed
    assert boto3_client.list_multipart_uploads(Bucket=bkt).get("Uploads") is None  # boto3 aborted


@pytest.mark.parametrize("mode", ["blackhole", "stall_body"])
def test_silent_modes_make_clients_time_out(s3_server, proxy: FaultProxy, bkt: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    """blackhole never answers; stall_body sends headers and 64 KiB, then nothing: both end in a
    read timeout, while a body smaller than the stall budget passes whole."""
    c = client(s3_server, proxy.endpoint)
    c.put_object(Bucket=bkt, Key="big", Body=os.urandom(2 * MiB))
    c.put_object(Bucket=bkt, Key="small", Body=b"x" * 100)
    proxy.set_mode(mode, stall_after=64 * 1024)
    slow = client(s3_server, proxy.endpoint, attempts=1, read_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        slow.get_object(Bucket=bkt, Key="big")["Body"].read()
    assert time.monotonic() - t0 < 5
    if mode == "stall_body":
        assert slow.get_object(Bucket=bkt, Key="small")["Body"].read() == b"x" * 100


def test_reset_and_stop(s3_server, bkt: str) -> None:  # type: ignore[no-untyped-def]
    """reset closes connections with RST; stop() ends a hung request, closes every socket and
    joins every thread."""
    p = FaultProxy(s3_server.endpoint, mode="reset")
    # The RST lands on the request (ConnectionClosedError) or, on a loaded machine, already on the
    # connection attempt (EndpointConnectionError): both are the client seeing the reset.
    reset_seen = (botocore.exceptions.ConnectionClosedError, botocore.exceptions.EndpointConnectionError)
    with pytest.raises(reset_seen):
        client(s3_server, p.endpoint, attempts=1).head_bucket(Bucket=bkt)
    p.set_mode("blackhole")
    errors: list[BaseException] = []

    def hung() -> None:
        try:
            client(s3_server, p.endpoint, attempts=1, read_timeout=30).head_bucket(Bucket=bkt)
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=hung)
    t.start()
    deadline = time.monotonic() + 10
    while p.faults_injected < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    p.stop()
    t.join(timeout=10)
    assert time.monotonic() - t0 < 5 and not t.is_alive() and len(errors) == 1
    assert not p._accept_thread.is_alive() and not any(th.is_alive() for th in p._threads)
