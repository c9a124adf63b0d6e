"""Execute every notebook in this folder against one local S3 server (used by `nox -s notebooks`).

    python -P notebooks/run.py [NAME.ipynb ...]

Starts SeaweedFS (s3dlio.testing.LocalS3Server), exports its AWS_* variables so each notebook's
kernel talks to it, runs the notebooks top to bottom with nbclient (in a scratch directory, so the
installed s3dlio is imported), prints the time each took, and fails on the first cell that raises.
Outputs are not written back: the committed notebooks stay stripped.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from s3dlio.testing import LocalS3Server

HERE = Path(__file__).resolve().parent
LIMIT_S = 120  # each notebook must finish well within this on a 2-core machine


def main(names: list[str]) -> int:
    books = [HERE / n for n in names] if names else sorted(HERE.glob("*.ipynb"))
    if not books:
        print("no notebooks found", file=sys.stderr)
        return 1
    with LocalS3Server() as server, tempfile.TemporaryDirectory() as scratch:
        server.apply_env()
        for path in books:
            book = nbformat.read(path, as_version=4)
            client = NotebookClient(
                book, timeout=LIMIT_S, kernel_name="python3", resources={"metadata": {"path": scratch}}
            )
            t0 = time.monotonic()
            client.execute()
            took = time.monotonic() - t0
            print(f"{path.name:32s} ok  {took:6.1f} s", flush=True)
            if took > LIMIT_S:
                print(f"{path.name} took {took:.0f} s, over the {LIMIT_S} s budget", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
