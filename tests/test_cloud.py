"""az:// and gs:// beyond the conformance suite: the loader (s3dlio's DataLoader with exact resume,
torch's DataLoader with forked workers), fork safety, Ctrl-C on a silent service, errors, and each
cloud's credentials (Azure: account key, SAS, a wrong key; GCS: a service account's JWT exchanged
at a token endpoint), against Azurite and fake-gcs-server started by the suite."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import multiprocessing as mp
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB, index_of, require, write_indexed
from s3dlio import exceptions as exc
from s3dlio.testing import LocalAzurite, LocalFakeGCS
from test_ctrl_c import run_and_interrupt

pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")


@pytest.fixture(params=["az", "gs"])
def store_root(request: pytest.FixtureRequest) -> str:
    """``az://container/`` or ``gs://bucket/``: fresh and empty."""
    if request.param == "az":
        return f"az://{request.getfixturevalue('az_container')}/"
    return f"gs://{request.getfixturevalue('gcs_bucket')}/"


@pytest.fixture
def prefix(store_root: str) -> str:
    return f"{store_root}train/"


def test_dataloader_over_az_shuffles_and_resumes_exactly(prefix: str) -> None:
    """from_prefix lists the container; a shuffled epoch yields every sample once; state_dict
    taken mid-epoch resumes with exactly the rest."""
    n = 64
    write_indexed(prefix, n)
    ds = s3dlio.ObjectDataset.from_prefix(prefix, transform=index_of)
    assert len(ds) == n
    dl = s3dlio.DataLoader(ds, batch_size=8, shuffle=True, seed=3, collate_fn=list)
    it = iter(dl)
    first = [i for _ in range(3) for i in next(it)]
    state = dl.state_dict()
    rest_here = [i for b in it for i in b]
    assert sorted(first + rest_here) == list(range(n))
    assert first != sorted(first), "shuffle=True shuffled nothing"

    dl2 = s3dlio.DataLoader(
        s3dlio.ObjectDataset.from_prefix(prefix, transform=index_of),
        batch_size=8,
        shuffle=True,
        seed=3,
        collate_fn=list,
    )
    dl2.load_state_dict(state)
    assert [i for b in dl2 for i in b] == rest_here


def _read_in_child(uri: str, q: Any) -> None:
    q.put(bytes(s3dlio.get(uri))[:8])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_children_read_az_after_the_parent_did(prefix: str, method: str) -> None:
    """The parent's runtime and HTTP connections exist before the child starts; a forked or
    spawned child builds its own and reads correctly (a hang is the failure this catches)."""
    uris = write_indexed(prefix, 2)
    assert index_of(s3dlio.get(uris[1])) == 1
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_read_in_child, args=(uris[1], q))
    p.start()
    got = q.get(timeout=60)
    p.join(30)
    assert p.exitcode == 0
    assert int.from_bytes(got, "little") == 1


@pytest.mark.timeout(120)
def test_torch_dataloader_with_forked_workers_reads_az(prefix: str) -> None:
    torch = require("torch")
    n = 40
    write_indexed(prefix, n)
    ds = s3dlio.ObjectDataset.from_prefix(prefix, transform=index_of)
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="fork")
    got = sorted(int(i) for b in dl for i in b)
    assert got == list(range(n))


def _child_env_through(proxy: FaultProxy, root: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a child process whose az:// or gs:// requests go through ``proxy``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "STORAGE_EMULATOR"))}
    if root.startswith("az://"):
        az: LocalAzurite = request.getfixturevalue("azurite")
        env.update(
            AZURE_STORAGE_ACCOUNT_NAME=az.account_name,
            AZURE_STORAGE_ACCOUNT_KEY=az.account_key,
            AZURE_STORAGE_ENDPOINT=f"{proxy.endpoint}/{az.account_name}",
        )
    else:
        env["STORAGE_EMULATOR_HOST"] = proxy.endpoint
    return env


def _upstream(root: str, request: pytest.FixtureRequest) -> str:
    if root.startswith("az://"):
        return request.getfixturevalue("azurite").blob_url  # type: ignore[no-any-return]
    return request.getfixturevalue("fake_gcs").endpoint  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("op", "mode"), [("get", "blackhole"), ("get", "stall_body"), ("list", "blackhole")])
def test_sigint_on_a_silent_service(
    store_root: str, request: pytest.FixtureRequest, op: str, mode: str
) -> None:
    """Ctrl-C while the service stops answering (or stops mid-body): KeyboardInterrupt within
    0.5 s and nothing left running."""
    uri = f"{store_root}obj"
    s3dlio.put(uri, os.urandom(8 * MiB))
    with FaultProxy(_upstream(store_root, request)) as proxy:
        proxy.set_mode(mode, stall_after=64 * 1024)
        env = _child_env_through(proxy, store_root, request)
        report = run_and_interrupt(proxy, op, uri if op != "list" else store_root, env=env)
    assert float(report["latency"]) < 0.5, report
    assert report["LIVE"] == "0", report


def test_wrong_account_key_is_permission_error_and_never_shown(
    az_container: str, azurite: LocalAzurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"az://{az_container}/k"
    s3dlio.put(uri, b"x")
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", wrong)
    for call in (lambda: s3dlio.get(uri), lambda: s3dlio.put(uri, b"y"), lambda: s3dlio.list(uri)):
        with pytest.raises(exc.AccessDeniedError) as ei:
            call()
        assert isinstance(ei.value, PermissionError)
        text = str(ei.value) + repr(ei.value)
        assert az_container in text
        assert wrong not in text and azurite.account_key not in text


def test_sas_token_reads_and_a_read_only_sas_refuses_writes(
    az_container: str, azurite: LocalAzurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = require("azure.storage.blob")
    uri = f"az://{az_container}/data.bin"
    payload = os.urandom(3 * MiB + 5)
    s3dlio.put(uri, payload)
    sas = blob.generate_container_sas(
        azurite.account_name,
        az_container,
        account_key=azurite.account_key,
        permission=blob.ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    for k in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    assert bytes(s3dlio.get(uri)) == payload
    assert bytes(s3dlio.get_range(uri, MiB, 10)) == payload[MiB : MiB + 10]
    assert [o.uri for o in s3dlio.list(f"az://{az_container}/")] == [uri]
    with pytest.raises(exc.AccessDeniedError) as ei:
        s3dlio.put(f"az://{az_container}/nope", b"x")
    sig = dict(kv.split("=", 1) for kv in sas.split("&"))["sig"]
    assert sig not in str(ei.value)


def test_missing_container_and_object_are_not_found(store_root: str) -> None:
    scheme = store_root.split("://")[0]
    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.get(f"{store_root}missing")
    assert isinstance(ei.value, FileNotFoundError) and "missing" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        s3dlio.get(f"{scheme}://no-such-container-here/x")
    with pytest.raises(FileNotFoundError):
        s3dlio.list(f"{scheme}://no-such-container-here/")
    assert not s3dlio.exists(f"{store_root}missing")


@pytest.mark.parametrize(
    "bad",
    [
        "az://UPPER/x",
        "az://a/x",
        "az://two--hyphens/x",
        "az:///x",
        "gs://UPPER/x",
        "gs://ab/x",
        "gs://-x-/y",
        "gs:///x",
    ],
)
def test_bad_container_names_are_invalid_uris(bad: str) -> None:
    with pytest.raises(exc.InvalidUriError) as ei:
        s3dlio.get(bad)
    assert bad in str(ei.value)


def test_no_account_configured_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("AZURE"):
            monkeypatch.delenv(k)
    with pytest.raises(exc.InvalidConfigError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        s3dlio.get("az://some-container/x")


@pytest.fixture
def big_blob(store_root: str) -> tuple[str, bytes]:
    data = os.urandom(40 * MiB + 123)
    uri = f"{store_root}big.bin"
    s3dlio.put(uri, data, config=s3dlio.StorageConfig(part_size=8 * MiB, multipart_threshold=8 * MiB))
    return uri, data


def test_parallel_upload_round_trip_and_range_engine(big_blob: tuple[str, bytes]) -> None:
    """A 40 MiB put in 8 MiB parts (Azure blocks, GCS composed part objects) reads back whole
    through the range engine (concurrent ranged GETs pinned to the version read first) and
    through the seekable reader."""
    uri, data = big_blob
    rng = s3dlio.RangeEngineConfig(chunk_size=4 * MiB, min_split_size=8 * MiB)
    assert bytes(s3dlio.get(uri, range_engine=rng)) == data
    with s3dlio.open(uri) as f:
        f.seek(17 * MiB + 3)
        assert f.read(9 * MiB) == data[17 * MiB + 3 : 26 * MiB + 3]
    assert s3dlio.stat(uri).size == len(data)


# -------------------------------------------------------------------------------------------------
# GCS credentials: a service account's JWT, exchanged at a real local token endpoint
# -------------------------------------------------------------------------------------------------


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """OAuth2's token endpoint for the JWT-bearer grant: checks the assertion's RS256 signature
    against the service account's public key and its claims, then hands out a fresh token."""

    protocol_version = "HTTP/1.1"
    public_key: Any = None
    issued: list[str] = []  # noqa: RUF012
    refused: list[str] = []  # noqa: RUF012

    def do_POST(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        status, body = 400, {"error": "invalid_grant"}
        try:
            assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            head, claims, sig = form["assertion"][0].split(".")

            def unb64(x: str) -> bytes:
                return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))

            self.public_key.verify(
                unb64(sig), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            c = json.loads(unb64(claims))
            assert c["iss"] == "loader@proj.iam.gserviceaccount.com", c
            assert c["aud"].endswith("/token") and "devstorage" in c["scope"], c
            assert c["exp"] > time.time() > c["iat"] - 60, c
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append(token)
            status, body = 200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        except Exception as e:  # any failed check is a refusal
            self.refused.append(repr(e))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[tuple[str, Any]]:
    """(token URI, private key in PEM) of a fresh service account and its token endpoint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _TokenEndpoint.public_key = key.public_key()
    _TokenEndpoint.issued, _TokenEndpoint.refused = [], []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/token", pem
    finally:
        srv.shutdown()
        srv.server_close()


def test_service_account_jwt_is_exchanged_once_and_its_token_sent(
    gcs_bucket: str,
    fake_gcs: LocalFakeGCS,
    token_endpoint: tuple[str, str],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS names a service-account key: s3dlio signs a JWT (RS256) that
    the token endpoint verifies, caches the access token, and sends it on every request."""
    require("cryptography")
    token_uri, pem = token_endpoint
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "proj",
                "client_email": "loader@proj.iam.gserviceaccount.com",
                "private_key": pem,
                "token_uri": token_uri,
            }
        )
    )
    with FaultProxy(fake_gcs.endpoint) as proxy:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        uris = write_indexed(f"gs://{gcs_bucket}/sa/", 5)
        assert [index_of(b) for b in s3dlio.get_many(uris)] == list(range(5))
        assert len(s3dlio.list(f"gs://{gcs_bucket}/sa/")) == 5
    assert _TokenEndpoint.refused == []
    assert _TokenEndpoint.issued == ["tok-1"], "the token was not cached"
    assert proxy.auth_log and set(proxy.auth_log) == {"Bearer tok-1"}, set(proxy.auth_log)


def test_a_refused_service_account_is_permission_error_without_the_key(
    gcs_bucket: str, token_endpoint: tuple[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("cryptography")
    token_uri, pem = token_endpoint
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "client_email": "someone-else@proj.iam.gserviceaccount.com",
                "private_key": pem,
                "token_uri": token_uri,
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    with pytest.raises(exc.AccessDeniedError) as ei:
        s3dlio.get(f"gs://{gcs_bucket}/x")
    assert "invalid_grant" in str(ei.value) and token_uri in str(ei.value)
    body = pem.splitlines()[1]
    assert body not in str(ei.value)


def test_a_bad_key_file_is_a_clear_config_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text('{"type": "service_account", "client_email": "x", "private_key": "nope"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    with pytest.raises(exc.InvalidConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        s3dlio.get("gs://some-bucket/x")


# -------------------------------------------------------------------------------------------------
# docs/backends.md
# -------------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "backends.md"


def _drop(uri: str) -> None:
    with contextlib.suppress(Exception):
        s3dlio.delete_prefix(uri + "/")
    with contextlib.suppress(Exception):
        s3dlio.delete_bucket(uri)


def test_docs_backends_example_runs_as_written(
    azurite: LocalAzurite, fake_gcs: LocalFakeGCS, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ```python block of docs/backends.md runs unchanged against the emulators and prints
    what its comments say."""
    (block,) = re.findall(r"^```python\n(.*?)^```\s*$", DOC.read_text(), re.MULTILINE | re.DOTALL)
    for uri in ("az://demo-train", "gs://demo-train-copy"):
        _drop(uri)
    try:
        exec(compile(block, str(DOC), "exec"), {"__name__": "__docs__"})  # noqa: S102 - the docs' example
        assert capsys.readouterr().out.split() == ["32", "32"]
        assert len(s3dlio.list("gs://demo-train-copy/x/")) == 32
    finally:
        for uri in ("az://demo-train", "gs://demo-train-copy"):
            _drop(uri)


# -------------------------------------------------------------------------------------------------
# Azure: Microsoft Entra ID tokens (a service principal's secret, a managed identity's endpoint)
# -------------------------------------------------------------------------------------------------


class _EntraEndpoint(http.server.BaseHTTPRequestHandler):
    """A real local token endpoint for both flows: the client-credentials grant (POST
    /<tenant>/oauth2/v2.0/token) and a managed identity's endpoint (GET /msi, with its header)."""

    protocol_version = "HTTP/1.1"
    issued: list[str] = []  # noqa: RUF012

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        ok = (
            self.path == "/tenant-1/oauth2/v2.0/token"
            and form.get("grant_type") == ["client_credentials"]
            and form.get("client_id") == ["app-1"]
            and form.get("scope") == ["https://storage.azure.com/.default"]
        )
        if not ok or form.get("client_secret") != ["s3cret-value"]:
            self._answer(
                401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret"}
            )
            return
        self.issued.append(f"sp-{len(self.issued) + 1}")
        self._answer(200, {"access_token": self.issued[-1], "expires_in": 3599, "token_type": "Bearer"})

    def do_GET(self) -> None:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if self.headers.get("X-IDENTITY-HEADER") != "id-header-1" or q.get("resource") != [
            "https://storage.azure.com/"
        ]:
            self._answer(400, {"error": "invalid_request"})
            return
        self.issued.append(f"mi-{len(self.issued) + 1}")
        self._answer(200, {"access_token": self.issued[-1], "expires_in": "3599", "token_type": "Bearer"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def entra(azurite: LocalAzurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FaultProxy]]:
    """(token endpoint URL, a proxy in front of Azurite) with the account's key and connection
    string out of the environment, so that s3dlio has only Entra ID credentials."""
    _EntraEndpoint.issued = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EntraEndpoint)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    for k in list(os.environ):
        if k.startswith("AZURE"):
            monkeypatch.delenv(k)
    with FaultProxy(azurite.blob_url) as proxy:
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", azurite.account_name)
        monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", f"{proxy.endpoint}/{azurite.account_name}")
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}", proxy
        finally:
            srv.shutdown()
            srv.server_close()


def _bearer_requests(proxy: FaultProxy) -> set[str | None]:
    return set(proxy.auth_log)


@pytest.mark.parametrize("flow", ["service-principal", "managed-identity"])
def test_entra_token_is_fetched_once_and_sent(
    entra: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch, flow: str
) -> None:
    """The token comes from the (real, local) endpoint once, and every request carries it.
    Azurite without OAuth refuses bearer tokens: the answer is a PermissionError naming the URI."""
    url, proxy = entra
    if flow == "service-principal":
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", url)
        monkeypatch.setenv("AZURE_TENANT_ID", "tenant-1")
        monkeypatch.setenv("AZURE_CLIENT_ID", "app-1")
        monkeypatch.setenv("AZURE_CLIENT_SECRET", "s3cret-value")
        want = "sp-1"
    else:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"{url}/msi")
        monkeypatch.setenv("IDENTITY_HEADER", "id-header-1")
        want = "mi-1"
    for _ in range(2):
        with pytest.raises(PermissionError) as ei:
            s3dlio.get("az://some-container/blob")
        assert "az://some-container/blob" in str(ei.value)
        assert "s3cret-value" not in str(ei.value) and want not in str(ei.value)
    assert _EntraEndpoint.issued == [want]
    assert _bearer_requests(proxy) == {f"Bearer {want}"}


def test_a_refused_service_principal_is_permission_error_without_the_secret(
    entra: tuple[str, FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, proxy = entra
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", url)
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant-1")
    monkeypatch.setenv("AZURE_CLIENT_ID", "app-1")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "wrong-secret-value")
    with pytest.raises(exc.AccessDeniedError) as ei:
        s3dlio.get("az://some-container/blob")
    assert "AADSTS7000215" in str(ei.value) and "wrong-secret-value" not in str(ei.value)
    assert proxy.requests_seen == 0, "a request went out without a token"
