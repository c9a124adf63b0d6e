"""A real TCP proxy in front of the test S3 server that injects network and HTTP faults.

Stdlib only, one thread per client connection. The proxy speaks just enough HTTP/1.1 to find
request and response boundaries (request line, headers, ``Content-Length`` or chunked bodies), so
it can count requests and switch behaviour between two requests on a keep-alive connection.
Nothing here imitates S3: in ``pass`` mode every byte goes to the real server and back.

Modes (``proxy.set_mode(mode, count=None, match=None, stall_after=65536, rate=1048576)``):

``pass``        forward requests and responses unchanged.
``blackhole``   read requests (and their bodies), never answer, keep the socket open.
``stall_body``  forward the response headers and the first ``stall_after`` body bytes, then send
                nothing more while keeping the socket open.
``reset_body``  forward the response headers and the first ``stall_after`` body bytes, then reset
                the connection (TCP RST) mid-body.
``close_body``  the same, but close the connection cleanly (FIN) mid-body: a short body.
``reset``       close the client connection with a TCP RST (``SO_LINGER`` 0).
``http503``     answer with ``503 SlowDown`` (S3 XML error) and ``Connection: close``.
``http500``     the same with ``500 InternalError``.
``http404_nosuchupload`` the same with ``404 NoSuchUpload`` (what S3 answers a retried
                CompleteMultipartUpload whose first attempt already completed the upload).
``corrupt_body`` forward the request with one byte of its body flipped (the first byte of the
                first body segment of a Content-Length body), as a faulty NIC or middlebox would; the
                response passes.
``slow_body``   forward the request and the response headers unchanged, then relay the response body
                at about ``rate`` bytes per second (a slow link), so a test can act while a read is
                in flight.
``drop_response`` forward the request to the server and read the server's whole response, then
                close the client connection with a TCP RST instead of relaying it: the server did
                the work, the client never hears of it (a response lost on the network).

``count`` limits a fault to the next ``count`` matching requests (then they pass); ``match`` is a
regular expression searched in the request line (``r"[?&]partNumber=2[& ]"``, ``"^GET "``)
selecting which requests are faulted; ``then`` is the mode matching requests get once ``count``
is used up (``set_mode("pass", count=2, then="blackhole", match=...)``: two matching requests
pass, the ones after them are blackholed) (``set_mode("drop_response", count=1, then="http404_nosuchupload")``). Without ``match`` and ``count``, ``reset`` acts on a
connection as soon as it is accepted; every other fault acts on a parsed request, so
``requests_seen`` and ``faults_injected`` count blackholed requests too.

Usage::

    with FaultProxy(server.endpoint) as proxy:           # pass mode
        cfg = StorageConfig(endpoint_url=proxy.endpoint, max_attempts=1, ...)
        proxy.set_mode("http503", count=2)                # the next two requests get 503
        proxy.set_mode("blackhole", match=r"[?&]partNumber=3[& ]")
        proxy.set_mode("slow_body", rate=2 * 1024 * 1024)  # bodies at ~2 MiB/s
        proxy.set_mode("drop_response", match=r"^POST .*uploadId=", count=1)
"""

from __future__ import annotations

import re
import select
import socket
import struct
import threading
import time
from typing import Self

__all__ = ["MODES", "FaultProxy"]

MODES = (
    "pass",
    "blackhole",
    "stall_body",
    "reset_body",
    "close_body",
    "reset",
    "http503",
    "http500",
    "http404_nosuchupload",
    "corrupt_body",
    "slow_body",
    "drop_response",
)
_ERRORS = {
    "http503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "http500": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "http404_nosuchupload": (404, "Not Found", "NoSuchUpload", "The specified upload does not exist."),
}
_CHUNK = 256 * 1024


class _Closed(Exception):
    """The peer closed the connection (or the proxy is stopping)."""


class _Reader:
    """Buffered reads from a socket: lines, exact byte counts, or 'whatever is there'."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(_CHUNK)
        if not data:
            raise _Closed
        self.buf += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > 64 * 1024:
                raise _Closed  # not HTTP
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def head(self) -> tuple[bytes, list[tuple[str, str]], bytes]:
        """Read a start line and headers; returns (start line, headers, raw head bytes)."""
        first = self.line()
        while first == b"\r\n":  # tolerate stray CRLF between messages
            first = self.line()
        raw = [first]
        headers = []
        while True:
            ln = self.line()
            raw.append(ln)
            if ln == b"\r\n":
                break
            name, _, value = ln.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return first.rstrip(b"\r\n"), headers, b"".join(raw)

    def some(self, limit: int) -> bytes:
        if not self.buf:
            self._fill()
        out, self.buf = self.buf[:limit], self.buf[limit:]
        return out


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _copy_body(rd: _Reader, headers: list[tuple[str, str]], sink, *, until_close: bool = False) -> bool:
    """Copy one message body from ``rd`` to ``sink(bytes)``; False when it was delimited by close."""
    te = (_header(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        while True:
            size_line = rd.line()
            sink(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    ln = rd.line()
                    sink(ln)
                    if ln == b"\r\n":
                        return True
            _copy_exact(rd, size + 2, sink)
    length = _header(headers, "content-length")
    if length is not None:
        _copy_exact(rd, int(length), sink)
        return True
    if until_close:
        try:
            while True:
                sink(rd.some(_CHUNK))
        except _Closed:
            return False
    return True


def _copy_exact(rd: _Reader, n: int, sink) -> None:
    while n > 0:
        data = rd.some(min(n, _CHUNK))
        sink(data)
        n -= len(data)


def _alive(sock: socket.socket) -> bool:
    """False when the peer has closed (or reset) an idle connection."""
    r, _, _ = select.select([sock], [], [], 0)
    if not r:
        return True
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except OSError:
        return False


def _response_has_body(method: bytes, status: int) -> bool:
    return not (method == b"HEAD" or 100 <= status < 200 or status in (204, 304))


class FaultProxy:
    """TCP proxy on 127.0.0.1 forwarding to ``upstream`` (``"http://host:port"`` or a (host, port))."""

    def __init__(self, upstream: str | tuple[str, int], mode: str = "pass", **kw: object) -> None:
        if isinstance(upstream, str):
            hostport = upstream.split("://", 1)[-1].rstrip("/")
            host, _, port = hostport.rpartition(":")
            upstream = (host, int(port))
        self.upstream = upstream
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.requests_seen = 0
        #: (method, path, Range header) of every request, in arrival order.
        self.request_log: list[tuple[str, str, str | None]] = []
        #: The Authorization header of every request (None when absent), in arrival order.
        self.auth_log: list[str | None] = []
        #: Most requests that were waiting for / receiving a response at the same time.
        self.max_in_flight = 0
        self._in_flight = 0
        self.faults_injected = 0
        self.connections_seen = 0
        self.set_mode(mode, **kw)  # type: ignore[arg-type]
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="faultproxy-accept", daemon=True
        )
        self._accept_thread.start()

    # -- control ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(
        self,
        mode: str,
        *,
        count: int | None = None,
        match: str | None = None,
        stall_after: int = 65536,
        rate: int = 1024 * 1024,
        then: str | None = None,
    ) -> None:
        if mode not in MODES or (then is not None and then not in MODES):
            raise ValueError(f"unknown fault mode {mode!r}; one of {MODES}")
        if rate <= 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate}")
        with self._lock:
            self.mode = mode
            self._remaining = count
            self._match = re.compile(match.encode()) if match else None
            self.stall_after = stall_after
            self.rate = rate
            self._then = then

    def _fault_for(self, request_line: bytes | None) -> str:
        """The fault to apply to this request (or connection when ``request_line`` is None)."""
        with self._lock:
            if self.mode == "pass" and self._then is None:
                return "pass"
            if request_line is None:  # at accept: only unconditional connection-level faults
                if self.mode == "reset" and self._match is None and self._remaining is None:
                    self.faults_injected += 1
                    return self.mode
                return "pass"
            if self._match is not None and not self._match.search(request_line):
                return "pass"
            if self._remaining is not None:
                if self._remaining <= 0:
                    if self._then is None:
                        return "pass"
                    self.mode, self._remaining, self._then = self._then, None, None
                else:
                    self._remaining -= 1
            if self.mode == "pass":  # `pass` with `then`: still counting down
                return "pass"
            self.faults_injected += 1
            return self.mode

    def stop(self) -> None:
        """Close every socket and join every thread (idempotent)."""
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._kill(s)
        self._accept_thread.join(timeout=5)
        for t in list(self._threads):
            t.join(timeout=5)

    close = stop

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plumbing --------------------------------------------------------------------------------

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            self._socks.add(s)
        return s

    def _kill(self, s: socket.socket, rst: bool = False) -> None:
        with self._lock:
            self._socks.discard(s)
        try:
            if rst:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            with self._lock:
                self.connections_seen += 1
            self._track(client)
            t = threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True)
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()]
                self._threads.append(t)
            t.start()
        self._listener.close()

    def _hang(self, client: socket.socket) -> None:
        """Keep the connection open, reading and discarding, until the client closes or stop()."""
        client.settimeout(0.1)
        while not self._stop.is_set():
            try:
                if not client.recv(_CHUNK):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        in_flight = False
        try:
            first = self._fault_for(None)
            if first == "reset":
                self._kill(client, rst=True)
                return
            rd = _Reader(client)
            up_rd: _Reader | None = None
            while not self._stop.is_set():
                try:
                    request_line, headers, raw_head = rd.head()
                except (_Closed, OSError):
                    return
                parts = request_line.decode("latin-1").split(" ")
                with self._lock:
                    self.requests_seen += 1
                    self.request_log.append(
                        (parts[0], parts[1] if len(parts) > 1 else "", _header(headers, "range"))
                    )
                    self.auth_log.append(_header(headers, "authorization"))
                method = request_line.split(b" ", 1)[0]
                expect = (_header(headers, "expect") or "").lower() == "100-continue"
                if expect:  # answer 100 ourselves; the upstream never sees Expect
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    raw_head = (
                        b"".join(
                            ln + b"\r\n"
                            for ln in raw_head.split(b"\r\n")[:-2]
                            if not ln.lower().startswith(b"expect:")
                        )
                        + b"\r\n"
                    )
                fault = self._fault_for(request_line)
                if fault == "reset":
                    self._kill(client, rst=True)
                    return
                if fault == "blackhole":
                    self._hang(client)
                    return
                if fault in _ERRORS:
                    _copy_body(rd, headers, lambda b: None)  # consume, so closing sends FIN, not RST
                    client.sendall(self._error_response(fault, request_line))
                    client.shutdown(socket.SHUT_WR)
                    self._hang(client)
                    return
                if upstream is not None and not _alive(upstream):
                    self._kill(upstream)  # the server closed its idle keep-alive connection
                    upstream = None
                if upstream is None:
                    upstream = self._track(socket.create_connection(self.upstream, timeout=60))
                    upstream.settimeout(None)
                    up_rd = _Reader(upstream)
                assert up_rd is not None
                with self._lock:
                    self._in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self._in_flight)
                in_flight = True
                upstream.sendall(raw_head)
                if fault == "corrupt_body":
                    flipped = [False]

                    def corrupt(
                        b: bytes, up: socket.socket = upstream, flipped: list[bool] = flipped
                    ) -> None:
                        if b and not flipped[0]:
                            b = bytes([b[0] ^ 0xFF]) + b[1:]
                            flipped[0] = True
                        up.sendall(b)

                    _copy_body(rd, headers, corrupt)
                else:
                    _copy_body(rd, headers, upstream.sendall)
                # Relay the response (skipping any interim 1xx the upstream sends).
                while True:
                    status_line, rheaders, rraw = up_rd.head()
                    status = int(status_line.split(b" ")[1])
                    if status == 100:
                        continue
                    break
                if fault == "drop_response":
                    if _response_has_body(method, status):
                        _copy_body(up_rd, rheaders, lambda b: None, until_close=True)
                    self._kill(client, rst=True)  # the server answered; the client never hears it
                    return
                if fault in ("stall_body", "reset_body", "close_body") and _response_has_body(method, status):
                    client.sendall(rraw)
                    budget = [self.stall_after]

                    def sink(b: bytes, budget: list[int] = budget) -> None:
                        if len(b) > budget[0]:
                            client.sendall(b[: budget[0]])
                            budget[0] = 0
                            raise _Closed
                        client.sendall(b)
                        budget[0] -= len(b)

                    try:
                        complete = _copy_body(up_rd, rheaders, sink, until_close=True)
                    except _Closed:
                        if budget[0] > 0:
                            return  # the upstream closed early; nothing to stall
                        self._kill(upstream)
                        upstream = None
                        if fault == "stall_body":
                            self._hang(client)  # headers and stall_after bytes sent, then nothing
                        else:
                            self._kill(client, rst=fault == "reset_body")  # cut mid-body
                        return
                    if not complete:
                        return
                    continue  # the whole body fit under stall_after

                # The request stops counting as in flight just before its last response byte is
                # relayed: once the client has the whole body it may send its next request at
                # once, before this thread gets back from sendall.
                def finish() -> None:
                    nonlocal in_flight
                    if in_flight:
                        in_flight = False
                        with self._lock:
                            self._in_flight -= 1

                client.sendall(rraw)
                send = client.sendall if fault != "slow_body" else self._throttled(client, self.rate)
                complete = True
                if _response_has_body(method, status):
                    length = _header(rheaders, "content-length")
                    chunked = "chunked" in (_header(rheaders, "transfer-encoding") or "").lower()
                    left = [int(length)] if length is not None and not chunked else None

                    def relay(b: bytes, left: list[int] | None = left, send=send) -> None:  # type: ignore[no-untyped-def]
                        if left is not None:
                            left[0] -= len(b)
                            if left[0] <= 0:
                                finish()
                        send(b)

                    complete = _copy_body(up_rd, rheaders, relay, until_close=True)
                finish()
                conn_hdr = (_header(rheaders, "connection") or "").lower()
                if not complete or conn_hdr == "close":
                    return
        except (_Closed, OSError, ValueError, IndexError):
            return
        finally:
            if in_flight:
                with self._lock:
                    self._in_flight -= 1
            if upstream is not None:
                self._kill(upstream)
            self._kill(client)

    def _throttled(self, client: socket.socket, rate: int):  # type: ignore[no-untyped-def]
        """A ``sendall`` for ``client`` that paces what it sends to about ``rate`` bytes/s."""
        start = time.monotonic()
        sent = [0]
        piece = max(1024, rate // 50)

        def send(b: bytes) -> None:
            view = memoryview(b)
            while view:
                if self._stop.is_set():
                    raise _Closed
                chunk, view = view[:piece], view[piece:]
                client.sendall(chunk)
                sent[0] += len(chunk)
                ahead = start + sent[0] / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

        return send

    @staticmethod
    def _error_response(fault: str, request_line: bytes) -> bytes:
        status, reason, code, message = _ERRORS[fault]
        target = request_line.split(b" ")[1].decode("latin-1") if b" " in request_line else "/"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{target.split('?')[0]}</Resource><RequestId>faultproxy-{time.monotonic_ns()}</RequestId>"
            "</Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            "Server: faultproxy\r\n\r\n"
        ).encode()
        return head + body
