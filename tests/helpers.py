"""Small helpers shared by the tests (importable from child processes too)."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

import s3dlio

MiB = 1024 * 1024


def in_ci() -> bool:
    """True when the environment variable ``CI`` is ``true`` (CI services set it; ``nox -s ci`` sets it
    for pytest, since that session installs every optional framework)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(module_name: str) -> ModuleType:
    """Import an optional module a test needs (torch, jax, tensorflow, keras, boto3, ...).

    Outside CI a missing module skips the test (or the whole test module, at module level), as
    ``pytest.importorskip`` does. In CI (``CI=true``) it is a failure: the ImportError propagates,
    so a suite whose framework failed to install errors out instead of silently vanishing."""
    __tracebackhide__ = True  # report the skip or failure at the caller's line
    if not in_ci():
        return pytest.importorskip(module_name)
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(
            f"CI=true and {module_name!r} cannot be imported (in CI a missing framework is a failure): {e}"
        ) from e


def unique_bucket_name(tag: str = "t") -> str:
    return f"{tag}-{uuid.uuid4().hex[:16]}"


@contextlib.contextmanager
def fresh_bucket(tag: str = "t", scheme: str = "s3") -> Iterator[str]:
    """Create a uniquely named bucket (an Azure container for ``az``) with s3dlio; empty and
    delete it afterwards (errors ignored)."""
    name = unique_bucket_name(tag)
    s3dlio.create_bucket(f"{scheme}://{name}")
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            s3dlio.delete_prefix(f"{scheme}://{name}/")
        with contextlib.suppress(Exception):
            s3dlio.delete_bucket(f"{scheme}://{name}")


def fs_type(path: str | os.PathLike[str]) -> str:
    """Filesystem type of the mount holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def accepts_o_direct(directory: str) -> bool:
    """True when a file in ``directory`` can be opened with O_DIRECT."""
    probe = os.path.join(directory, f".odirect-probe-{uuid.uuid4().hex}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return hasattr(os, "O_DIRECT")


def rel(info_uri: str, prefix: str) -> str:
    """The part of a listed URI below ``prefix``, without a trailing ``/`` (directories)."""
    assert info_uri.startswith(prefix), f"{info_uri!r} is not under {prefix!r}"
    return info_uri[len(prefix) :].rstrip("/")


def wait_until(pred: Callable[[], bool], timeout: float = 2.0, step: float = 0.02) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return bool(pred())
        time.sleep(step)


def indexed_payload(i: int, size: int = 64) -> bytes:
    """Object content that encodes its index: 8 little-endian bytes, then padding."""
    return i.to_bytes(8, "little") + bytes([i % 251]) * (size - 8)


def write_indexed(prefix: str, n: int, size: int = 64) -> list[str]:
    """Write objects 00000..n-1 under ``prefix`` (any scheme), each encoding its index."""
    from concurrent.futures import ThreadPoolExecutor

    uris = [f"{prefix}{i:05d}.bin" for i in range(n)]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda iu: s3dlio.put(iu[1], indexed_payload(iu[0], size)), enumerate(uris)))
    return uris


def index_of(buf: s3dlio.Buffer) -> int:
    """The index encoded by :func:`indexed_payload` (a picklable transform for worker processes)."""
    return int.from_bytes(bytes(memoryview(buf)[:8]), "little")


def regression_sample(buf: s3dlio.Buffer) -> tuple[object, object]:
    """(features, target) tensors from an object of 5 float32s (a picklable transform)."""
    import numpy as np
    import torch

    v = np.frombuffer(buf, dtype=np.float32)
    return torch.from_numpy(v[:4].copy()), torch.from_numpy(v[4:].copy())


def run_doc_examples(page: str, bucket: str, blocks: int) -> dict[str, object]:
    """Run every ```python block of ``docs/<page>``, in order, in one namespace, with
    ``s3://my-bucket`` replaced by ``s3://<bucket>``; the page must have exactly ``blocks`` of
    them (```py blocks are illustrations, not run). Returns the namespace."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parent.parent / "docs" / page
    found = re.findall(r"^```python\n(.*?)^```\s*$", docs.read_text(), re.MULTILINE | re.DOTALL)
    assert len(found) == blocks, f"docs/{page} has {len(found)} python blocks, expected {blocks}"
    ns: dict[str, object] = {"__name__": "__docs__"}
    for block in found:
        code = compile(block.replace("s3://my-bucket", f"s3://{bucket}"), f"docs/{page}", "exec")
        exec(code, ns)  # noqa: S102 - the docs' own examples
    return ns


def interrupt_cli(args: list[str], cwd: object, faulted: Callable[[], bool], settle: float = 0.0) -> bytes:
    """Run ``python -m s3dlio ARGS`` in ``cwd``; once ``faulted()`` (the proxy has started holding
    its requests) and ``settle`` seconds more, send SIGINT. It must exit 130 within 10 s with the
    interruption note and no traceback; returns its stderr."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-P", "-m", "s3dlio", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert wait_until(faulted, timeout=30), child.communicate(timeout=5)
        time.sleep(settle)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=20)
        took = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert took < 10, took  # generous: the bound asserted is "no hang"
    assert err.decode().startswith("s3dlio: interrupted") and b"Traceback" not in err, err
    return err
