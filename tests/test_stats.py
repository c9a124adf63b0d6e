"""``s3dlio.stats()``: the core's transfer counters, read where the work happens, over every API."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import s3dlio
from faultproxy import FaultProxy
from s3dlio import exceptions as exc

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _zero() -> None:
    s3dlio.stats(reset=True)


def test_counts_puts_gets_lists_and_deletes_on_s3(bucket: str) -> None:
    uris = [f"s3://{bucket}/d/{i}" for i in range(10)]
    s3dlio.put_many([(u, b"x" * 1000) for u in uris])
    got = s3dlio.get_many(uris, max_concurrency=10)
    assert [len(b) for b in got] == [1000] * 10
    assert len(s3dlio.list(f"s3://{bucket}/d/")) == 10
    s3dlio.delete_prefix(f"s3://{bucket}/d/")
    s = s3dlio.stats()
    assert (s["bytes_written"], s["objects_written"]) == (10_000, 10)
    assert (s["bytes_read"], s["objects_read"]) == (10_000, 10)
    assert s["objects_deleted"] == 10
    assert s["keys_listed"] >= 10  # the delete lists too
    assert s["ops"]["get"]["requests"] == 10 and s["ops"]["get"]["errors"] == 0
    assert s["ops"]["put"]["requests"] == 10
    assert s["ops"]["list"]["requests"] >= 2
    assert s["in_flight"] == 0 and 1 <= s["max_in_flight"] <= 10
    assert s["requests"] == sum(o["requests"] for o in s["ops"].values())
    lat = s["ops"]["get"]["latency_ms"]
    assert lat["count"] == 10 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    ttfb = s["ops"]["get"]["ttfb_ms"]
    assert ttfb["count"] == 10 and ttfb["p99"] <= lat["max"]


def test_a_split_read_counts_its_bytes_and_one_object(bucket: str) -> None:
    uri = f"s3://{bucket}/big"
    data = os.urandom(9 * MiB + 5)
    s3dlio.put(uri, data)
    s3dlio.stats(reset=True)
    engine = s3dlio.RangeEngineConfig(chunk_size=MiB, min_split_size=2 * MiB)
    assert bytes(s3dlio.get(uri, range_engine=engine)) == data
    s = s3dlio.stats()
    assert s["bytes_read"] == len(data) and s["objects_read"] == 1
    assert s["ops"]["get"]["requests"] == 10  # one GET per MiB


def test_streamed_writes_and_reads_count_as_they_go(tmp_path: os.PathLike[str], bucket: str) -> None:
    for uri in (f"file://{tmp_path}/f", f"s3://{bucket}/f"):
        s3dlio.stats(reset=True)
        with s3dlio.open(uri, "wb") as w:
            for _ in range(3):
                w.write(b"y" * MiB)
        with s3dlio.open(uri, "rb") as r:
            assert len(r.read()) == 3 * MiB
        s = s3dlio.stats()
        assert s["bytes_written"] == 3 * MiB and s["objects_written"] == 1, uri
        assert s["bytes_read"] == 3 * MiB, uri


def test_errors_by_cause(bucket: str) -> None:
    with pytest.raises(exc.NotFoundError):
        s3dlio.get(f"s3://{bucket}/missing")
    s = s3dlio.stats()
    assert s["errors"]["not_found"] == 1 and s["ops"]["get"]["errors"] == 1
    assert sum(s["errors"].values()) == 1 and sum(s["retries"].values()) == 0


def test_retries_are_counted_by_cause(
    bucket: str, proxy: FaultProxy, s3_config: Callable[..., s3dlio.StorageConfig]
) -> None:
    """Two 503s then a served GET: two throttling retries, no error, one request."""
    s3dlio.put(f"s3://{bucket}/k", b"z" * 100)
    cfg = s3_config(endpoint_url=proxy.endpoint, max_attempts=5, initial_backoff=0.01)
    proxy.set_mode("http503", count=2, match="^GET ")
    s3dlio.stats(reset=True)
    assert bytes(s3dlio.get(f"s3://{bucket}/k", config=cfg)) == b"z" * 100
    s = s3dlio.stats()
    assert s["retries"]["throttled"] == 2
    assert s["ops"]["get"]["requests"] == 1 and s["ops"]["get"]["errors"] == 0
    assert s["ops"]["get"]["ttfb_ms"]["count"] == 1  # only the attempt that got an answer


def test_reset_brackets_an_interval(tmp_path: os.PathLike[str]) -> None:
    s3dlio.put(f"file://{tmp_path}/a", b"1234")
    first = s3dlio.stats(reset=True)
    assert first["bytes_written"] == 4
    assert s3dlio.stats()["bytes_written"] == 0
    s3dlio.get(f"file://{tmp_path}/a")
    assert s3dlio.stats()["bytes_read"] == 4


def _child_stats(q: mp.Queue[dict[str, int]]) -> None:
    q.put({"bytes_written": s3dlio.stats()["bytes_written"]})


def test_a_forked_child_starts_from_zero(tmp_path: os.PathLike[str]) -> None:
    s3dlio.put(f"file://{tmp_path}/a", b"x" * 100)
    assert s3dlio.stats()["bytes_written"] == 100
    ctx = mp.get_context("fork")
    q: mp.Queue[dict[str, int]] = ctx.Queue()
    p = ctx.Process(target=_child_stats, args=(q,))
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    assert got == {"bytes_written": 0}


def test_the_oplog_has_one_line_per_request_and_no_secret(
    bucket: str, tmp_path: os.PathLike[str], s3_server: object, proxy: FaultProxy
) -> None:
    import json

    log = f"{tmp_path}/ops.jsonl"
    assert s3dlio.oplog(log) is None
    try:
        s3dlio.put(f"s3://{bucket}/a", b"x" * 10)
        s3dlio.get_range(f"s3://{bucket}/a", 2, 3)
        with pytest.raises(exc.NotFoundError):
            s3dlio.get(f"s3://{bucket}/missing")
        cfg = s3dlio.StorageConfig(endpoint_url=proxy.endpoint, initial_backoff=0.01)
        proxy.set_mode("http503", count=2, match="^GET ")
        s3dlio.get(f"s3://{bucket}/a", config=cfg)
    finally:
        assert s3dlio.oplog(None) == log
    s3dlio.put(f"s3://{bucket}/after", b"y")  # not logged
    text = Path(log).read_text()
    lines = [json.loads(ln) for ln in text.splitlines()]
    ops = [(r["op"], r["uri"].rsplit("/", 1)[1], r["status"]) for r in lines]
    assert ops == [
        ("put", "a", "ok"),
        ("get", "a", "ok"),
        ("get", "missing", "not_found"),
        ("get", "a", "ok"),
    ]
    put, rng, missing, retried = lines
    assert put["bytes"] == 10 and put["range"] is None and put["pid"] == os.getpid()
    assert rng["range"] == [2, 3] and rng["bytes"] == 3 and rng["attempts"] == 1
    assert missing["http_status"] == 404 and "missing" in missing["error"]
    assert retried["attempts"] == 3 and retried["bytes"] == 10
    assert all(r["latency_ms"] >= 0 and r["t"] > 1.7e9 for r in lines)
    for secret in (s3_server.secret_key, s3_server.access_key, "Signature", "Authorization"):  # type: ignore[attr-defined]
        assert secret not in text


def test_the_oplog_from_the_environment_in_a_child(bucket: str, tmp_path: os.PathLike[str]) -> None:
    import json
    import subprocess
    import sys

    log = f"{tmp_path}/env.jsonl"
    code = f"import s3dlio; s3dlio.put('s3://{bucket}/e', b'12'); s3dlio.get('s3://{bucket}/e')"
    subprocess.run(
        [sys.executable, "-P", "-c", code], env=dict(os.environ, S3DLIO_OPLOG=log), check=True, timeout=60
    )
    assert [json.loads(ln)["op"] for ln in Path(log).read_text().splitlines()] == ["put", "get"]
    with pytest.raises(exc.InvalidConfigError, match="op-log"):
        s3dlio.oplog(f"{tmp_path}/no/such/dir/x.jsonl")


def test_rotating_credentials_do_not_grow_the_client_cache(bucket: str, s3_server: object) -> None:
    """A job that builds a new StorageConfig for every call (as one passing freshly rotated keys in
    each would; here 100 configs that each need a client of their own) keeps at most 64 clients
    and backends cached."""
    for i in range(100):
        cfg = s3dlio.StorageConfig(
            endpoint_url=s3_server.endpoint,  # type: ignore[attr-defined]
            access_key_id=s3_server.access_key,  # type: ignore[attr-defined]
            secret_access_key=s3_server.secret_key,  # type: ignore[attr-defined]
            read_timeout=30 + i,  # a new client each time, as a new token would make
        )
        assert s3dlio.exists(f"s3://{bucket}/none-{i}", config=cfg) is False
    backends, clients = s3dlio._core._debug_cache_sizes()
    assert backends <= 64 and clients <= 64, (backends, clients)
    assert s3dlio.exists(f"s3://{bucket}/none", config=cfg) is False  # the newest still works
