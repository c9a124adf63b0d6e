"""Memory: the bytes a DataLoader holds are bounded by its read-ahead window (readahead batches x
batch size, plus pool_size objects in flight), whatever the consumer's speed. Measured as the
growth of peak RSS in a child process that iterates slowly over objects far larger in total than
the window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import s3dlio

MiB = 1024 * 1024
OBJ = 4 * MiB
N = 96  # 384 MiB in total

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import s3dlio

    root, batch, readahead, pool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ds = s3dlio.ObjectDataset.from_prefix(root)
    s3dlio.get(ds.uris[0])  # warm up the runtime and allocator
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loader = s3dlio.DataLoader(
        ds, batch_size=batch, pool=s3dlio.PoolConfig(pool_size=pool, readahead_batches=readahead)
    )
    seen = 0
    for b in loader:
        seen += b.shape[0]
        time.sleep(0.05)  # a slow consumer: the pool must not run ahead without bound
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seen": seen, "growth": peak - base}))
    """
)


@pytest.fixture(scope="module")
def big_objects(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("big")
    for i in range(N):
        s3dlio.put(f"file://{root}/{i:03d}.bin", os.urandom(OBJ))
    return f"file://{root}/"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("batch", "readahead", "pool"), [(2, 1, 4), (4, 2, 8)])
def test_peak_rss_is_bounded_by_the_prefetch_window(
    big_objects: str, batch: int, readahead: int, pool: int
) -> None:
    """Peak RSS growth while slowly iterating 384 MiB stays within the window: (readahead + 2)
    batches (buffered, being assembled, being collated) plus pool_size objects in flight plus the
    collated copy of one batch, with 32 MiB of slack for the allocator. Holding the dataset would
    need 384 MiB."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, big_objects, str(batch), str(readahead), str(pool)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["seen"] == N
    window_objects = (readahead + 2) * batch + pool + batch
    bound = window_objects * OBJ + 32 * MiB
    assert report["growth"] <= bound, (
        f"peak RSS grew {report['growth'] / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB "
        f"({window_objects} objects of {OBJ // MiB} MiB)"
    )
    assert bound < N * OBJ / 2, "the test must be able to tell a bounded loader from an unbounded one"
