"""Profile one benchmark client on one workload with ``perf`` (the profiles in docs/benchmarks.md).

    python -P benchmarks/profile_client.py CLIENT KIND COUNT SIZE OUT.perf
    perf report -i OUT.perf --no-children --sort sym --stdio -g none | head -40

Starts SeaweedFS pinned to core 1, writes COUNT objects of SIZE bytes (for ``get`` and
``epoch``; files under ``.bench/profile/`` for ``file`` and ``direct``), then runs ``bench_client.py CLIENT KIND`` pinned to core 0 under
``perf record -F 1999 -g``, exactly as ``bench.py`` runs it (set-up first, then the timed work).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import s3dlio
from s3dlio.testing import LocalS3Server

HERE = Path(__file__).resolve().parent


def main() -> int:
    client, kind, n, size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with LocalS3Server(cpu=1) as srv:
        srv.apply_env()
        assert srv.pid is not None
        subprocess.run(["taskset", "-a", "-p", "-c", "1", str(srv.pid)], check=True, capture_output=True)
        s3dlio.create_bucket("s3://prof")
        prefix = "s3://prof/d/"
        uris = [f"{prefix}{i:05d}" for i in range(n)]
        spec = {"uris": uris, "size": size, "prefix": prefix, "endpoint": srv.endpoint, "batch_size": 64}
        if kind in ("get", "epoch"):
            block = os.urandom(size)
            s3dlio.put_many([(u, i.to_bytes(8, "little") + block[8:]) for i, u in enumerate(uris)])
        elif kind in ("file", "direct"):  # files on the disk under .bench/profile/
            folder = HERE.parent / ".bench" / "profile"
            folder.mkdir(parents=True, exist_ok=True)
            block = os.urandom(size)
            for i in range(n):
                (folder / f"{i:05d}").write_bytes(i.to_bytes(8, "little") + block[8:])
            uris = [f"{kind}://{folder}/{i:05d}" for i in range(n)]
            spec.update(uris=uris, prefix=f"{kind}://{folder}/")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        cmd = ["perf", "record", "-F", "1999", "-g", "-o", out, "--", "taskset", "-c", "0",
               sys.executable, "-P", str(HERE / "bench_client.py"), client, kind, f.name]  # fmt: skip
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdin is not None
        assert p.stdout is not None
        print(p.stdout.readline().strip())
        p.stdin.write("go\n")
        p.stdin.flush()
        print(p.stdout.readline().strip())
        p.wait()
        os.unlink(f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
