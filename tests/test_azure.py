"""az:// beyond the conformance suite: the loader (s3dlio's DataLoader with exact resume, torch's
DataLoader with forked workers), fork safety, Ctrl-C on a silent Blob service, and Azure's
credentials (account key, SAS, a wrong key) and errors, against Azurite started by the suite."""

from __future__ import annotations

import multiprocessing as mp
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import MiB, index_of, require, write_indexed
from s3dlio import exceptions as exc
from s3dlio.testing import LocalAzurite
from test_ctrl_c import run_and_interrupt

pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")


@pytest.fixture
def prefix(az_container: str) -> str:
    return f"az://{az_container}/train/"


def _env_without_azure() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AZURE")}


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("op", "mode"), [("get", "blackhole"), ("get", "stall_body"), ("list", "blackhole")])
def test_sigint_on_a_silent_blob_service(
    az_container: str, azurite: LocalAzurite, op: str, mode: str
) -> None:
    """Ctrl-C while Azure stops answering (or stops mid-body): KeyboardInterrupt within 0.5 s and
    nothing left running."""
    uri = f"az://{az_container}/obj"
    s3dlio.put(uri, os.urandom(8 * MiB))
    with FaultProxy(azurite.blob_url) as proxy:
        proxy.set_mode(mode, stall_after=64 * 1024)
        env = _env_without_azure()
        env.update(
            AZURE_STORAGE_ACCOUNT_NAME=azurite.account_name,
            AZURE_STORAGE_ACCOUNT_KEY=azurite.account_key,
            AZURE_STORAGE_ENDPOINT=f"{proxy.endpoint}/{azurite.account_name}",
        )
        report = run_and_interrupt(proxy, op, uri if op != "list" else f"az://{az_container}/", env=env)
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


def test_missing_container_and_blob_are_not_found(az_container: str) -> None:
    with pytest.raises(exc.NotFoundError) as ei:
        s3dlio.get(f"az://{az_container}/missing")
    assert isinstance(ei.value, FileNotFoundError) and "missing" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        s3dlio.get("az://no-such-container-here/x")
    with pytest.raises(FileNotFoundError):
        s3dlio.list("az://no-such-container-here/")
    assert not s3dlio.exists(f"az://{az_container}/missing")


@pytest.mark.parametrize("bad", ["az://UPPER/x", "az://a/x", "az://two--hyphens/x", "az:///x"])
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
def big_blob(az_container: str) -> tuple[str, bytes]:
    data = os.urandom(40 * MiB + 123)
    uri = f"az://{az_container}/big.bin"
    s3dlio.put(uri, data, config=s3dlio.StorageConfig(part_size=8 * MiB, multipart_threshold=8 * MiB))
    return uri, data


def test_block_upload_round_trip_and_range_engine(big_blob: tuple[str, bytes]) -> None:
    """A 40 MiB put in 8 MiB blocks reads back whole through the range engine (concurrent ranged
    GETs pinned to the blob's ETag) and through the seekable reader."""
    uri, data = big_blob
    rng = s3dlio.RangeEngineConfig(chunk_size=4 * MiB, min_split_size=8 * MiB)
    assert bytes(s3dlio.get(uri, range_engine=rng)) == data
    with s3dlio.open(uri) as f:
        f.seek(17 * MiB + 3)
        assert f.read(9 * MiB) == data[17 * MiB + 3 : 26 * MiB + 3]
    assert s3dlio.stat(uri).size == len(data)
