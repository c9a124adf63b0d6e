"""upload/download stream large files: a tree of 4 x 1 GiB files goes to S3 and back with peak
memory bounded by about max_concurrency x part_size, not by the file sizes (the release held
whole files, 64 at a time)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import MiB

GiB = 1024 * MiB

CHILD = textwrap.dedent(
    """
    import sys
    import s3dlio

    def hwm():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

    src, uri, dst = sys.argv[1:4]
    MiB = 1024 * 1024
    cfg = s3dlio.StorageConfig(max_concurrency=4, part_size=8 * MiB, multipart_threshold=8 * MiB)
    s3dlio.stat  # the extension is loaded; warm the runtime with a small call
    s3dlio.list(uri, config=cfg)
    before = hwm()
    n_up = s3dlio.upload(src, uri, config=cfg)
    n_down = s3dlio.download(uri, dst, config=cfg)
    print(f"FILES {n_up} {n_down}")
    print(f"GROWTH {hwm() - before}")
    """
)


def _write(path: Path, seed: int, size: int) -> str:
    """A file of `size` bytes: a 4 MiB random block, varied per 4 MiB, so parts differ."""
    block = os.urandom(4 * MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            chunk = (seed * 100_000 + i).to_bytes(8, "little") + block[8:]
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.scale  # minutes: `nox -s scale`
@pytest.mark.timeout(900)
def test_upload_and_download_of_large_files_use_bounded_memory(bucket: str, disk_dir: str) -> None:
    """4 x 1 GiB through upload and download with max_concurrency=4, part_size=8 MiB: the child's
    peak RSS grows by less than 1 GiB (generous: the parts in flight are 32 MiB), and every file
    round-trips exactly."""
    src, dst = Path(disk_dir) / "src", Path(disk_dir) / "dst"
    (src / "sub").mkdir(parents=True)
    names = ["a.bin", "b.bin", "sub/c.bin", "sub/d.bin"]
    digests = {n: _write(src / n, i, GiB) for i, n in enumerate(names)}
    out = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, str(src), f"s3://{bucket}/big/", str(dst)],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert report["FILES"] == "4 4"
    growth = int(report["GROWTH"])
    print(f"peak RSS growth: {growth / MiB:.0f} MiB")
    assert growth < GiB, f"peak RSS grew by {growth / MiB:.0f} MiB"
    for n in names:
        assert _sha(dst / n) == digests[n], n
