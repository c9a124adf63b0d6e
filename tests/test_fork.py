"""Fork safety: after the parent has used s3dlio (so its runtime and clients exist), children
started with fork, forkserver and spawn each build their own runtime and read and write
correctly. A hang here is a failure, hence the per-test timeouts."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
from collections.abc import Iterator

import pytest

import s3dlio
from helpers import fresh_bucket

METHODS = ("fork", "forkserver", "spawn")
# Forking a process that has tokio threads is exactly what is under test.
pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")


@pytest.fixture(scope="module")
def objects(s3_server: object) -> Iterator[dict[str, str]]:
    """Eight objects in a module bucket: {uri: sha256}; read once by the parent."""
    with fresh_bucket("fork") as name:
        digests = {}
        for i in range(8):
            data = os.urandom(100_000 + i)
            uri = f"s3://{name}/obj{i}"
            s3dlio.put(uri, data)
            digests[uri] = hashlib.sha256(data).hexdigest()
        yield digests


@pytest.fixture
def parent_runtime(objects: dict[str, str]) -> int:
    """Make sure the parent's runtime exists (a real request) before any child starts."""
    uri, digest = next(iter(objects.items()))
    assert hashlib.sha256(s3dlio.get(uri)).hexdigest() == digest
    assert s3dlio._core._debug_runtime_pid() == os.getpid()
    return os.getpid()


# Top-level so that spawn/forkserver children can import them.
def child_digests(uris: list[str]) -> tuple[int, int, list[str]]:
    digests = [hashlib.sha256(b).hexdigest() for b in s3dlio.get_many(uris)]
    digests += [hashlib.sha256(s3dlio.get(u)).hexdigest() for u in uris[:2]]
    return os.getpid(), s3dlio._core._debug_runtime_pid(), digests


def child_write_read(uri: str) -> str:
    payload = f"written by {os.getpid()}".encode()
    s3dlio.put(uri, payload)
    assert bytes(s3dlio.get(uri)) == payload
    return payload.decode()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_pool_children_read_after_parent_used_s3dlio(
    method: str, objects: dict[str, str], parent_runtime: int
) -> None:
    """Pool(2) children read the right bytes, each on a runtime built in its own process."""
    uris = list(objects)
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(child_digests, [uris] * 4)
    pids = set()
    for pid, runtime_pid, digests in results:
        assert pid != parent_runtime
        assert runtime_pid == pid, "child used a runtime built in another process"
        assert digests == [objects[u] for u in uris] + [objects[u] for u in uris[:2]]
        pids.add(pid)
    assert len(pids) >= 1
    # The parent keeps working after its children.
    assert hashlib.sha256(s3dlio.get(uris[-1])).hexdigest() == objects[uris[-1]]
    assert s3dlio._core._debug_runtime_pid() == os.getpid()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", METHODS)
def test_process_children_write_after_parent_used_s3dlio(
    method: str, objects: dict[str, str], parent_runtime: int
) -> None:
    """Processes started with each method can put and get; the parent sees their writes."""
    base = next(iter(objects)).rsplit("/", 1)[0]
    ctx = mp.get_context(method)
    with ctx.Pool(1) as pool:
        written = pool.map(child_write_read, [f"{base}/child-{method}-{i}" for i in range(3)])
    for i, text in enumerate(written):
        assert bytes(s3dlio.get(f"{base}/child-{method}-{i}")).decode() == text


@pytest.mark.timeout(60)
def test_os_fork_child_reads(objects: dict[str, str], parent_runtime: int) -> None:
    """A bare os.fork() child (no multiprocessing) reads correctly on its own runtime."""
    uri, digest = next(iter(objects.items()))
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            ok = hashlib.sha256(s3dlio.get(uri)).hexdigest() == digest
            ok = ok and s3dlio._core._debug_runtime_pid() == os.getpid()
            code = 0 if ok else 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("os.fork() child hung in s3dlio.get")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
    assert hashlib.sha256(s3dlio.get(uri)).hexdigest() == digest  # the parent still works


@pytest.mark.timeout(60)
def test_fork_while_parent_has_requests_in_flight(objects: dict[str, str], parent_runtime: int) -> None:
    """Forking while another parent thread is in the middle of s3dlio calls still gives a
    working child (no inherited locks held by threads that do not exist in the child)."""
    import threading

    uris = list(objects)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            s3dlio.get_many(uris)

    t = threading.Thread(target=busy)
    t.start()
    try:
        time.sleep(0.1)
        with mp.get_context("fork").Pool(2) as pool:
            results = pool.map(child_digests, [uris] * 4)
    finally:
        stop.set()
        t.join()
    for pid, runtime_pid, digests in results:
        assert runtime_pid == pid
        assert digests[: len(uris)] == [objects[u] for u in uris]
