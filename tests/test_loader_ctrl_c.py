"""Ctrl-C while iterating an s3dlio.DataLoader: a child process gets a real SIGINT and answers with
KeyboardInterrupt within 0.5 s, leaves no s3dlio task running and exits without hanging, whether
it is waiting on a server that stopped answering or on its own worker threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from faultproxy import FaultProxy
from helpers import wait_until, write_indexed

N = 200

# The child iterates a DataLoader over s3://<bucket>/NNNNN.bin through the proxy (AWS_ENDPOINT_URL).
# It prints STARTED before iterating and BATCH after each batch; on SIGINT, the monotonic time at
# which KeyboardInterrupt reached it, then the live task count once that has settled, then the
# s3dlio worker threads still alive. CLOCK_MONOTONIC is system-wide on Linux, so parent and child
# times compare.
CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import s3dlio
    bucket, n, num_workers, sleep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

    def transform(buf):
        time.sleep(sleep)
        return len(buf)

    uris = [f"s3://{bucket}/{i:05d}.bin" for i in range(n)]
    ds = s3dlio.ObjectDataset.from_uris(uris, transform=transform)
    dl = s3dlio.DataLoader(ds, batch_size=4, num_workers=num_workers)
    print("STARTED", flush=True)
    try:
        for _ in dl:
            print("BATCH x", flush=True)
        print("RETURNED x", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        caught = time.monotonic()
        print(f"INTERRUPTED {caught!r}", flush=True)
    except BaseException as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(4)
    deadline = time.monotonic() + 2.0
    while (s3dlio.live_tasks() or dl.live_tasks()) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"LIVE {s3dlio.live_tasks()}", flush=True)
    print(f"LOADER_LIVE {dl.live_tasks()}", flush=True)
    """
)


def _child_env(proxy: FaultProxy) -> dict[str, str]:
    env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    # -P keeps the working directory off sys.path; conftest's PYTHONPATH makes the child import the
    # same s3dlio as this process (the installed package, or the checkout).
    return env


def _write_dataset(bucket: str, n: int = N) -> None:
    write_indexed(f"s3://{bucket}/", n)


def run_and_interrupt(
    proxy: FaultProxy, bucket: str, *, num_workers: int, sleep: float, ready: str
) -> tuple[dict[str, str], int]:
    """Run CHILD, wait until it is ``ready`` ("stalled": its requests hang in the proxy; "batch":
    it has received a batch), give it 0.3 s more, SIGINT it; return its report and batch count."""
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD, bucket, str(N), str(num_workers), str(sleep)],
        env=_child_env(proxy),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        assert line.strip() == "STARTED", line + child.stderr.read()
        if ready == "stalled":
            assert wait_until(lambda: proxy.faults_injected >= 1, timeout=20), "no request ever stalled"
        else:
            line = child.stdout.readline()
            assert line.startswith("BATCH"), line + child.stderr.read()
        time.sleep(0.3)
        assert child.poll() is None, "child finished before it could be interrupted"
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=15)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = out.splitlines()
    report = dict(ln.split(" ", 1) for ln in lines if " " in ln and not ln.startswith("BATCH"))
    assert child.returncode == 0, f"rc={child.returncode} stdout={out[-2000:]!r} stderr={err[-3000:]!r}"
    assert "INTERRUPTED" in report, out
    report["latency"] = str(float(report["INTERRUPTED"]) - sent)
    return report, sum(ln.startswith("BATCH") for ln in lines)


@pytest.mark.timeout(90)
def test_sigint_while_the_server_is_silent(bucket: str, proxy: FaultProxy) -> None:
    """A child iterating a DataLoader whose requests hang (proxy in blackhole mode after the data
    was written) gets SIGINT: KeyboardInterrupt within 0.5 s, no task left alive (process-wide
    and in the loader), and a clean exit."""
    _write_dataset(bucket)
    proxy.set_mode("blackhole")
    report, batches = run_and_interrupt(proxy, bucket, num_workers=0, sleep=0.0, ready="stalled")
    assert batches == 0, report
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"] == "0" and report["LOADER_LIVE"] == "0", report


@pytest.mark.timeout(90)
def test_sigint_while_waiting_on_slow_worker_threads(bucket: str, proxy: FaultProxy) -> None:
    """With a healthy server but a slow transform on num_workers=2 threads, SIGINT during
    iteration raises KeyboardInterrupt within 0.5 s, no task is left alive, and the child exits
    instead of hanging on its worker threads."""
    _write_dataset(bucket)
    report, batches = run_and_interrupt(proxy, bucket, num_workers=2, sleep=0.05, ready="batch")
    assert 1 <= batches < N // 4, report
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"] == "0" and report["LOADER_LIVE"] == "0", report
