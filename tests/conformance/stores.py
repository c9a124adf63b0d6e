"""The backends of the conformance suite, each described by a :class:`Store`: its root URI, its name,
what it can do (capability flags), and how to reach it *out of band*, without s3dlio, to create raw
objects (folder markers) and to observe what was really stored (temp files, pending uploads).

A new backend (``az://``, ``gs://``) joins the suite by subclassing :class:`Store` and adding its
factory to :data:`BACKENDS`; the tests do not change. A behaviour a backend cannot have is a
capability flag here, never a backend-name check in a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB


class Store(ABC):
    """One backend under test, rooted at an empty prefix.

    Keys in this API are relative to :attr:`root` (``"a/b.bin"``); :meth:`uri` makes the s3dlio URI.
    """

    #: Short name, also the pytest id (``s3``, ``file``, ``direct``).
    name: ClassVar[str]
    #: Zero-byte objects whose key ends in ``/`` exist as objects of their own (S3-like stores). On a
    #: filesystem the analogue of a marker is an empty directory.
    supports_folder_markers: ClassVar[bool]
    #: An object ``k`` and objects under ``k/`` can exist at the same time (impossible on a
    #: filesystem, where ``k`` is either a file or a directory).
    object_and_prefix_coexist: ClassVar[bool]

    def __init__(self, root: str) -> None:
        assert root.endswith("/"), root
        #: The store's root prefix URI, ending in ``/``; nothing else lives under it.
        self.root = root

    def uri(self, key: str) -> str:
        return self.root + key

    def config(self, **overrides: Any) -> s3dlio.StorageConfig | None:
        """An explicit StorageConfig for this store with ``overrides`` (None: the default config)."""
        return s3dlio.StorageConfig(**overrides) if overrides else None

    @abstractmethod
    def make_marker(self, key: str) -> None:
        """Create, out of band, a folder marker at ``key`` (which ends in ``/``): a zero-byte object
        on an object store, an empty directory on a filesystem."""

    @abstractmethod
    def raw_keys(self) -> set[str]:
        """Everything stored under the root, seen out of band: object keys (markers included), or
        for a filesystem every file's relative path plus ``d/`` for each empty directory. Temp or
        partial files left behind by s3dlio show up here."""

    @abstractmethod
    def pending_uploads(self) -> list[str]:
        """Incomplete multipart uploads under the root (always empty for backends without them)."""

    @abstractmethod
    def interruptible_put(self, **overrides: Any) -> tuple[s3dlio.StorageConfig | None, int]:
        """(config, size): a put of ``size`` bytes with this config is reliably still in flight once
        :meth:`until_in_flight` returns (S3: part 3 never gets an answer)."""

    @abstractmethod
    async def until_in_flight(self) -> None:
        """Wait until the put started with :meth:`interruptible_put`'s config is in flight."""

    @staticmethod
    async def _until_fault(proxy: Any, what: str) -> None:
        """Wait (10 s at most) until ``proxy`` has held back a request: ``what`` is in flight."""
        for _ in range(500):
            if proxy.faults_injected >= 1:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{what} never reached the proxy")


class S3Store(Store):
    """A fresh bucket on the suite's SeaweedFS; boto3 is the out-of-band observer."""

    name = "s3"
    supports_folder_markers = True
    object_and_prefix_coexist = True

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.bucket: str = request.getfixturevalue("bucket")
        super().__init__(f"s3://{self.bucket}/")
        self._request = request
        self.server: Any = request.getfixturevalue("s3_server")
        self.boto3: Any = request.getfixturevalue("boto3_client")
        self._proxy: Any = None

    def config(self, **overrides: Any) -> s3dlio.StorageConfig | None:
        return self.server.config(**overrides) if overrides else None

    def make_marker(self, key: str) -> None:
        assert key.endswith("/"), key
        self.boto3.put_object(Bucket=self.bucket, Key=key, Body=b"")

    def raw_keys(self) -> set[str]:
        keys: set[str] = set()
        for page in self.boto3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys.update(o["Key"] for o in page.get("Contents", []))
        return keys

    def pending_uploads(self) -> list[str]:
        uploads = self.boto3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    def interruptible_put(self, **overrides: Any) -> tuple[s3dlio.StorageConfig | None, int]:
        self._proxy = self._request.getfixturevalue("proxy")
        self._proxy.set_mode("blackhole", match=r"[?&]partNumber=3[& ]")
        cfg = self.server.config(
            endpoint_url=self._proxy.endpoint, max_attempts=1, read_timeout=60, **overrides
        )
        return cfg, 64 * MiB

    async def until_in_flight(self) -> None:
        await self._until_fault(self._proxy, "part 3 of the multipart upload")


class AzureStore(Store):
    """A fresh container on the suite's Azurite; azure-storage-blob is the out-of-band observer.

    Azure has no multipart upload to abort: a block upload stages blocks that stay invisible until
    committed (the service discards them). :meth:`pending_uploads` lists the blobs that exist only
    as uncommitted blocks, the one trace a block upload can leave."""

    name = "az"
    supports_folder_markers = True
    object_and_prefix_coexist = True

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.azurite: Any = request.getfixturevalue("azurite")
        blob = pytest.importorskip("azure.storage.blob")
        self.container = f"c-{uuid.uuid4().hex[:16]}"
        super().__init__(f"az://{self.container}/")
        s3dlio.create_bucket(f"az://{self.container}")
        service = blob.BlobServiceClient.from_connection_string(self.azurite.connection_string)
        self.client: Any = service.get_container_client(self.container)
        self._request = request
        self._proxy: Any = None

        def cleanup() -> None:
            with contextlib.suppress(Exception):
                self.client.delete_container()

        request.addfinalizer(cleanup)

    def make_marker(self, key: str) -> None:
        assert key.endswith("/"), key
        self.client.upload_blob(key, b"", overwrite=True)

    def raw_keys(self) -> set[str]:
        return set(self.client.list_blob_names())

    def pending_uploads(self) -> list[str]:
        committed = self.raw_keys()
        everything = {b.name for b in self.client.list_blobs(include=["uncommittedblobs"])}
        return sorted(everything - committed)

    def interruptible_put(self, **overrides: Any) -> tuple[s3dlio.StorageConfig | None, int]:
        self._proxy = FaultProxy(self.azurite.blob_url)
        self._request.addfinalizer(self._proxy.stop)
        # base64("00000003"): part 3's block id (see backend/azure.rs, block ids).
        self._proxy.set_mode("blackhole", match=r"blockid=[^& ]*MDAwMDAwMDM")
        cfg = s3dlio.StorageConfig(
            endpoint_url=f"{self._proxy.endpoint}/{self.azurite.account_name}",
            max_attempts=1,
            read_timeout=60,
            **overrides,
        )
        return cfg, 64 * MiB

    async def until_in_flight(self) -> None:
        await self._until_fault(self._proxy, "block 3 of the block upload")


class GcsStore(Store):
    """A fresh bucket on the suite's fake-gcs-server; google-cloud-storage is the observer.

    A large put writes its parts as temporary objects under ``.s3dlio-uploads/`` at the bucket
    root, then composes them: :meth:`pending_uploads` lists what is left there."""

    name = "gs"
    supports_folder_markers = True
    object_and_prefix_coexist = True

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.gcs: Any = request.getfixturevalue("fake_gcs")
        storage = pytest.importorskip("google.cloud.storage")
        credentials = pytest.importorskip("google.auth.credentials")
        self.bucket = f"b-{uuid.uuid4().hex[:16]}"
        super().__init__(f"gs://{self.bucket}/")
        s3dlio.create_bucket(f"gs://{self.bucket}")
        client = storage.Client(
            project=self.gcs.project,
            credentials=credentials.AnonymousCredentials(),
            client_options={"api_endpoint": self.gcs.endpoint},
        )
        self.client: Any = client.bucket(self.bucket)
        self._request = request
        self._proxy: Any = None

        def cleanup() -> None:
            with contextlib.suppress(Exception):
                s3dlio.delete_prefix(f"gs://{self.bucket}/")
                s3dlio.delete_bucket(f"gs://{self.bucket}")

        request.addfinalizer(cleanup)

    def make_marker(self, key: str) -> None:
        assert key.endswith("/"), key
        self.client.blob(key).upload_from_string(b"")

    def _all(self) -> set[str]:
        return {b.name for b in self.client.list_blobs()}

    def raw_keys(self) -> set[str]:
        return {k for k in self._all() if not k.startswith(".s3dlio-uploads/")}

    def pending_uploads(self) -> list[str]:
        return sorted(k for k in self._all() if k.startswith(".s3dlio-uploads/"))

    def interruptible_put(self, **overrides: Any) -> tuple[s3dlio.StorageConfig | None, int]:
        self._proxy = FaultProxy(self.gcs.endpoint)
        self._request.addfinalizer(self._proxy.stop)
        # The parts are uploads of their own: two get through, the rest never get an answer.
        self._proxy.set_mode("pass", count=2, then="blackhole", match=r"^POST /upload/")
        cfg = s3dlio.StorageConfig(
            endpoint_url=self._proxy.endpoint, max_attempts=1, read_timeout=60, **overrides
        )
        return cfg, 64 * MiB

    async def until_in_flight(self) -> None:
        await self._until_fault(self._proxy, "part 3 of the parallel upload")


class LocalStore(Store):
    """A fresh directory, reached as ``<scheme>://<dir>/``; the filesystem is the observer."""

    supports_folder_markers = False
    object_and_prefix_coexist = False

    def __init__(self, scheme: str, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        super().__init__(f"{scheme}://{self.dir}/")

    def make_marker(self, key: str) -> None:
        assert key.endswith("/"), key
        (self.dir / key).mkdir(parents=True, exist_ok=True)

    def raw_keys(self) -> set[str]:
        keys: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.dir):
            base = Path(dirpath)
            keys.update(str((base / f).relative_to(self.dir)) for f in filenames)
            if base != self.dir and not dirnames and not filenames:
                keys.add(str(base.relative_to(self.dir)) + "/")
        return keys

    def pending_uploads(self) -> list[str]:
        return []

    def interruptible_put(self, **overrides: Any) -> tuple[s3dlio.StorageConfig | None, int]:
        # Nothing to stall on a local disk: the write is simply large enough to be cut short.
        return self.config(**overrides), 512 * MiB

    async def until_in_flight(self) -> None:
        await asyncio.sleep(0.05)


class FileStore(LocalStore):
    name = "file"

    def __init__(self, request: pytest.FixtureRequest) -> None:
        d = request.getfixturevalue("tmp_path") / "file-root"
        d.mkdir()
        super().__init__("file", d)


class DirectStore(LocalStore):
    name = "direct"

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__("direct", request.getfixturevalue("disk_dir"))


#: Every backend the suite runs on. A new backend adds its factory here.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Store]] = {
    "s3": S3Store,
    "az": AzureStore,
    "gs": GcsStore,
    "file": FileStore,
    "direct": DirectStore,
}
