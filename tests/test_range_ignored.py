"""A server that ignores ``Range`` (HTTP allows it: a 200 with the whole object). SeaweedFS did
so once under load in CI. s3dlio must still hand back exactly the bytes asked for, on every read
path that sends a ranged GET: ``get_range``, ``get`` split into ranges, and the seekable reader.

The server here is a real HTTP server on 127.0.0.1 that answers every GET of one object with the
whole object (200, Content-Length, ETag, no Content-Range); it checks no signature. It is not an
S3 stand-in for anything else: only GETs are answered."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import s3dlio
from helpers import MiB

DATA = np.random.default_rng(7).integers(0, 256, 20 * MiB, dtype=np.uint8).tobytes()


class _WholeObject(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ranged: list[str] = []  # noqa: RUF012  (shared by the handler instances of one test)

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/bkt/obj":
            body = b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
        else:
            body = DATA
            if self.headers.get("Range"):
                self.ranged.append(self.headers["Range"])
            self.send_response(200)  # Range ignored
            self.send_header("ETag", '"whole-object-v1"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def whole_server() -> Iterator[s3dlio.StorageConfig]:
    _WholeObject.ranged = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WholeObject)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield s3dlio.StorageConfig(
            endpoint_url=f"http://127.0.0.1:{srv.server_address[1]}",
            access_key_id="k",
            secret_access_key="s",
            region="us-east-1",
            max_attempts=1,
        )
    finally:
        srv.shutdown()
        srv.server_close()


def test_get_range_of_a_whole_object_answer(whole_server: s3dlio.StorageConfig) -> None:
    for off, n in [(0, 1), (1, 100), (5 * MiB + 3, MiB), (len(DATA) - 7, 7), (len(DATA) - 7, None)]:
        got = s3dlio.get_range("s3://bkt/obj", off, n, config=whole_server)
        want = DATA[off:] if n is None else DATA[off : off + n]
        assert bytes(got) == want, (off, n)
    assert _WholeObject.ranged, "no ranged GET reached the server"


def test_get_split_into_ranges_of_whole_object_answers(whole_server: s3dlio.StorageConfig) -> None:
    rng_cfg = s3dlio.RangeEngineConfig(chunk_size=MiB, min_split_size=2 * MiB)
    assert bytes(s3dlio.get("s3://bkt/obj", range_engine=rng_cfg, config=whole_server)) == DATA
    assert len(_WholeObject.ranged) > 1, _WholeObject.ranged


def test_reader_seeks_over_whole_object_answers(whole_server: s3dlio.StorageConfig) -> None:
    rng = np.random.default_rng(3)
    cfg = s3dlio.RangeEngineConfig(chunk_size=MiB)
    with s3dlio.open("s3://bkt/obj", range_engine=cfg, readahead=1, config=whole_server) as f:
        assert f.read(10) == DATA[:10]
        for _ in range(12):
            off = int(rng.integers(0, len(DATA)))
            n = int(rng.choice([1, 70_000, 1_500_000, 3 * MiB]))
            f.seek(off - f.tell(), os.SEEK_CUR)
            assert f.read(n) == DATA[off : off + n], (off, n)
