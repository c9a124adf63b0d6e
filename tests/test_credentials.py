"""Temporary credentials that expire during a run are refreshed without a failed request, for three
sources of the AWS SDK's default chain: ``credential_process`` in the config file, a web-identity
token file (STS AssumeRoleWithWebIdentity at ``AWS_ENDPOINT_URL_STS``), and the container
credentials endpoint (``AWS_CONTAINER_CREDENTIALS_FULL_URI``).

Keys live 3 s (a new one every second); a token gateway in front of the real server (see
tests/credentials.py) refuses any request made with an expired, unknown or wrongly signed key. A
child process reads every object, epoch after epoch, for several key lifetimes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import s3dlio
from credentials import (
    CONTAINER_AUTH_TOKEN,
    ROLE_ARN,
    WEB_IDENTITY_TOKEN,
    CredentialEndpoints,
    KeyIssuer,
    TempKey,
    TokenGateway,
    send_signed,
)
from s3dlio.testing import LocalS3Server

N = 24
SIZE = 64
RUN_SECONDS = 5.0
LIFETIME = 3.0
PERIOD = 1.0
GRACE = 1.0

CHILD = r"""
import json, sys, time
import s3dlio

prefix, n, size, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
uris = [f"{prefix}{i:04d}.bin" for i in range(n)]
expected = sorted(f"{i:04d}".encode().ljust(size, b".") for i in range(n))
ds = s3dlio.ObjectDataset.from_uris(uris, [size] * n, transform=bytes)
loader = s3dlio.DataLoader(ds, batch_size=6, shuffle=True, collate_fn=list)
epochs, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    loader_seen = [s for batch in loader for s in batch]
    assert sorted(loader_seen) == expected, f"epoch {epochs}: {len(loader_seen)} samples, not each of {n} once"
    epochs += 1
print(json.dumps({"epochs": epochs, "seconds": round(time.monotonic() - start, 2)}))
"""

SOURCES = ("credential_process", "web_identity", "container")


@pytest.fixture
def objects(s3_server: LocalS3Server, bucket: str) -> str:
    """N small objects written with the server's admin keys; their common prefix."""
    prefix = f"s3://{bucket}/creds/"
    items = [(f"{prefix}{i:04d}.bin", f"{i:04d}".encode().ljust(SIZE, b".")) for i in range(N)]
    s3dlio.put_many(items)
    return prefix


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[KeyIssuer]:
    with KeyIssuer(lifetime=LIFETIME, period=PERIOD, process_file=str(tmp_path / "creds.json")) as k:
        yield k


@pytest.fixture
def gateway(s3_server: LocalS3Server, issuer: KeyIssuer) -> Iterator[TokenGateway]:
    with TokenGateway(
        issuer, s3_server.endpoint, s3_server.access_key, s3_server.secret_key, grace=GRACE
    ) as gw:
        yield gw


def child_env(
    source: str, gateway: TokenGateway, endpoints: CredentialEndpoints, tmp_path: Path
) -> dict[str, str]:
    """The environment of a reading process whose only credentials are ``source``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    empty = tmp_path / "empty"
    empty.write_text("")
    env.update(
        AWS_ENDPOINT_URL=gateway.url,
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
    )
    if source == "credential_process":
        config = tmp_path / "config"
        assert endpoints.issuer.process_file is not None
        config.write_text(f"[default]\ncredential_process = cat {endpoints.issuer.process_file}\n")
        env["AWS_CONFIG_FILE"] = str(config)
    elif source == "web_identity":
        token = tmp_path / "web-identity-token"
        token.write_text(WEB_IDENTITY_TOKEN)
        env.update(
            AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
            AWS_ROLE_ARN=ROLE_ARN,
            AWS_ROLE_SESSION_NAME="s3dlio-test",
            # STS is a different server from S3's AWS_ENDPOINT_URL (the gateway refuses unsigned
            # requests): the run only works if the SDK honours the service-specific variable.
            AWS_ENDPOINT_URL_STS=endpoints.url,
        )
    else:
        env.update(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=f"{endpoints.url}/container-credentials",
            AWS_CONTAINER_AUTHORIZATION_TOKEN=CONTAINER_AUTH_TOKEN,
        )
    return env


def test_gateway_enforces_temporary_keys(objects: str, gateway: TokenGateway, issuer: KeyIssuer) -> None:
    """The gateway is no rubber stamp: a live key reads; a forged signature, an unknown key and a
    key past its expiration and grace are refused with S3's errors."""
    bucket, _, key = objects[len("s3://") :].partition("/")
    url = f"{gateway.url}/{bucket}/{key}0000.bin"
    live = issuer.newest()
    ok = send_signed(url, live)
    assert ok.status == 200, ok.body
    assert ok.body == b"0000".ljust(SIZE, b".")
    bad = send_signed(url, live, secret="not-the-secret")
    assert bad.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in bad.body
    stranger = TempKey("ASIAUNKNOWN0000000", "x", "y", time.time() + 60)
    assert b"<Code>InvalidAccessKeyId</Code>" in send_signed(url, stranger).body
    old = send_signed(url, issuer.issue_expired(ago=GRACE + 1))
    assert old.status == 403 and b"<Code>ExpiredToken</Code>" in old.body, old.body
    assert [r[0] for r in gateway.refused] == ["SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", SOURCES)
def test_keys_expiring_mid_run_are_refreshed(
    source: str, objects: str, gateway: TokenGateway, issuer: KeyIssuer, tmp_path: Path
) -> None:
    with CredentialEndpoints(issuer) as endpoints:
        env = child_env(source, gateway, endpoints, tmp_path)
        first = issuer.newest()
        proc = subprocess.run(
            [sys.executable, "-P", "-c", CHILD, objects, str(N), str(SIZE), str(RUN_SECONDS)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        calls = dict(endpoints.calls)
    detail = f"stdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}\nrefused: {gateway.refused[:5]}"
    assert proc.returncode == 0, detail
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs"] >= 2, detail
    assert gateway.refused == [], detail
    assert len(gateway.keys_seen) >= 3, (gateway.keys_seen, detail)
    assert gateway.keys_seen <= {k.access_key for k in issuer.issued()}
    if source == "web_identity":
        assert calls["sts"] >= 3, calls
    elif source == "container":
        assert calls["container"] >= 3, calls
    # Negative control: the key in use when the run started has expired, and the gateway refuses it.
    assert time.time() > first.expires + GRACE
    bucket, _, key = objects[len("s3://") :].partition("/")
    old = send_signed(f"{gateway.url}/{bucket}/{key}0000.bin", first)
    assert old.status == 403 and b"<Code>ExpiredToken</Code>" in old.body, old.body
    print(
        f"{source}: {summary['epochs']} epochs in {summary['seconds']} s, {gateway.accepted} requests, "
        f"{len(gateway.keys_seen)} keys, {len(gateway.refused) - 1} refused during the run, endpoint calls {calls}"
    )
