"""The Azure Blob (Azurite) and Google Cloud Storage (fake-gcs-server) emulators the suite starts
itself: checked with the official SDKs (azure-storage-blob, google-cloud-storage) as independent
observers, and the start/stop machinery of s3dlio.testing on its own."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from helpers import require
from s3dlio.testing import AZURITE_KEY, LocalAzurite, LocalFakeGCS

DATA = bytes(range(256)) * 40  # 10 KiB, every byte value, position-dependent


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """A plain GET (the form a backend would send): status, headers and body, errors included."""
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -------------------------------------------------------------------------------------------------
# Azurite
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def container(azurite: LocalAzurite) -> Iterator[Any]:
    """A fresh container on Azurite (an azure.storage.blob ContainerClient), deleted afterwards."""
    blob = require("azure.storage.blob")
    service = blob.BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    client = service.get_container_client(_name("c"))
    client.create_container()
    try:
        yield client
    finally:
        client.delete_container()


def test_azurite_env_points_at_the_emulator(azurite: LocalAzurite) -> None:
    assert azurite.endpoint == f"http://127.0.0.1:{azurite.port}/devstoreaccount1"
    assert azurite.account_name == "devstoreaccount1"
    for key, value in azurite.env().items():
        assert os.environ[key] == value, key
    assert os.environ["AZURITE_BLOB_STORAGE_URL"] == f"http://127.0.0.1:{azurite.port}"
    blob = require("azure.storage.blob")
    service = blob.BlobServiceClient.from_connection_string(azurite.connection_string)
    assert service.url.rstrip("/") == azurite.endpoint
    assert service.credential.account_key == AZURITE_KEY


def test_azurite_upload_ranged_read_list_delete(container: Any) -> None:
    azure_exc = require("azure.core.exceptions")
    container.upload_blob("dir/a.bin", DATA)
    for name in ("dir/sub/b.bin", "dir/sub/c.bin", "other.bin"):
        container.upload_blob(name, name.encode())

    assert container.download_blob("dir/a.bin").readall() == DATA
    assert container.download_blob("dir/a.bin", offset=1000, length=300).readall() == DATA[1000:1300]
    # A range running past the end is cut at the end.
    assert container.download_blob("dir/a.bin", offset=len(DATA) - 5, length=50).readall() == DATA[-5:]
    assert container.get_blob_client("dir/a.bin").get_blob_properties().size == len(DATA)

    assert [b.name for b in container.list_blobs(name_starts_with="dir/")] == [
        "dir/a.bin",
        "dir/sub/b.bin",
        "dir/sub/c.bin",
    ]
    walked = [
        (b.name, type(b).__name__) for b in container.walk_blobs(name_starts_with="dir/", delimiter="/")
    ]
    # Azurite lists a page's prefixes (BlobPrefix) before its blobs, not in one name order.
    assert walked == [("dir/sub/", "BlobPrefix"), ("dir/a.bin", "BlobProperties")]
    pages = list(container.list_blobs(results_per_page=2).by_page())
    assert [[b.name for b in page] for page in pages] == [
        ["dir/a.bin", "dir/sub/b.bin"],
        ["dir/sub/c.bin", "other.bin"],
    ]

    container.delete_blob("dir/a.bin")
    assert not container.get_blob_client("dir/a.bin").exists()
    with pytest.raises(azure_exc.ResourceNotFoundError):
        container.download_blob("dir/a.bin").readall()
    assert [b.name for b in container.list_blobs(name_starts_with="dir/")] == [
        "dir/sub/b.bin",
        "dir/sub/c.bin",
    ]


def test_azurite_staged_blocks_commit_in_list_order(container: Any) -> None:
    blob = require("azure.storage.blob")
    client = container.get_blob_client("staged.bin")
    parts = [bytes([65 + i]) * (100_000 + i) for i in range(3)]
    ids = [base64.b64encode(f"block-{i:04d}".encode()).decode() for i in range(3)]
    for block_id, part in reversed(list(zip(ids, parts, strict=True))):  # staging order is irrelevant
        client.stage_block(block_id, part)
    assert not client.exists()  # staged blocks are invisible until committed
    committed, uncommitted = client.get_block_list("all")
    assert (len(committed), len(uncommitted)) == (0, 3)

    client.commit_block_list([blob.BlobBlock(block_id=i) for i in ids])
    whole = b"".join(parts)
    assert client.download_blob().readall() == whole
    assert client.download_blob(offset=99_990, length=30).readall() == whole[99_990:100_020]


def test_azurite_enforces_the_account_key(azurite: LocalAzurite, container: Any) -> None:
    blob = require("azure.storage.blob")
    azure_exc = require("azure.core.exceptions")
    container.upload_blob("secret.bin", b"s3cret")
    wrong = "A" * 4 + azurite.account_key[4:]
    bad = blob.BlobServiceClient(
        azurite.endpoint, credential={"account_name": azurite.account_name, "account_key": wrong}
    )
    with pytest.raises(azure_exc.HttpResponseError) as ei:
        bad.get_container_client(container.container_name).download_blob("secret.bin").readall()
    assert ei.value.status_code == 403
    # No credentials at all: refused too.
    status, headers, _ = _http_get(f"{azurite.endpoint}/{container.container_name}/secret.bin")
    assert (status, headers["x-ms-error-code"]) == (403, "AuthorizationFailure")


def test_azurite_read_only_sas(azurite: LocalAzurite, container: Any) -> None:
    blob = require("azure.storage.blob")
    azure_exc = require("azure.core.exceptions")
    container.upload_blob("shared.bin", DATA)
    sas = blob.generate_container_sas(
        azurite.account_name,
        container.container_name,
        account_key=azurite.account_key,
        permission=blob.ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    url = f"{azurite.endpoint}/{container.container_name}"
    reader = blob.ContainerClient.from_container_url(f"{url}?{sas}")
    assert reader.download_blob("shared.bin", offset=10, length=20).readall() == DATA[10:30]
    assert [b.name for b in reader.list_blobs()] == ["shared.bin"]
    with pytest.raises(azure_exc.HttpResponseError) as ei:
        reader.upload_blob("new.bin", b"x")
    assert ei.value.status_code == 403
    # The plain REST form a backend would send: Range header, 206 and Content-Range.
    status, headers, body = _http_get(f"{url}/shared.bin?{sas}", {"Range": "bytes=100-199"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    assert body == DATA[100:200]


# -------------------------------------------------------------------------------------------------
# fake-gcs-server
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def gcs_bucket(fake_gcs: LocalFakeGCS) -> Iterator[Any]:
    """A fresh bucket on fake-gcs-server (a google.cloud.storage Bucket), deleted afterwards. The
    client finds the emulator through STORAGE_EMULATOR_HOST, exported by the fixture."""
    storage = require("google.cloud.storage")
    credentials = require("google.auth.credentials")
    client = storage.Client(project=fake_gcs.project, credentials=credentials.AnonymousCredentials())
    bucket = client.create_bucket(_name("b"))
    try:
        yield bucket
    finally:
        for obj in client.list_blobs(bucket.name):
            obj.delete()
        bucket.delete()


def test_fake_gcs_env_points_at_the_emulator(fake_gcs: LocalFakeGCS) -> None:
    assert fake_gcs.endpoint == f"http://127.0.0.1:{fake_gcs.port}"
    assert os.environ["STORAGE_EMULATOR_HOST"] == fake_gcs.endpoint
    assert os.environ["GOOGLE_CLOUD_PROJECT"] == fake_gcs.project


def test_fake_gcs_upload_ranged_read_list_delete(gcs_bucket: Any) -> None:
    exceptions = require("google.api_core.exceptions")
    gcs_bucket.blob("dir/a.bin").upload_from_string(DATA)
    for name in ("dir/sub/b.bin", "dir/sub/c.bin", "other.bin"):
        gcs_bucket.blob(name).upload_from_string(name.encode())

    assert gcs_bucket.blob("dir/a.bin").download_as_bytes() == DATA
    # start and end are both inclusive.
    assert gcs_bucket.blob("dir/a.bin").download_as_bytes(start=1000, end=1299) == DATA[1000:1300]
    assert gcs_bucket.get_blob("dir/a.bin").size == len(DATA)

    client = gcs_bucket.client
    names = [b.name for b in client.list_blobs(gcs_bucket.name, prefix="dir/")]
    assert names == ["dir/a.bin", "dir/sub/b.bin", "dir/sub/c.bin"]
    it = client.list_blobs(gcs_bucket.name, prefix="dir/", delimiter="/")
    assert [b.name for b in it] == ["dir/a.bin"]
    assert it.prefixes == {"dir/sub/"}
    pages = client.list_blobs(gcs_bucket.name, page_size=2).pages
    assert [[b.name for b in page] for page in pages] == [
        ["dir/a.bin", "dir/sub/b.bin"],
        ["dir/sub/c.bin", "other.bin"],
    ]

    gcs_bucket.blob("dir/a.bin").delete()
    assert not gcs_bucket.blob("dir/a.bin").exists()
    with pytest.raises(exceptions.NotFound):
        gcs_bucket.blob("dir/a.bin").download_as_bytes()


def test_fake_gcs_resumable_upload(gcs_bucket: Any) -> None:
    data = os.urandom(3 * 256 * 1024 + 17)
    # A chunk_size makes the SDK use a resumable upload session, sent in 256 KiB chunks.
    gcs_bucket.blob("big.bin", chunk_size=256 * 1024).upload_from_string(data)
    assert gcs_bucket.get_blob("big.bin").size == len(data)
    assert gcs_bucket.blob("big.bin").download_as_bytes() == data


def test_fake_gcs_ranged_get_over_both_apis(fake_gcs: LocalFakeGCS, gcs_bucket: Any) -> None:
    gcs_bucket.blob("dir/r.bin").upload_from_string(DATA)
    urls = {
        "xml": f"{fake_gcs.endpoint}/{gcs_bucket.name}/dir/r.bin",
        "json": f"{fake_gcs.endpoint}/storage/v1/b/{gcs_bucket.name}/o/dir%2Fr.bin?alt=media",
    }
    for api, url in urls.items():
        status, headers, body = _http_get(url, {"Range": "bytes=100-199"})
        assert status == 206, api
        assert headers["Content-Range"] == f"bytes 100-199/{len(DATA)}", api
        assert body == DATA[100:200], api


# -------------------------------------------------------------------------------------------------
# s3dlio.testing's start/stop machinery
# -------------------------------------------------------------------------------------------------


def test_emulator_stop_kills_the_process_and_removes_its_data(fake_gcs: LocalFakeGCS) -> None:
    # A second, private server (the session's keeps running): fake-gcs-server starts in well
    # under a second, so it stands in for both emulators here.
    with LocalFakeGCS() as gcs:
        pid, data_dir = gcs.pid, gcs.data_dir
        assert pid is not None and _alive(pid)
        assert data_dir is not None and os.path.isdir(data_dir)
        assert gcs.port != fake_gcs.port
        status, _, body = _http_get(f"{gcs.endpoint}/storage/v1/b")
        assert status == 200 and b"storage#buckets" in body
    assert not _alive(pid)
    assert not os.path.exists(data_dir)
    assert gcs.pid is None
    gcs.stop()  # idempotent


def test_missing_emulator_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("S3DLIO_AZURITE_BIN", str(tmp_path / "no-such-azurite"))
    monkeypatch.setenv("S3DLIO_FAKE_GCS_BIN", str(tmp_path / "no-such-fake-gcs"))
    with pytest.raises(FileNotFoundError, match="S3DLIO_AZURITE_BIN"):
        LocalAzurite().start()
    with pytest.raises(FileNotFoundError, match="S3DLIO_FAKE_GCS_BIN"):
        LocalFakeGCS().start()
    assert list(tmp_path.iterdir()) == []  # nothing was created for a server that never started


def test_missing_azurite_names_the_npm_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import s3dlio.testing as testing

    monkeypatch.delenv("S3DLIO_AZURITE_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no azurite-blob on PATH
    monkeypatch.chdir(tmp_path)  # no .emulators/ here
    monkeypatch.setattr(testing, "__file__", str(tmp_path / "s3dlio" / "testing.py"))  # nor in the checkout
    with pytest.raises(FileNotFoundError, match=r"npm install --prefix \.emulators azurite"):
        LocalAzurite().start()


def test_emulator_that_exits_early_reports_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "fake-gcs-server"
    fake.write_text("#!/bin/sh\necho 'cannot bind: address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("S3DLIO_FAKE_GCS_BIN", str(fake))
    server = LocalFakeGCS(startup_timeout=10)
    with pytest.raises(RuntimeError, match=r"(?s)exited early \(code 3\).*address already in use"):
        server.start()
    assert server.pid is None and server.data_dir is None  # stopped and cleaned up


def test_emulator_that_never_answers_times_out_with_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "fake-gcs-server"
    pid_file = tmp_path / "pid"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\necho 'still warming up'\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("S3DLIO_FAKE_GCS_BIN", str(fake))
    server = LocalFakeGCS(startup_timeout=1.5)
    with pytest.raises(TimeoutError, match=r"(?s)fake-gcs-server did not answer.*still warming up"):
        server.start()
    assert server.pid is None and server.data_dir is None
    assert not _alive(int(pid_file.read_text()))  # SIGKILLed and reaped, not left sleeping
