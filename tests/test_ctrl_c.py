"""Ctrl-C: a child process blocked in s3dlio on a server that stopped answering gets a real SIGINT
and answers with KeyboardInterrupt within 0.5 s, leaving no s3dlio task running; and blocking
calls release the GIL so other Python threads keep running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB, wait_until
from s3dlio import exceptions as exc

# The child: prints STARTED right before the blocking call, then (on SIGINT) the monotonic time
# at which KeyboardInterrupt reached Python and the live task count once it has settled.
# CLOCK_MONOTONIC is system-wide on Linux, so parent and child times are comparable.
CHILD = textwrap.dedent(
    """
    import sys, time
    import s3dlio
    op, uri = sys.argv[1], sys.argv[2]
    MiB = 1024 * 1024
    cfg = s3dlio.StorageConfig(part_size=5 * MiB, multipart_threshold=5 * MiB)
    data = bytes(64 * MiB) if op == "put" else None
    print("STARTED", flush=True)
    try:
        if op == "get":
            s3dlio.get(uri)
        elif op == "get_many":
            s3dlio.get_many([uri] * 8)
        elif op == "list":
            s3dlio.list(uri)
        elif op == "put":
            s3dlio.put(uri, data, config=cfg)
        elif op == "open_write":  # a streaming write: blocks once its window of 2 parts is full
            with s3dlio.open(uri, "wb", part_size=5 * MiB, max_parts_in_flight=2) as f:
                for _ in range(64):
                    f.write(bytes(MiB))
        print("RETURNED", flush=True)
        sys.exit(3)
    except KeyboardInterrupt:
        caught = time.monotonic()
        print(f"INTERRUPTED {caught!r}", flush=True)
    except BaseException as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(4)
    deadline = time.monotonic() + 2.0
    while s3dlio.live_tasks() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"LIVE {s3dlio.live_tasks()}", flush=True)
    """
)


def run_and_interrupt(
    proxy: FaultProxy, op: str, uri: str, env: dict[str, str] | None = None
) -> dict[str, str]:
    """Run CHILD against the proxy, SIGINT it once its request is stuck; return its report.
    ``env``: the child's environment (default: this one, with S3 pointed at the proxy)."""
    if env is None:
        env = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint)
        env.pop("AWS_ENDPOINT_URL_S3", None)
    child = subprocess.Popen(
        # -P: import the installed s3dlio, not the source tree in the working directory.
        [sys.executable, "-P", "-c", CHILD, op, uri],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "STARTED", line + child.stderr.read()  # type: ignore[union-attr]
        assert wait_until(lambda: proxy.faults_injected >= 1, timeout=20), "the child's request never stalled"
        time.sleep(0.3)  # let the stall set in (headers / first body bytes / parts in flight)
        assert child.poll() is None, "child finished before it could be interrupted"
        sent = time.monotonic()
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = dict(ln.split(" ", 1) for ln in out.splitlines() if " " in ln)
    assert child.returncode == 0, f"rc={child.returncode} stdout={out!r} stderr={err[-2000:]!r}"
    assert "INTERRUPTED" in report, out
    report["latency"] = str(float(report["INTERRUPTED"]) - sent)
    return report


CASES = [
    ("get", "stall_body", {"stall_after": 64 * 1024}),
    ("get", "blackhole", {}),
    ("get_many", "blackhole", {}),
    ("list", "blackhole", {}),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("op", "mode", "kw"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sigint_interrupts_a_stuck_transfer(
    bucket: str, proxy: FaultProxy, op: str, mode: str, kw: dict[str, int]
) -> None:
    """SIGINT during a read from a silent or stalled server raises KeyboardInterrupt within
    0.5 s of the signal, and afterwards live_tasks() is 0 (nothing keeps running)."""
    uri = f"s3://{bucket}/obj"
    s3dlio.put(uri, os.urandom(8 * MiB))
    proxy.set_mode(mode, **kw)
    report = run_and_interrupt(proxy, op, uri if op != "list" else f"s3://{bucket}/")
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"] == "0", report


@pytest.mark.timeout(90)
def test_sigint_during_multipart_put_aborts_the_upload(bucket: str, proxy: FaultProxy, boto3_client) -> None:  # type: ignore[no-untyped-def]
    """SIGINT while one part of a 64 MiB multipart put hangs: KeyboardInterrupt within 0.5 s, no
    task left, and the multipart upload is aborted (no object, no pending upload)."""
    proxy.set_mode("blackhole", match=r"[?&]partNumber=3[& ]")
    report = run_and_interrupt(proxy, "put", f"s3://{bucket}/big")
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"] == "0", report
    assert not s3dlio.exists(f"s3://{bucket}/big")
    assert wait_until(
        lambda: not boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"), timeout=5
    ), boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.timeout(60)
def test_sigint_during_a_streaming_write_to_a_silent_server(
    bucket: str, proxy: FaultProxy, boto3_client
) -> None:  # type: ignore[no-untyped-def]
    """The server stops answering part uploads, the writer's window fills and ``write`` blocks: a
    real SIGINT raises KeyboardInterrupt within 0.5 s, the upload is aborted, nothing is left
    open, and the previous version of the key stays."""
    uri = f"s3://{bucket}/stuck"
    s3dlio.put(uri, b"previous")
    proxy.set_mode("blackhole", match=r"[?&]partNumber=")
    report = run_and_interrupt(proxy, "open_write", uri)
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"] == "0", report
    proxy.set_mode("pass")
    assert s3dlio.get(uri) == b"previous"
    assert wait_until(
        lambda: not boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"), timeout=5
    ), boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.timeout(60)
def test_blocking_call_releases_the_gil(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """Another Python thread keeps running while the main thread is blocked in s3dlio.get."""
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=1.0, max_attempts=1)
    count = 0
    stop = threading.Event()

    def counter() -> None:
        nonlocal count
        while not stop.is_set():
            count += 1

    t = threading.Thread(target=counter)
    t.start()
    try:
        time.sleep(0.05)
        start = count
        time.sleep(0.3)  # baseline: the main thread idles with the GIL released
        rate = (count - start) / 0.3
        before = count
        t0 = time.monotonic()
        with pytest.raises(exc.StorageTimeoutError):
            s3dlio.get(f"s3://{bucket}/k", config=cfg)
        during = count - before
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        t.join()
    assert elapsed >= 0.5  # the call really blocked
    # With the GIL held the counter would stall after one switch interval (5 ms).
    assert during > 0.2 * rate * elapsed, f"counter: {during} during the call, baseline {rate:.0f}/s"


@pytest.mark.timeout(60)
def test_blocking_call_in_a_worker_thread_can_finish(bucket: str, s3_config, proxy: FaultProxy) -> None:  # type: ignore[no-untyped-def]
    """A blocking call made off the main thread (where signals are not checked) still ends by its
    own timeout and raises there, instead of hanging."""
    proxy.set_mode("blackhole")
    cfg = s3_config(endpoint_url=proxy.endpoint, read_timeout=0.5, max_attempts=1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            s3dlio.get(f"s3://{bucket}/k", config=cfg)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], exc.StorageTimeoutError), errors
