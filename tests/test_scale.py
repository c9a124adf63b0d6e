"""Beyond one client's usual load: 2,048 requests in flight from one process (with the common soft
limit of 1,024 open files, which s3dlio raises), and listings of many keys streamed with bounded
memory. The CI versions are small; `nox -s scale` runs the large ones (`-m scale`) and prints the
figures docs/benchmarks.md quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import s3dlio
from s3dlio.testing import LocalS3Server

HERE = Path(__file__).resolve().parent


def run_child(code: str, env: dict[str, str], timeout: float) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter (its own fd limit, RSS and counters); its last stdout
    line is a JSON report."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
    )
    assert child.returncode == 0, f"rc={child.returncode}\n{child.stdout[-2000:]}\n{child.stderr[-4000:]}"
    report: dict[str, object] = json.loads(child.stdout.strip().splitlines()[-1])
    print(report)
    return report


IN_FLIGHT = """
    import json, resource, sys, time
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the common default soft limit
    import s3dlio
    n, size, pool = int(sys.argv[1]) if len(sys.argv) > 1 else {n}, {size}, {pool}
    uris = [f"s3://{bucket}/fl/{{i:05d}}" for i in range(n)]
    s3dlio.put_many([(u, i.to_bytes(4, "little") * (size // 4)) for i, u in enumerate(uris)], max_concurrency=256)
    raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    ds = s3dlio.ObjectDataset.from_uris(uris)
    cfg = s3dlio.PoolConfig(pool_size=pool, readahead_batches=4, adaptive=False)
    s3dlio.stats(reset=True)
    t = time.perf_counter()
    seen = []
    for batch in s3dlio.DataLoader(ds, batch_size=512, pool=cfg, collate_fn=list):
        seen += [int.from_bytes(memoryview(b)[:4], "little") for b in batch]
    secs = time.perf_counter() - t
    st = s3dlio.stats()
    print(json.dumps({{"raised_soft_limit": raised, "samples": len(seen), "ok": seen == list(range(n)),
        "max_in_flight": st["max_in_flight"], "errors": sum(st["errors"].values()),
        "retries": st["retries"], "seconds": secs, "objects_per_s": n / secs,
        "mb_per_s": n * size / secs / 1e6}}))
"""


def in_flight_child(bucket: str, server: LocalS3Server, n: int, size: int, pool: int) -> dict[str, object]:
    code = IN_FLIGHT.format(bucket=bucket, n=n, size=size, pool=pool)
    return run_child(code, server.env(), timeout=300)


def test_2048_requests_in_flight_from_one_process(bucket: str, s3_server: LocalS3Server) -> None:
    """A loader with pool_size=2048 (fixed, not adaptive) in a process whose soft limit on open
    files was 1,024: the limit is raised at first use, thousands of requests are in flight at
    once, every object arrives in order with no error and no retry."""
    r = in_flight_child(bucket, s3_server, n=6144, size=16 << 10, pool=2048)
    assert r["raised_soft_limit"] >= 4096  # type: ignore[operator]
    assert r["ok"] and r["samples"] == 6144
    assert r["errors"] == 0 and not any(r["retries"].values())  # type: ignore[attr-defined]
    assert r["max_in_flight"] >= 1024, r  # type: ignore[operator]


def test_the_open_file_limit_is_left_alone_when_asked(bucket: str, s3_server: LocalS3Server) -> None:
    code = f"""
        import json, resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        import s3dlio
        s3dlio.list("s3://{bucket}/")
        print(json.dumps({{"soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}}))
    """
    assert run_child(code, {**s3_server.env(), "S3DLIO_RAISE_NOFILE": "0"}, timeout=60)["soft"] == 1024


@pytest.mark.scale
@pytest.mark.timeout(600)
def test_scale_2048_in_flight_throughput() -> None:
    """`nox -s scale`: 20,000 objects of 64 KiB through 2,048 requests in flight."""
    with LocalS3Server() as server:  # a server of its own: 1.3 GB written
        s3dlio.create_bucket("s3://scale-inflight", config=server.config())
        r = in_flight_child("scale-inflight", server, n=20_000, size=64 << 10, pool=2048)
    assert r["ok"] and r["errors"] == 0


# -------------------------------------------------------------------------------------------------
# Listing many keys
# -------------------------------------------------------------------------------------------------

LISTING = """
    import json, resource, time
    import s3dlio
    s3dlio.list("{prefix}nothing-here/")  # the runtime and client up before the baseline
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    count, last, ordered = 0, "", True
    for info in s3dlio.list_iter("{prefix}"):
        ordered &= info.uri > last
        last = info.uri
        count += 1
    secs = time.perf_counter() - t
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(json.dumps({{"keys": count, "ordered": ordered, "list_s": secs, "keys_per_s": count / secs,
        "rss_growth_mib": grew / 1024}}))
"""


def make_keys(prefix: str, n: int, config: s3dlio.StorageConfig | None = None) -> float:
    """``n`` empty objects under ``prefix``, 20,000 per put_many call; the seconds it took."""
    t = time.perf_counter()
    for lo in range(0, n, 20_000):
        batch = [(f"{prefix}k{i:07d}", b"") for i in range(lo, min(n, lo + 20_000))]
        s3dlio.put_many(batch, max_concurrency=256, config=config)
    return time.perf_counter() - t


def listing_child(server: LocalS3Server, prefix: str) -> dict[str, object]:
    """The listing in a fresh process: its peak RSS growth is the listing's alone."""
    return run_child(LISTING.format(prefix=prefix), server.env(), timeout=3600)


def test_listing_20k_keys_streams_in_bounded_memory(bucket: str, s3_server: LocalS3Server) -> None:
    make_keys(f"s3://{bucket}/many/", 20_000)
    r = listing_child(s3_server, f"s3://{bucket}/many/")
    assert r["keys"] == 20_000 and r["ordered"]
    assert r["rss_growth_mib"] < 32, r  # type: ignore[operator]


@pytest.mark.scale
@pytest.mark.timeout(1800)  # creating a million keys takes minutes
@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_scale_listing_many_keys(n: int) -> None:
    """`nox -s scale`: 100,000 and 1,000,000 keys listed by list_iter: keys/s and how far the
    peak RSS grew while listing (bounded: pages stream, nothing is accumulated)."""
    with LocalS3Server() as server:
        cfg = server.config()
        s3dlio.create_bucket("s3://scale-list", config=cfg)
        made = make_keys("s3://scale-list/", n, cfg)
        r = listing_child(server, "s3://scale-list/")
    print({"keys_created": n, "create_s": round(made, 1)})
    assert r["keys"] == n and r["ordered"]
    assert r["rss_growth_mib"] < 64, r  # type: ignore[operator]
