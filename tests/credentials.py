"""Temporary credentials for the tests: keys that live a few seconds, the endpoints that issue them,
and a token gateway that enforces them in front of the real S3 server.

SeaweedFS (the test server) has static identities and refuses any request carrying
``X-Amz-Security-Token``, so it cannot play a store that issues temporary credentials. Here:

* :class:`KeyIssuer` mints a fresh temporary key (access key, secret, session token, expiration)
  every ``period`` seconds, each valid for ``lifetime`` seconds, and writes the newest one to a
  ``credential_process`` JSON file (atomically).
* :class:`CredentialEndpoints` serves the newest key as the container-credentials endpoint
  (``AWS_CONTAINER_CREDENTIALS_FULL_URI``, JSON) and as STS ``AssumeRoleWithWebIdentity``
  (``AWS_ENDPOINT_URL_STS``, awsQuery XML), checking the authorization token / web-identity token.
* :class:`TokenGateway` is an HTTP proxy that verifies each request's SigV4 signature against the
  temporary secret of its access key, the session token against that key's, and refuses an unknown
  key (403 ``InvalidAccessKeyId``), a bad signature (403 ``SignatureDoesNotMatch``), a wrong token
  (403 ``InvalidToken``) or a key past its expiration plus ``grace`` (403 ``ExpiredToken``), as S3
  does. An accepted request is re-signed (botocore SigV4) with the server's own keys, without the
  session token, and forwarded; the response is relayed. It counts refusals and the keys it saw.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ROLE_ARN = "arn:aws:iam::123456789012:role/s3dlio-reader"
WEB_IDENTITY_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzM2RsaW8tdGVzdCJ9."  # an unsigned JWT
CONTAINER_AUTH_TOKEN = "s3dlio-container-token"


def iso8601(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(frozen=True)
class TempKey:
    access_key: str
    secret_key: str
    token: str
    expires: float  # epoch seconds, a whole second (as the ISO 8601 Expiration says)

    def json(self) -> dict[str, Any]:
        return {
            "AccessKeyId": self.access_key,
            "SecretAccessKey": self.secret_key,
            "Token": self.token,
            "Expiration": iso8601(self.expires),
        }


class KeyIssuer:
    """Mints a key every ``period`` s, valid ``lifetime`` s (whole seconds, rounded down); keeps
    every key it issued so the gateway can tell an expired key from an unknown one."""

    def __init__(self, lifetime: float = 3.0, period: float = 1.0, process_file: str | None = None) -> None:
        self.lifetime = lifetime
        self.period = period
        self.process_file = process_file
        self._keys: dict[str, TempKey] = {}
        self._newest: TempKey | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _new_key(expires: float) -> TempKey:
        return TempKey(
            access_key="ASIA" + secrets.token_hex(8).upper(),
            secret_key=secrets.token_urlsafe(30),
            token="FwoG" + secrets.token_urlsafe(48),
            expires=float(int(expires)),
        )

    def issue_expired(self, ago: float = 5.0) -> TempKey:
        """A key this issuer knows that expired ``ago`` seconds ago (never handed out)."""
        key = self._new_key(time.time() - ago)
        with self._lock:
            self._keys[key.access_key] = key
        return key

    def _mint(self) -> TempKey:
        key = self._new_key(time.time() + self.lifetime)
        with self._lock:
            self._keys[key.access_key] = key
            self._newest = key
        if self.process_file is not None:
            tmp = f"{self.process_file}.tmp"
            with open(tmp, "w") as f:
                json.dump({"Version": 1, **self.json_for_process(key)}, f)
            os.replace(tmp, self.process_file)
        return key

    @staticmethod
    def json_for_process(key: TempKey) -> dict[str, Any]:
        d = key.json()
        d["SessionToken"] = d.pop("Token")
        return d

    def newest(self) -> TempKey:
        with self._lock:
            assert self._newest is not None, "issuer not started"
            return self._newest

    def lookup(self, access_key: str) -> TempKey | None:
        with self._lock:
            return self._keys.get(access_key)

    def issued(self) -> list[TempKey]:
        with self._lock:
            return list(self._keys.values())

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._mint()

    def __enter__(self) -> KeyIssuer:
        self._mint()
        self._thread = threading.Thread(target=self._run, name="key-issuer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def _serving(handler: type[BaseHTTPRequestHandler], owner: Any) -> Any:
    server = _Server(("127.0.0.1", 0), handler)
    server.owner = owner  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response_only(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""


# -------------------------------------------------------------------------------------------------
# Credential endpoints
# -------------------------------------------------------------------------------------------------


class _EndpointHandler(_Handler):
    def do_GET(self) -> None:
        ep: CredentialEndpoints = self.server.owner  # type: ignore[attr-defined]
        if self.path != "/container-credentials":
            self.reply(404, b"not found")
            return
        if self.headers.get("Authorization") != CONTAINER_AUTH_TOKEN:
            self.reply(401, b'{"Code":"Unauthorized"}', {"Content-Type": "application/json"})
            return
        key = ep.issuer.newest()
        ep.count("container")
        self.reply(200, json.dumps(key.json()).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        ep: CredentialEndpoints = self.server.owner  # type: ignore[attr-defined]
        form = urllib.parse.parse_qs(self.body().decode())
        one = {k: v[0] for k, v in form.items()}
        if one.get("Action") != "AssumeRoleWithWebIdentity":
            self.reply(400, _sts_error("InvalidAction", f"unsupported action {one.get('Action')!r}"))
            return
        if one.get("WebIdentityToken") != WEB_IDENTITY_TOKEN or one.get("RoleArn") != ROLE_ARN:
            self.reply(400, _sts_error("InvalidIdentityToken", "token or role not recognised"))
            return
        key = ep.issuer.newest()
        ep.count("sts")
        session = escape(one.get("RoleSessionName", "session"))
        xml = (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult>"
            f"<SubjectFromWebIdentityToken>s3dlio-test</SubjectFromWebIdentityToken>"
            "<AssumedRoleUser>"
            f"<Arn>arn:aws:sts::123456789012:assumed-role/s3dlio-reader/{session}</Arn>"
            f"<AssumedRoleId>AROAEXAMPLE:{session}</AssumedRoleId>"
            "</AssumedRoleUser>"
            "<Credentials>"
            f"<AccessKeyId>{key.access_key}</AccessKeyId>"
            f"<SecretAccessKey>{escape(key.secret_key)}</SecretAccessKey>"
            f"<SessionToken>{escape(key.token)}</SessionToken>"
            f"<Expiration>{iso8601(key.expires)}</Expiration>"
            "</Credentials>"
            "<Audience>sts.amazonaws.com</Audience>"
            "</AssumeRoleWithWebIdentityResult>"
            f"<ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>"
        )
        self.reply(200, xml.encode(), {"Content-Type": "text/xml"})


def _sts_error(code: str, message: str) -> bytes:
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>"
    ).encode()


class CredentialEndpoints:
    """``/container-credentials`` (GET, JSON) and STS (POST ``/``, AssumeRoleWithWebIdentity)."""

    def __init__(self, issuer: KeyIssuer) -> None:
        self.issuer = issuer
        self.calls: dict[str, int] = {"container": 0, "sts": 0}
        self._lock = threading.Lock()
        self._cm: Any = None
        self.url = ""

    def count(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1

    def __enter__(self) -> CredentialEndpoints:
        self._cm = _serving(_EndpointHandler, self)
        server = self._cm.__enter__()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


# -------------------------------------------------------------------------------------------------
# The token gateway
# -------------------------------------------------------------------------------------------------


def s3_error(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>"
    ).encode()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_signature(
    secret: str,
    method: str,
    raw_path: str,
    headers: Callable[[str], str],
    signed: list[str],
    payload: str,
    amz_date: str,
    scope: str,
) -> str:
    """The SigV4 signature of a request as S3 computes it (no double-encoding of the path)."""
    path, _, query = raw_path.partition("?")
    pairs = sorted(p.partition("=")[::2] for p in query.split("&") if p)
    canonical = "\n".join(
        [
            method,
            path,
            "&".join(f"{k}={v}" for k, v in pairs),
            "".join(f"{h}:{' '.join(headers(h).split())}\n" for h in signed),
            ";".join(signed),
            payload,
        ]
    )
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, terminal = scope.split("/")
    k = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, terminal):
        k = _hmac(k, part)
    return hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()


# Hop-by-hop headers and the client's own signature: not forwarded.
_DROP = {
    "authorization",
    "x-amz-security-token",
    "x-amz-date",
    "host",
    "connection",
    "keep-alive",
    "content-length",
    "transfer-encoding",
    "expect",
    "user-agent",
}


class _GatewayHandler(_Handler):
    _upstream: http.client.HTTPConnection | None = None

    def handle_any(self) -> None:
        gw: TokenGateway = self.server.owner  # type: ignore[attr-defined]
        body = self.body()
        refusal = gw.check(self.command, self.path, self.headers, body)
        if refusal is not None:
            code, message = refusal
            self.reply(403, s3_error(code, message), {"Content-Type": "application/xml"})
            return
        fwd = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
        req = AWSRequest(method=self.command, url=gw.upstream + self.path, data=body, headers=fwd)
        SigV4Auth(Credentials(gw.admin_key, gw.admin_secret), "s3", gw.region).add_auth(req)
        for _attempt in range(2):  # a kept-alive upstream connection the server closed: redial once
            if self._upstream is None:
                host = urllib.parse.urlsplit(gw.upstream).netloc
                self._upstream = http.client.HTTPConnection(host, timeout=30)
            try:
                self._upstream.request(
                    self.command, self.path, body=body or None, headers=dict(req.headers.items())
                )
                resp = self._upstream.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
        else:
            self.reply(502, s3_error("BadGateway", "upstream failed"))
            return
        headers = {
            k: v
            for k, v in resp.getheaders()
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")
        }
        if self.command == "HEAD":
            self.send_response_only(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding"):
                    self.send_header(k, v)
            self.end_headers()
        else:
            self.reply(resp.status, data, headers)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any

    def finish(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        super().finish()


class TokenGateway:
    """The S3 proxy that accepts only live temporary keys (see the module docstring)."""

    def __init__(
        self,
        issuer: KeyIssuer,
        upstream: str,
        admin_key: str,
        admin_secret: str,
        region: str = "us-east-1",
        grace: float = 1.0,
    ) -> None:
        self.issuer = issuer
        self.upstream = upstream
        self.admin_key = admin_key
        self.admin_secret = admin_secret
        self.region = region
        self.grace = grace
        self.accepted = 0
        self.refused: list[tuple[str, str, str]] = []  # (code, access key, message)
        self.keys_seen: set[str] = set()
        self._lock = threading.Lock()
        self._cm: Any = None
        self.url = ""

    def check(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[str, str] | None:
        """None when the request may pass, else the S3 error code and message it gets."""
        refusal, ak = self._verdict(method, raw_path, headers, body)
        with self._lock:
            if refusal is None:
                self.accepted += 1
                self.keys_seen.add(ak)
            else:
                self.refused.append((refusal[0], ak, refusal[1]))
        return refusal

    def _verdict(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[tuple[str, str] | None, str]:
        auth = headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return ("AccessDenied", "a SigV4 Authorization header is required"), ""
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
        ak, _, scope = fields.get("Credential", "").partition("/")
        key = self.issuer.lookup(ak)
        if key is None:
            return (
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            ), ak
        if time.time() > key.expires + self.grace:
            return ("ExpiredToken", "The provided token has expired."), ak
        if headers.get("X-Amz-Security-Token") != key.token:
            return ("InvalidToken", "The provided token is malformed or otherwise invalid."), ak
        signed = fields.get("SignedHeaders", "").split(";")
        if "x-amz-security-token" not in signed:
            return ("AccessDenied", "the session token is not signed"), ak
        payload = headers.get("X-Amz-Content-SHA256") or hashlib.sha256(body).hexdigest()
        expected = sigv4_signature(
            key.secret_key,
            method,
            raw_path,
            lambda h: ",".join(headers.get_all(h) or []),
            signed,
            payload,
            headers.get("X-Amz-Date", ""),
            scope,
        )
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            return ("SignatureDoesNotMatch", "The request signature we calculated does not match."), ak
        return None, ak

    def __enter__(self) -> TokenGateway:
        self._cm = _serving(_GatewayHandler, self)
        server = self._cm.__enter__()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


@dataclass
class Signed:
    """A request signed by botocore with a given temporary key, sent straight to the gateway."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def send_signed(url: str, key: TempKey, region: str = "us-east-1", secret: str | None = None) -> Signed:
    """GET ``url`` signed with ``key`` (its secret, or ``secret`` to forge a bad signature)."""
    req = AWSRequest(method="GET", url=url, headers={"X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest()})
    SigV4Auth(Credentials(key.access_key, secret or key.secret_key, key.token), "s3", region).add_auth(req)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers=dict(req.headers.items()))
        resp = conn.getresponse()
        return Signed(resp.status, resp.read(), dict(resp.getheaders()))
    finally:
        conn.close()
