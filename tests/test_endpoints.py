"""One store behind several endpoints: two real TCP proxies in front of the local S3 server count
what reaches each endpoint. Round robin splits the requests, least-outstanding avoids a slow
endpoint, an endpoint that refuses connections is skipped (reads, writes, listings and deletes all
still succeed), every endpoint has its own counters in s3dlio.stats(), and bad settings are
refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import s3dlio
from faultproxy import FaultProxy
from s3dlio.exceptions import InvalidConfigError
from s3dlio.testing import LocalS3Server, free_port

N = 60


@pytest.fixture
def pair(s3_server: LocalS3Server) -> Iterator[tuple[FaultProxy, FaultProxy]]:
    with FaultProxy(s3_server.endpoint) as a, FaultProxy(s3_server.endpoint) as b:
        yield a, b


@pytest.fixture
def objects(bucket: str) -> list[str]:
    uris = [f"s3://{bucket}/ep/{i:03d}" for i in range(N)]
    s3dlio.put_many([(u, bytes([i]) * 1000) for i, u in enumerate(uris)])
    return uris


def test_round_robin_splits_requests_between_endpoints(
    s3_config, pair: tuple[FaultProxy, FaultProxy], objects: list[str]
) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    cfg = s3_config(endpoint_url=[a.endpoint, b.endpoint])
    assert cfg.endpoint_url == f"{a.endpoint},{b.endpoint}"
    s3dlio.stats(reset=True)
    bufs = s3dlio.get_many(objects, max_concurrency=8, config=cfg)
    assert [bytes(x) for x in bufs] == [bytes([i]) * 1000 for i in range(N)]
    assert a.requests_seen + b.requests_seen == N
    assert abs(a.requests_seen - b.requests_seen) <= 2, (a.requests_seen, b.requests_seen)
    eps = s3dlio.stats()["endpoints"]
    assert eps[a.endpoint]["requests"] == a.requests_seen and eps[b.endpoint]["requests"] == b.requests_seen
    assert eps[a.endpoint]["errors"] == 0 and eps[a.endpoint]["in_flight"] == 0


def fetch_with_threads(uris: list[str], cfg: s3dlio.StorageConfig, threads: int) -> dict[str, bytes]:
    """Independent requests (no head-of-line blocking as in get_many's in-order window): each
    thread takes the next URI as soon as its previous read is done."""
    todo = list(uris)
    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                uri = todo.pop()
            data = bytes(s3dlio.get(uri, config=cfg))
            with lock:
                got[uri] = data

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return got


@pytest.mark.parametrize("policy", ["least_outstanding", "round_robin"])
def test_least_outstanding_avoids_a_slow_endpoint(
    s3_config, pair: tuple[FaultProxy, FaultProxy], bucket: str, policy: str
) -> None:  # type: ignore[no-untyped-def]
    """Endpoint a relays bodies at 512 KiB/s (each 64 KiB object takes 1/8 s there), b at full
    speed, 4 readers: least_outstanding sends a only what finds b busier, round robin half."""
    a, b = pair
    uris = [f"s3://{bucket}/slow/{i:02d}" for i in range(32)]
    s3dlio.put_many([(u, bytes([i]) * (64 << 10)) for i, u in enumerate(uris)])
    a.set_mode("slow_body", rate=512 << 10)
    cfg = s3_config(endpoint_url=[a.endpoint, b.endpoint], endpoint_policy=policy)
    got = fetch_with_threads(uris, cfg, threads=4)
    assert all(got[u] == bytes([i]) * (64 << 10) for i, u in enumerate(uris))
    assert a.requests_seen + b.requests_seen == 32
    if policy == "round_robin":
        assert a.requests_seen == 16, (a.requests_seen, b.requests_seen)
    else:
        assert a.requests_seen <= 8, (a.requests_seen, b.requests_seen)


def test_an_endpoint_refusing_connections_is_skipped(
    s3_config, s3_server: LocalS3Server, bucket: str
) -> None:  # type: ignore[no-untyped-def]
    """The first endpoint is a closed port: gets, puts (multipart too), listings, stats and
    deletes all succeed through the second; the dead one is marked down (and counted) instead
    of being tried by every request."""
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = s3_config(endpoint_url=[dead, s3_server.endpoint], max_attempts=2)
    s3dlio.stats(reset=True)
    for i in range(10):
        s3dlio.put(f"s3://{bucket}/fo/{i}", b"x" * i, config=cfg)
    big = bytes(range(256)) * (24 << 12)  # 24 MiB: a multipart upload
    s3dlio.put(f"s3://{bucket}/fo/big", big, config=cfg)
    got = s3dlio.get_many([f"s3://{bucket}/fo/{i}" for i in range(10)], config=cfg)
    assert [bytes(x) for x in got] == [b"x" * i for i in range(10)]
    assert bytes(s3dlio.get(f"s3://{bucket}/fo/big", config=cfg)) == big
    assert len(s3dlio.list(f"s3://{bucket}/fo/", config=cfg)) == 11
    assert s3dlio.stat(f"s3://{bucket}/fo/big", config=cfg).size == len(big)
    assert s3dlio.delete_prefix(f"s3://{bucket}/fo/", config=cfg) == 11
    eps = s3dlio.stats()["endpoints"]
    assert eps[dead]["downs"] >= 1 and eps[dead]["errors"] >= 1 and eps[dead]["down"]
    assert eps[dead]["requests"] <= 3, eps[dead]  # skipped while down, not retried by each request
    assert eps[s3_server.endpoint]["errors"] == 0 and eps[s3_server.endpoint]["requests"] >= 20


def test_every_endpoint_down_is_a_clear_error(s3_config, bucket: str) -> None:  # type: ignore[no-untyped-def]
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    cfg = s3_config(endpoint_url=dead, max_attempts=2)
    with pytest.raises(s3dlio.exceptions.StorageIOError) as ei:
        s3dlio.get(f"s3://{bucket}/k", config=cfg)
    assert f"s3://{bucket}/k" in str(ei.value)
    assert "gave up after 2 attempts" in str(ei.value)


def test_bad_endpoint_settings_are_refused() -> None:
    with pytest.raises(InvalidConfigError, match="endpoint_policy"):
        s3dlio.StorageConfig(endpoint_url="http://a:1", endpoint_policy="random")
    with pytest.raises(InvalidConfigError, match="http:// or https://"):
        s3dlio.StorageConfig(endpoint_url=["http://a:1", "ftp://b:2"])
    with pytest.raises(InvalidConfigError, match="must not be empty"):
        s3dlio.StorageConfig(endpoint_url=" , ")
    with pytest.raises(InvalidConfigError, match="list of URLs"):
        s3dlio.StorageConfig(endpoint_url=["http://a:1", 3])  # type: ignore[list-item]
    cfg = s3dlio.StorageConfig(endpoint_url=("http://a:1", "http://b:2"), endpoint_policy="least_outstanding")
    assert cfg.native.to_dict()["endpoint_url"] == "http://a:1,http://b:2"
