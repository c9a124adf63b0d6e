"""The ``s3dlio`` command, run as a user would: a real process, from another working directory,
with relative local paths, against the real servers the suite starts."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

import s3dlio
from faultproxy import FaultProxy
from helpers import interrupt_cli

MiB = 1024 * 1024


def run(
    *args: str,
    cwd: Path,
    stdin: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(
        [sys.executable, "-P", "-m", "s3dlio", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
    )
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stderr.decode())
    return p


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "s3dlio"
    assert script.exists(), "pip install did not install the s3dlio command"
    p = subprocess.run([str(script), "--version"], capture_output=True, check=True, timeout=60)
    assert p.stdout.decode().startswith("s3dlio ")


def test_cp_tree_ls_stat_cat_du_rm_with_relative_paths(root: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "ds" / "sub").mkdir(parents=True)
    (work / "ds" / "a.txt").write_bytes(b"hello\n")
    big = os.urandom(3 * MiB + 5)
    (work / "ds" / "sub" / "big.bin").write_bytes(big)
    (work / "ds2.txt").write_bytes(b"sibling")
    run("cp", "-r", "ds", root + "ds", "--part-size", str(5 * MiB), cwd=work)
    run("cp", "ds2.txt", root + "ds2.txt", cwd=work)

    # ls takes the prefix as a string, as listings do (`ds` lists ds2.txt too); `ds/` is the directory.
    listed = run("ls", "-r", root + "ds", cwd=work).stdout.decode().split()
    assert listed == [root + "ds/a.txt", root + "ds/sub/big.bin", root + "ds2.txt"]
    one_level = sorted(run("ls", root + "ds/", cwd=work).stdout.decode().split())
    assert one_level == [root + "ds/a.txt", root + "ds/sub/"]
    records = [json.loads(ln) for ln in run("--json", "ls", "-r", root + "ds/", cwd=work).stdout.splitlines()]
    assert [(r["uri"], r["size"]) for r in records] == [
        (root + "ds/a.txt", 6),
        (root + "ds/sub/big.bin", len(big)),
    ]
    assert run("ls", root + "ds/*.txt", cwd=work).stdout.decode().split() == [root + "ds/a.txt"]
    st = json.loads(run("--json", "stat", root + "ds/sub/big.bin", cwd=work).stdout)
    assert st["size"] == len(big) and st["is_dir"] is False

    assert run("cat", root + "ds/a.txt", cwd=work).stdout == b"hello\n"
    assert run("cat", "--range", "1:3", root + "ds/a.txt", cwd=work).stdout == b"ell"
    assert run("cat", root + "ds/sub/big.bin", cwd=work).stdout == big
    du = json.loads(run("--json", "du", root + "ds", cwd=work).stdout)
    assert (du["objects"], du["bytes"]) == (2, 6 + len(big))

    # Download into a relative directory: `cp obj dir/` keeps the name.
    (work / "out").mkdir()
    run("cp", root + "ds/a.txt", "out/", cwd=work)
    assert (work / "out" / "a.txt").read_bytes() == b"hello\n"

    # rm -r: the prefix is a directory (ds, never ds2.txt); without a terminal it needs --yes.
    refused = run("rm", "-r", root + "ds", cwd=work, check=False)
    assert refused.returncode == 2 and b"--yes" in refused.stderr
    dry = run("rm", "-r", "--dry-run", root + "ds", cwd=work).stdout.decode()
    assert dry.count("would delete") == 2
    assert json.loads(run("--json", "rm", "-r", "--yes", root + "ds", cwd=work).stdout)["deleted"] == 2
    assert bytes(s3dlio.get(root + "ds2.txt")) == b"sibling"
    assert not s3dlio.exists(root + "ds/a.txt")


def test_stdin_and_stdout(bucket: str, tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 3)
    run("cp", "-", f"s3://{bucket}/piped", "--part-size", str(5 * MiB), cwd=tmp_path, stdin=data)
    assert bytes(s3dlio.get(f"s3://{bucket}/piped")) == data
    assert run("cp", f"s3://{bucket}/piped", "-", cwd=tmp_path).stdout == data


def test_cat_into_head_exits_quietly(bucket: str, tmp_path: Path) -> None:
    s3dlio.put(f"s3://{bucket}/big", os.urandom(20 * MiB))
    p = subprocess.run(  # noqa: S602 - a pipeline into head is the point
        f"{sys.executable} -P -m s3dlio cat s3://{bucket}/big | head -c 10 | wc -c",
        shell=True,
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert p.stdout.strip() == b"10", p
    assert b"Traceback" not in p.stderr and b"Broken pipe" not in p.stderr, p.stderr


def test_cp_tree_filters_and_no_clobber(bucket: str, tmp_path: Path) -> None:
    for k in ("t/a.bin", "t/b.txt", "t/sub/c.bin"):
        s3dlio.put(f"s3://{bucket}/{k}", k.encode())
    s3dlio.put(f"s3://{bucket}/copy/a.bin", b"keep me")
    run(
        "cp", "-r", "--include", "*.bin", "--exclude", "sub/*", "--no-clobber", "-j", "4",
        f"s3://{bucket}/t", f"s3://{bucket}/copy", cwd=tmp_path,
    )  # fmt: skip
    got = {
        o.uri.rsplit("/copy/", 1)[1]: bytes(s3dlio.get(o.uri)) for o in s3dlio.list(f"s3://{bucket}/copy/")
    }
    assert got == {"a.bin": b"keep me"}, got


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["stat", "s3://{bucket}/missing"], 3, b"not found"),
        (["ls", "ftp://x/y"], 2, b"unknown scheme"),
        (["cat", "--range", "x:y", "s3://{bucket}/k"], 2, b"OFFSET:LENGTH"),
        (["cp", "-", "-"], 2, b"both be '-'"),
    ],
)
def test_errors_are_one_line_with_meaningful_exit_codes(
    bucket: str, tmp_path: Path, args: list[str], code: int, needle: bytes
) -> None:
    p = run(*[a.format(bucket=bucket) for a in args], cwd=tmp_path, check=False)
    assert p.returncode == code, p
    assert p.stderr.startswith(b"s3dlio: error: ") and needle in p.stderr, p.stderr
    assert b"Traceback" not in p.stderr


def test_mb_and_rb_force(s3_server: object, tmp_path: Path) -> None:
    name = f"cli-{os.getpid()}-{tmp_path.name[-8:].lower().replace('_', '-')}"
    run("mb", f"s3://{name}", cwd=tmp_path)
    s3dlio.put(f"s3://{name}/x", b"x")
    refused = run("rb", f"s3://{name}", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and b"not empty" in refused.stderr, refused
    assert s3dlio.exists(f"s3://{name}/x")
    run("rb", "--force", f"s3://{name}", cwd=tmp_path)
    assert run("ls", f"s3://{name}/", cwd=tmp_path, check=False).returncode == 3


def test_sync_copies_what_is_missing_or_different_and_deletes_with_delete(root: str, tmp_path: Path) -> None:
    """sync from a local directory (relative path) to every backend: the first run copies all,
    a second run nothing, a changed size is copied again, --delete removes the extra object, and
    --dry-run changes nothing."""
    work = tmp_path / "w"
    (work / "src" / "sub").mkdir(parents=True)
    for name, data in {"a.bin": b"a" * 10, "sub/b.bin": b"b" * 20}.items():
        (work / "src" / name).write_bytes(data)
    s3dlio.put(root + "dst/stale.bin", b"x")

    def plan(*extra: str) -> list[dict[str, str]]:
        p = run("--json", "sync", *extra, "src", root + "dst", cwd=work)
        return [json.loads(ln) for ln in p.stdout.splitlines()]

    assert sorted(r["dst"].rsplit("/dst/", 1)[1] for r in plan()) == ["a.bin", "sub/b.bin"]
    assert plan() == []  # up to date
    (work / "src" / "a.bin").write_bytes(b"a" * 11)
    dry = plan("--delete", "--dry-run")
    assert {(r["action"], (r.get("dst") or r["uri"]).rsplit("/dst/", 1)[1]) for r in dry} == {
        ("copy", "a.bin"),
        ("delete", "stale.bin"),
    }
    assert bytes(s3dlio.get(root + "dst/a.bin")) == b"a" * 10  # the dry run changed nothing
    plan("--delete")
    got = {o.uri.rsplit("/dst/", 1)[1]: bytes(s3dlio.get(o.uri)) for o in s3dlio.list(root + "dst/")}
    assert got == {"a.bin": b"a" * 11, "sub/b.bin": b"b" * 20}


def test_gen_writes_seeded_objects_of_the_sizes_asked(bucket: str, tmp_path: Path) -> None:
    rec = json.loads(
        run(
            "--json",
            "gen",
            f"s3://{bucket}/g",
            "--count",
            "40",
            "--size",
            "100-5000",
            "--seed",
            "7",
            cwd=tmp_path,
        ).stdout
    )
    objs = s3dlio.list(f"s3://{bucket}/g/")
    assert len(objs) == rec["objects"] == 40 and sum(o.size for o in objs) == rec["bytes"]
    assert all(100 <= o.size <= 5000 for o in objs) and len({o.size for o in objs}) > 1
    first = bytes(s3dlio.get(objs[0].uri))
    run("gen", "out", "--count", "40", "--size", "100-5000", "--seed", "7", cwd=tmp_path)  # relative: ./out
    assert (tmp_path / "out" / Path(objs[0].uri).name).read_bytes() == first  # the same seed, the same bytes
    bad = run("gen", f"s3://{bucket}/g2", "--count", "1", "--size", "9-3", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and b"--size" in bad.stderr


def test_permission_denied_exits_4(bucket: str, tmp_path: Path) -> None:
    s3dlio.put(f"s3://{bucket}/k", b"x")
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY="not-the-secret")
    p = run("cat", f"s3://{bucket}/k", cwd=tmp_path, check=False, env=env)
    assert p.returncode == 4, p
    assert p.stderr.startswith(b"s3dlio: error: ") and b"not-the-secret" not in p.stderr, p.stderr
    assert f"s3://{bucket}/k".encode() in p.stderr and b"Traceback" not in p.stderr


def test_every_command_has_help_with_an_example(tmp_path: Path) -> None:
    for cmd in ("ls", "stat", "cat", "cp", "sync", "gen", "bench", "rm", "mb", "rb", "du"):
        out = run(cmd, "--help", cwd=tmp_path).stdout.decode()
        assert "examples:" in out and f"s3dlio {cmd}" in out.split("examples:", 1)[1], (cmd, out)


NAMES = ["a b.bin", "ünïcødé.bin", "x+y=z&w.bin", "pct%20lit.bin", "hash#q.bin", "n e/s t/ed.bin", "d/x.bin"]


def test_cp_r_special_names_both_ways_byte_for_byte(bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    want = {}
    for i, name in enumerate(NAMES):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        want[name] = os.urandom(100 + i)
        (src / name).write_bytes(want[name])
    run("cp", "-r", "src", f"s3://{bucket}/tree", cwd=tmp_path)
    listed = {o.uri.split("/tree/", 1)[1] for o in s3dlio.list(f"s3://{bucket}/tree/")}
    assert listed == set(NAMES)
    run("cp", "-r", f"s3://{bucket}/tree", "back", cwd=tmp_path)
    got = {
        str(p.relative_to(tmp_path / "back")): p.read_bytes()
        for p in (tmp_path / "back").rglob("*")
        if p.is_file()
    }
    assert got == want


def _pty_run(args: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run the CLI with stderr on a pseudo-terminal (100x30); returns (exit code, what it drew)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    p = subprocess.Popen(
        [sys.executable, "-P", "-m", "s3dlio", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave
    )
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return p.wait(timeout=120), drawn


def test_a_progress_bar_on_a_terminal_and_not_on_a_pipe(bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"{i}.bin").write_bytes(os.urandom(50_000))
    code, drawn = _pty_run(["cp", "-r", "src", f"s3://{bucket}/tty"], tmp_path)
    assert code == 0, drawn
    text = drawn.decode(errors="replace")
    # The last frame: every byte and object counted by the core, 100 %.
    assert "100%|" in text and "20/20 objects" in text and "1.00M/1.00M" in text, text
    piped = run("cp", "-r", "src", f"s3://{bucket}/pipe", cwd=tmp_path)
    assert b"%|" not in piped.stderr and b"objects]" not in piped.stderr, piped.stderr
    quiet_code, quiet = _pty_run(["-q", "cp", "-r", "src", f"s3://{bucket}/quiet"], tmp_path)
    assert quiet_code == 0 and b"%|" not in quiet, quiet


def test_bench_put_then_get_with_latency_and_cleanup(bucket: str, tmp_path: Path) -> None:
    p = run(
        "--json", "bench", f"s3://{bucket}/b", "--size", "64KiB", "--count", "24", "-j", "4", cwd=tmp_path
    )
    put, get = (json.loads(ln) for ln in p.stdout.splitlines())
    assert (put["phase"], get["phase"]) == ("put", "get")
    for r in (put, get):
        assert (r["objects"], r["bytes"]) == (24, 24 * 65536), r
        assert r["MB/s"] > 0 and r["obj/s"] > 0 and r["errors"] == {} and r["concurrency"] == 4
        assert 1 <= r["max_in_flight"] <= 4
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert get["ttfb_ms"]["p50"] is not None and get["ttfb_ms"]["p50"] <= get["latency_ms"]["max"]
    assert s3dlio.list(f"s3://{bucket}/b/") == []  # its objects are deleted afterwards


def test_bench_reads_an_existing_prefix_and_reports_retries_by_cause(
    bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    s3dlio.put_many([(f"s3://{bucket}/ds/{i}", b"d" * 1000) for i in range(10)])
    proxy.set_mode("http503", count=3, match="^GET /[^?]*/ds/")
    p = run(
        "--json", "--endpoint-url", proxy.endpoint, "bench", f"s3://{bucket}/ds/", "--shuffle", "-j", "2",
        cwd=tmp_path,
    )  # fmt: skip
    (get,) = (json.loads(ln) for ln in p.stdout.splitlines())
    assert (get["objects"], get["bytes"]) == (10, 10_000)
    assert get["retries"] == {"throttled": 3} and get["errors"] == {}
    text = run("bench", f"s3://{bucket}/ds/", "--count", "4", cwd=tmp_path).stdout.decode()
    assert text.startswith("GET  4 objects") and "TTFB p50/p90/p99" in text, text
    empty = run("bench", f"s3://{bucket}/none/", cwd=tmp_path, check=False)
    assert empty.returncode == 3 and b"no objects" in empty.stderr


@pytest.mark.timeout(90)
def test_ctrl_c_during_cp_leaves_no_object_and_no_upload(
    bucket: str,
    tmp_path: Path,
    proxy: FaultProxy,
    boto3_client,  # type: ignore[no-untyped-def]
) -> None:
    """Two parts reach the server, the rest hang in the proxy; Ctrl-C: exit 130 at once, a note of
    what was done, no object, and no multipart upload left open."""
    (tmp_path / "big.bin").write_bytes(os.urandom(40 * MiB))
    proxy.set_mode("pass", count=2, then="blackhole", match=r"[?&]partNumber=")
    args = ["--endpoint-url", proxy.endpoint, "cp", "big.bin", f"s3://{bucket}/big.bin"]
    args += ["--part-size", str(5 * MiB), "-j", "4"]
    # settle: the two parts that passed are stored
    interrupt_cli(args, tmp_path, lambda: proxy.faults_injected >= 1, settle=0.5)
    assert not s3dlio.exists(f"s3://{bucket}/big.bin")
    assert any(m == "DELETE" and "uploadId=" in path for m, path, _ in proxy.request_log), proxy.request_log
    assert boto3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
