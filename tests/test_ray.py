"""s3dlio.ray on a local Ray cluster (``ray.init(num_cpus=2)``, started once for the module) against
the local S3 server: every object read exactly once with its bytes and URI, as many blocks as
asked, the schema of ``ray.data.read_binary_files``, a write round trip, and the errors."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import s3dlio
from helpers import fresh_bucket, require
from s3dlio.exceptions import InvalidConfigError, NotFoundError
from s3dlio.testing import LocalS3Server

ray = require("ray")
require("ray.data")

from s3dlio.ray import (  # noqa: E402
    S3dlioDatasource,
    _split_by_bytes,
    _windows,
    read_objects,
    write_objects,
)

pytestmark = [
    pytest.mark.timeout(120),
    # Ray Data's DataContext warns about its own deprecated settings as it copies them.
    pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*"),
]


def payload(i: int) -> bytes:
    """Distinct bytes per object; sizes vary from 100 B to about 12 KiB."""
    return (f"object-{i:04d}|".encode() * (7 + (i * 37) % 800))[: 100 + (i * 997) % 12000]


@pytest.fixture(scope="module")
def cluster(s3_server: LocalS3Server) -> Iterator[None]:
    """One local Ray cluster for the module (starting one takes seconds). The workers get the S3
    server's variables and the PYTHONPATH conftest.py set, so they import the s3dlio this process
    imports (the installed package in CI, the checkout when run from a source tree). ray.init
    exports RAY_* variables and installs a SIGTERM handler; both are put back afterwards, so the
    tests after this module see the process as it was."""
    env = {**s3_server.env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    saved_env, saved_sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)
    # Ray's temp dir (its sockets and logs) in /tmp: under nox, TMPDIR is inside the virtual
    # environment, where Ray's workers refuse to start ("temp_dir must not be child directory of
    # virtualenv root") and every task then waits for a worker forever.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    # ray.init puts the driver's current directory on every worker's sys.path: from the
    # repository root that is the source tree's s3dlio (no compiled _core), ahead of the
    # installed one. Started from the temp dir, the workers import what this process imports.
    here = os.getcwd()
    os.chdir(temp)
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": env},
            _temp_dir=temp,
        )
    finally:
        os.chdir(here)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        # A worker must start, or the module fails here with Ray's own account (never a hang).
        try:
            ray.get(ray.remote(lambda: os.getpid()).remote(), timeout=90)
        except Exception as e:
            logs = sorted(Path(temp).glob("session_*/logs/raylet.err"))
            tail = logs[-1].read_text()[-3000:] if logs else "(no raylet.err)"
            pytest.fail(f"no Ray worker started within 90 s: {e!r}\n{tail}")
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGTERM, saved_sigterm)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(cluster: None, s3_server: LocalS3Server) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A prefix of 40 objects with distinct contents, and what each URI holds."""
    with fresh_bucket("ray") as bucket:
        prefix = f"s3://{bucket}/data/"
        objects = {f"{prefix}{i:04d}.bin": payload(i) for i in range(40)}
        s3dlio.put_many(list(objects.items()))
        yield prefix, objects


def rows(ds: Any) -> list[dict[str, Any]]:
    return list(ds.iter_rows())


def check_once(got: list[dict[str, Any]], want: dict[str, bytes]) -> None:
    paths = [r["path"] for r in got]
    assert sorted(paths) == sorted(want), "every object exactly once"
    for r in got:
        assert bytes(r["bytes"]) == want[r["path"]], r["path"]


# --- without Ray workers: the splitting and windowing -------------------------------------------


def test_split_by_bytes_is_contiguous_balanced_and_never_empty() -> None:
    sizes = [10] * 100
    parts = _split_by_bytes(sizes, 4)
    assert parts == [(0, 25), (25, 50), (50, 75), (75, 100)]
    # Uneven sizes: byte totals close to even, every run non-empty, the runs cover everything once.
    sizes = [1000] + [1] * 99 + [500] * 4
    parts = _split_by_bytes(sizes, 5)
    assert len(parts) == 5
    assert parts[0][0] == 0 and parts[-1][1] == len(sizes)
    assert all(a < b for a, b in parts) and all(p[1] == q[0] for p, q in itertools.pairwise(parts))
    assert _split_by_bytes([5, 5], 8) == [(0, 1), (1, 2)], "at most one task per object"
    assert _split_by_bytes([0, 0, 0, 0], 2) == [(0, 2), (2, 4)], "all empty: even counts"
    assert _split_by_bytes([], 3) == []


def test_windows_bound_the_bytes_a_task_holds() -> None:
    assert list(_windows([40, 40, 40, 40, 40], 100)) == [(0, 2), (2, 4), (4, 5)]
    assert list(_windows([500, 1, 1], 100)) == [(0, 1), (1, 3)], "an object larger than a window is alone"
    assert list(_windows([None] * 600, 100)) == [(0, 256), (256, 512), (512, 600)]


def test_read_task_fetches_window_by_window_in_process(dataset: tuple[str, dict[str, bytes]]) -> None:
    """A read task run in this process: one table per window, the metadata matches the rows."""
    prefix, want = dataset
    infos = sorted((o for o in s3dlio.list(prefix)), key=lambda o: o.uri)
    source = S3dlioDatasource([o.uri for o in infos], [o.size for o in infos], window_bytes=20_000)
    tasks = source.get_read_tasks(3)
    assert len(tasks) == 3
    assert sum(t.metadata.num_rows for t in tasks) == len(want)
    assert source.estimate_inmemory_data_size() == sum(t.metadata.size_bytes for t in tasks)
    got = []
    for task in tasks:
        tables = list(task())
        runs = list(_windows([len(want[u]) for u in task.metadata.input_files], 20_000))
        assert len(tables) == len(runs) > 1
        assert sum(t.num_rows for t in tables) == task.metadata.num_rows
        assert sum(t.nbytes for t in tables) == task.metadata.size_bytes
        got += [r for t in tables for r in t.to_pylist()]
    check_once(got, want)


def test_import_s3dlio_does_not_import_ray() -> None:
    code = "import sys, s3dlio; s3dlio.get_many; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-P", "-c", code], check=True)  # -P: not the source tree


# --- on the Ray cluster -------------------------------------------------------------------------


def test_prefix_every_object_once_in_the_blocks_asked(dataset: tuple[str, dict[str, bytes]]) -> None:
    prefix, want = dataset
    ds = read_objects(prefix, override_num_blocks=4).materialize()
    assert ds.num_blocks() == 4
    assert ds.count() == len(want)
    check_once(rows(ds), want)
    # Each block is a contiguous run in key order (the order of the blocks is Ray's).
    runs = [b["path"].to_pylist() for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    assert sorted(p for run in runs for p in run) == sorted(want)
    assert all(run == sorted(run) for run in runs)


def test_default_is_two_read_tasks_per_cpu(dataset: tuple[str, dict[str, bytes]]) -> None:
    """Without override_num_blocks: two tasks per CPU of the cluster (num_cpus=2 here), not
    Ray's hundreds of tiny ones."""
    prefix, want = dataset
    ds = read_objects(prefix).materialize()
    assert ds.num_blocks() == min(4, len(want))
    check_once(rows(ds), want)


def test_uri_list_with_an_explicit_config(
    dataset: tuple[str, dict[str, bytes]], s3_server: LocalS3Server
) -> None:
    """A list of URIs (a subset, in the caller's order), credentials shipped in a pickled config."""
    _, want = dataset
    uris = sorted(want)[::3][::-1]
    ds = read_objects(uris, config=s3_server.config(), override_num_blocks=3, max_concurrency=4)
    ds = ds.materialize()
    assert ds.num_blocks() == 3
    check_once(rows(ds), {u: want[u] for u in uris})


def test_schema_matches_read_binary_files(dataset: tuple[str, dict[str, bytes]], tmp_path: Path) -> None:
    prefix, _ = dataset
    (tmp_path / "a.bin").write_bytes(b"abc")
    theirs = ray.data.read_binary_files(str(tmp_path), include_paths=True).schema()
    ours = read_objects(prefix, pattern="000*").schema()
    assert ours.names == theirs.names == ["bytes", "path"]
    assert ours.types == theirs.types
    without = read_objects(prefix, pattern="000*", include_paths=False)
    assert without.schema().names == ray.data.read_binary_files(str(tmp_path)).schema().names == ["bytes"]


def test_transform_runs_in_the_read_task(dataset: tuple[str, dict[str, bytes]]) -> None:
    prefix, want = dataset
    ds = read_objects(prefix, transform=lambda buf: {"n": len(buf), "head": bytes(memoryview(buf)[:11])})
    got = {r["path"]: (r["n"], r["head"]) for r in rows(ds)}
    assert got == {u: (len(b), b[:11]) for u, b in want.items()}


def test_write_round_trip(cluster: None, bucket: str) -> None:
    out = f"s3://{bucket}/out"
    ds = ray.data.range(60, override_num_blocks=3).map(lambda r: {"bytes": payload(r["id"])})
    result = write_objects(ds, out, max_concurrency=8)
    assert result == {"objects": 60, "bytes": sum(len(payload(i)) for i in range(60))}
    listed = s3dlio.list(out + "/")
    assert len(listed) == 60
    got = s3dlio.get_many([o.uri for o in listed])
    assert sorted(bytes(b) for b in got) == sorted(payload(i) for i in range(60))
    # Keys: `{task}-{index}` with each write task's rows numbered from 0.
    for o in listed:
        task, index = o.uri.rsplit("/", 1)[1].removesuffix(".bin").split("-")
        assert len(task) == len(index) == 6


def test_write_keys_from_a_column_and_read_back(cluster: None, bucket: str) -> None:
    items = [{"key": f"k/{i:03d}.txt", "text": f"value {i}"} for i in range(25)]
    out = f"s3://{bucket}/named/"
    result = write_objects(ray.data.from_items(items), out, name="key", column="text")
    assert result["objects"] == 25
    back = {r["path"]: bytes(r["bytes"]) for r in rows(read_objects(out))}
    assert back == {f"{out}{it['key']}": str(it["text"]).encode() for it in items}


def test_write_refuses_templates_that_could_collide(cluster: None, bucket: str) -> None:
    ds = ray.data.from_items([{"bytes": b"x"}])
    with pytest.raises(InvalidConfigError, match="both"):
        write_objects(ds, f"s3://{bucket}/x/", name="{index:06d}.bin")
    with pytest.raises(InvalidConfigError, match="no column 'nope'"):
        write_objects(ds, f"s3://{bucket}/x/", column="nope")
    assert s3dlio.list(f"s3://{bucket}/") == []


def test_missing_prefix_raises_on_the_driver(cluster: None, bucket: str) -> None:
    with pytest.raises(NotFoundError, match=f"s3://{bucket}/nothing/") as e:
        read_objects(f"s3://{bucket}/nothing/")
    assert e.value.uri == f"s3://{bucket}/nothing/"


def test_a_read_task_failure_names_the_uri(cluster: None, bucket: str) -> None:
    prefix = f"s3://{bucket}/gone/"
    s3dlio.put_many([(f"{prefix}{i}.bin", b"x" * 10) for i in range(6)])
    ds = read_objects(prefix, override_num_blocks=2)  # listed now
    s3dlio.delete(f"{prefix}4.bin")  # deleted before the read task runs
    with pytest.raises(Exception, match=f"{prefix}4.bin") as e:
        ds.materialize()
    # Ray's wrapper is also an instance of the error the task raised.
    assert isinstance(e.value, FileNotFoundError), type(e.value).__mro__


def test_docs_examples_run(cluster: None, bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of docs/ray.md runs, in order, on the module's Ray cluster against the
    local server, and prints what its comments say."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "ray.md"
    blocks = re.findall(r"^```python\n(.*?)^```\s*$", docs.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 3
    ns: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block.replace("s3://my-bucket", f"s3://{bucket}"), "docs/ray.md", "exec"), ns)  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "['bytes', 'path']",
        "100 4",
        f"s3://{bucket}/raw/000.txt b'sample 0'",
        "['n', 'path', 'text']",
        "890",
        "{'objects': 100, 'bytes': 890}",
        "b'sample 7'",
    ]
