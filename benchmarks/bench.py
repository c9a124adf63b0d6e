"""s3dlio against its peers, side by side on one local S3 server (run by ``nox -s bench``).

    python -P benchmarks/bench.py [--quick] [--reps N] [--workloads a,b,...] [--clients x,y,...]

Starts SeaweedFS pinned to one core (``taskset -c 1``), writes the datasets, and measures every
workload for every client in turn, rotating the order of the clients from one repetition to the
next. Each measurement is a fresh process pinned to the other core (``taskset -c 0``) running
``bench_client.py``: it sets itself up, then does the timed work on a signal from here, so
imports and payload generation are never timed. Recorded per measurement: wall time, bytes and
objects (checked against what was expected), the client's CPU time (its threads and its reaped
child processes), its peak RSS, and the server's CPU time over the same window.

Writes ``docs/benchmarks/results.json`` (every measurement, the machine, the versions),
``docs/benchmarks/bench.png`` (the chart) and the generated section of ``docs/benchmarks.md``
(between its ``bench:begin`` / ``bench:end`` markers). ``--quick`` runs small versions of every
workload once, to check the harness (CI does); its numbers say nothing about speed.

The reference s3dlio release (its module is also called ``s3dlio``) runs from its own virtual
environment: ``--ref-python`` (default ``.bench/ref/bin/python``, which ``nox -s bench`` makes).
A client that is not installed is skipped and listed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import s3dlio
from s3dlio.testing import LocalS3Server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

S3_GET = ["s3dlio", "s3dlio-0.10.0", "s3torchconnector", "boto3", "s5cmd"]
EPOCH = ["s3dlio", "s3dlio-0.10.0", "s3torchconnector", "boto3"]


@dataclass
class Workload:
    key: str
    title: str
    kind: str  # get | put | file | direct | epoch (bench_client's workload argument)
    count: int
    size: int
    quick_count: int
    quick_size: int
    clients: list[str]
    unit: str = "MB/s"  # the throughput shown first: MB/s or objects/s
    cpu_targets: bool = True  # the client-CPU target applies (a-d, g)

    def shape(self, quick: bool) -> tuple[int, int]:
        return (self.quick_count, self.quick_size) if quick else (self.count, self.size)


WORKLOADS = [
    Workload("a", "GET 4,000 x 64 KiB", "get", 4000, 64 * KIB, 200, 64 * KIB, S3_GET, unit="objects/s"),
    Workload("b", "GET 1,000 x 1 MiB", "get", 1000, MIB, 40, MIB, S3_GET),
    Workload("c", "GET 64 x 16 MiB", "get", 64, 16 * MIB, 4, 16 * MIB, S3_GET),
    Workload("d", "GET 1 x 1 GiB", "get", 1, GIB, 1, 64 * MIB, S3_GET),
    Workload("e1", "file:// 64 x 16 MiB (page cache)", "file", 64, 16 * MIB, 8, 16 * MIB,
             ["s3dlio", "s3dlio-0.10.0", "cat", "numpy.fromfile"], cpu_targets=False),
    Workload("e2", "direct:// 64 x 16 MiB (O_DIRECT, disk)", "direct", 64, 16 * MIB, 8, 16 * MIB,
             ["s3dlio", "s3dlio-0.10.0", "dd"], cpu_targets=False),
    Workload("f", "Epoch 4,000 x 64 KiB, batch 64, shuffled, torch tensors", "epoch", 4000, 64 * KIB,
             200, 64 * KIB, EPOCH, unit="objects/s", cpu_targets=False),
    Workload("g1", "PUT 64 x 16 MiB (multipart)", "put", 64, 16 * MIB, 4, 16 * MIB, S3_GET),
    Workload("g2", "PUT 4,000 x 64 KiB", "put", 4000, 64 * KIB, 200, 64 * KIB, S3_GET, unit="objects/s"),
]  # fmt: skip

LABELS = {  # how each client is driven, for the table's notes
    "s3dlio": "this project: get_many / get / put_many; s3dlio.DataLoader for the epoch",
    "s3dlio-0.10.0": "the reference release from PyPI: get_many / get / put_many; its "
    "ObjectStoreIterableDataset in torch's DataLoader for the epoch",
    "s3torchconnector": "S3MapDataset / S3Client with 32 threads; torch DataLoader(num_workers=2) "
    "over S3MapDataset for the epoch",
    "boto3": "32 threads (get_object / put_object; download_fileobj / upload_fileobj for 1 GiB and "
    "16 MiB); torch DataLoader(num_workers=2) over a boto3 map dataset for the epoch",
    "s5cmd": "s5cmd cp with a wildcard (downloads to /dev/shm)",
    "cat": "cat of the 64 files into a pipe read by Python",
    "numpy.fromfile": "numpy.fromfile per file",
    "dd": "dd if=FILE of=/dev/null bs=4M iflag=direct per file",
}


# ---------------------------------------------------------------------------------------------
# Processes: the server's CPU time, the clients' interpreters
# ---------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def client_python(client: str, ref_python: str | None) -> str | None:
    """The interpreter that runs ``client``, or None when the client is not installed."""
    if client in ("cat", "dd"):
        return sys.executable if shutil.which(client) else None
    if client == "s3dlio-0.10.0":
        return ref_python if ref_python and os.path.exists(ref_python) else None
    if client == "s5cmd":
        exe = shutil.which("s5cmd") or os.path.join(os.path.dirname(sys.executable), "s5cmd")
        return sys.executable if os.path.exists(exe) else None
    module = "numpy" if client == "numpy.fromfile" else client
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def version_of(python: str, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    bytes: int
    objects: int
    cpu_s: float
    rss_mib: float
    server_cpu_s: float

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / 1e6

    @property
    def obj_s(self) -> float:
        return self.objects / self.seconds

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu_s / self.seconds


@dataclass
class Series:
    workload: str
    client: str
    runs: list[Run] = field(default_factory=list)

    def stat(self, name: str) -> tuple[float, float, float]:
        values = [getattr(r, name) for r in self.runs]
        return statistics.median(values), min(values), max(values)

    def summary(self) -> dict[str, Any]:
        bytes_, objects = self.runs[0].bytes, self.runs[0].objects
        cpu = self.stat("cpu_s")[0]
        return {
            "workload": self.workload,
            "client": self.client,
            "reps": len(self.runs),
            "mb_s": self.stat("mb_s"),
            "obj_s": self.stat("obj_s"),
            "cpu_s_per_gb": cpu / (bytes_ / 1e9),
            "cpu_s_per_1k_objects": cpu / (objects / 1000),
            "server_cpu_pct": self.stat("server_pct")[0],
            "peak_rss_mib": max(r.rss_mib for r in self.runs),
        }


def measure(python: str, client: str, kind: str, spec: dict[str, Any], server_pid: int, pin: bool) -> Run:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)  # thousands of URIs: too long for one command-line argument
    cmd = [python, "-P", str(HERE / "bench_client.py"), client, kind, f.name]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    env = dict(os.environ)
    if client == "s3dlio-0.10.0":
        env.pop("PYTHONPATH", None)  # never this checkout's s3dlio in the reference's interpreter
        env["BENCH_EXTRA_SITE"] = sysconfig.get_paths()["purelib"]  # torch, for its epoch
    child = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )  # fmt: skip
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        line = child.stdout.readline()
        if line.strip() != "READY":
            _, err = child.communicate(timeout=60)
            raise RuntimeError(f"{client} {kind}: did not start: {line!r} {err[-2000:]}")
        before = proc_cpu_seconds(server_pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline()
        after = proc_cpu_seconds(server_pid)
        out, err = child.communicate(timeout=600)
        if not line.startswith("RESULT ") or child.returncode != 0:
            raise RuntimeError(
                f"{client} {kind}: failed (rc {child.returncode}): {line!r} {out!r} {err[-3000:]}"
            )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.unlink(f.name)
    r = json.loads(line[len("RESULT ") :])
    return Run(r["seconds"], r["bytes"], r["objects"], r["cpu_s"], r["rss_mib"], after - before)


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------


def s3_dataset(bucket: str, w: Workload, quick: bool) -> dict[str, Any]:
    n, size = w.shape(quick)
    prefix = f"s3://{bucket}/{w.key}-{n}x{size}/"
    uris = [f"{prefix}{i:05d}.bin" for i in range(n)]
    existing = {o.uri for o in s3dlio.list(prefix)}
    if existing != set(uris):
        block = os.urandom(size)
        batch: list[tuple[str, bytes]] = []
        for i, uri in enumerate(uris):
            batch.append((uri, i.to_bytes(8, "little") + block[8:]))
            if len(batch) * size >= 256 * MIB or i == n - 1:
                s3dlio.put_many(batch)
                batch = []
    return {"uris": uris, "size": size, "prefix": prefix}


def file_dataset(data_dir: Path, w: Workload, quick: bool) -> dict[str, Any]:
    n, size = w.shape(quick)
    folder = data_dir / f"files-{n}x{size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.bin" for i in range(n)]
    for i, p in enumerate(paths):
        if not p.exists() or p.stat().st_size != size:
            with open(p, "wb") as f:
                f.write(i.to_bytes(8, "little") + os.urandom(size - 8))
    scheme = "file" if w.kind == "file" else "direct"
    return {"uris": [f"{scheme}://{p}" for p in paths], "size": size, "prefix": f"{scheme}://{folder}/"}


def warm_page_cache(spec: dict[str, Any]) -> None:
    for uri in spec["uris"]:
        with open(uri.split("://", 1)[1], "rb") as f:
            while f.read(8 * MIB):
                pass


# ---------------------------------------------------------------------------------------------
# Report: JSON, chart, Markdown
# ---------------------------------------------------------------------------------------------


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}" if v >= 10 else f"{v:,.2f}"


def rng(t: tuple[float, float, float]) -> str:
    return f"{fmt(t[0])} ({fmt(t[1])}-{fmt(t[2])})"


def targets(w: Workload, rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for this workload, checked against this run's medians."""
    ours = next((r for r in rows if r["client"] == "s3dlio"), None)
    peers = [r for r in rows if r["client"] != "s3dlio"]
    if ours is None or not peers:
        return []
    speed = "obj_s" if w.unit == "objects/s" else "mb_s"
    best = max(peers, key=lambda r: r[speed][0])
    ratio = ours[speed][0] / best[speed][0]
    out = []
    tool = {"file": "cat", "direct": "dd"}.get(w.kind)
    base = next((r for r in peers if r["client"] == tool), None)
    if base:
        rt = ours["mb_s"][0] / base["mb_s"][0]
        out.append(f"throughput vs `{tool}` {rt:.2f}x (target ≥ 0.9x): {'met' if rt >= 0.9 else 'missed'}")
    need = 1.25 if w.kind == "epoch" else 1.0
    verdict = "met" if ratio >= need else "missed"
    out.append(f"throughput vs best peer ({best['client']}) {ratio:.2f}x (target ≥ {need}x): {verdict}")
    if w.cpu_targets:
        metric = "cpu_s_per_1k_objects" if w.unit == "objects/s" else "cpu_s_per_gb"
        lowest = min(peers, key=lambda r: r[metric])
        rc = ours[metric] / lowest[metric]
        what = "per 1,000 objects" if w.unit == "objects/s" else "per GB"
        out.append(
            f"client CPU {what} vs lowest peer ({lowest['client']}) {rc:.2f}x (target ≤ 0.7x): "
            f"{'met' if rc <= 0.7 else 'missed'}"
        )
    return out


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [w for w in WORKLOADS if any(r["workload"] == w.key for r in results["summary"])]
    cols = 3
    nrows = -(-len(done) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(done) :]:
        ax.axis("off")
    for ax, w in zip(axes.flat, done, strict=False):
        rows = [r for r in results["summary"] if r["workload"] == w.key]
        speed = "obj_s" if w.unit == "objects/s" else "mb_s"
        rows.sort(key=lambda r: r[speed][0])
        med = [r[speed][0] for r in rows]
        lo = [r[speed][0] - r[speed][1] for r in rows]
        hi = [r[speed][2] - r[speed][0] for r in rows]
        colors = ["#d62728" if r["client"] == "s3dlio" else "#7f7f7f" for r in rows]
        ax.barh([r["client"] for r in rows], med, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_title(f"({w.key}) {w.title}", fontsize=9)
        ax.set_xlabel(w.unit + " (median, min-max)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(results["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any], chart_name: str | None) -> str:
    m, v = results["machine"], results["versions"]
    lines = [
        f"Generated by `{results['command']}` on {results['date']} ({results['mode']}, "
        f"{results['reps']} repetitions per client and workload, clients in rotating order).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}.",
        f"- Pinning: {results['pinning']}.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "- Client CPU is user + system time of the client process and its reaped children (s5cmd, "
        "dd, torch's worker processes) during the timed section; server CPU % is SeaweedFS's CPU time "
        "over the same window (100 % = its one core). Peak RSS is the client process's (the largest "
        "of it and its children).",
    ]
    if results["skipped"]:
        lines.append("- Not measured: " + "; ".join(results["skipped"]) + ".")
    lines.append("")
    if chart_name:
        lines += [f"![benchmark chart]({chart_name})", ""]
    for w in WORKLOADS:
        rows = [r for r in results["summary"] if r["workload"] == w.key]
        if not rows:
            continue
        n, size = w.shape(results["mode"] == "quick")
        speed = "obj_s" if w.unit == "objects/s" else "mb_s"
        rows.sort(key=lambda r: -r[speed][0])
        lines += [
            f"### ({w.key}) {w.title}"
            + (f" — quick: {n} x {size // KIB} KiB" if results["mode"] == "quick" else ""),
            "",
            "| client | MB/s | objects/s | CPU s / GB | CPU s / 1k obj | server CPU % | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            name = f"**{r['client']}**" if r["client"] == "s3dlio" else r["client"]
            lines.append(
                f"| {name} | {rng(r['mb_s'])} | {rng(r['obj_s'])} | {fmt(r['cpu_s_per_gb'])} | "
                f"{fmt(r['cpu_s_per_1k_objects'])} | {r['server_cpu_pct']:.0f} | {r['peak_rss_mib']:,.0f} |"
            )
        lines.append("")
        for t in targets(w, rows):
            lines.append(f"- Target: {t}")
        lines.append("")
    lines.append("How each client is driven:")
    lines.append("")
    for client, label in LABELS.items():
        lines.append(f"- {client}: {label}.")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_doc(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small versions, one repetition (checks the harness)"
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    ap.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS))
    ap.add_argument("--clients", default=None, help="comma-separated subset of clients")
    ap.add_argument("--ref-python", default=str(ROOT / ".bench" / "ref" / "bin" / "python"))
    ap.add_argument("--data-dir", default=str(ROOT / ".bench" / "data"), help="files for (e): on a real disk")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"), help="results.json and bench.png")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"), help="Markdown to update")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the chart and Markdown from --out's results.json",
    )
    args = ap.parse_args()
    if args.report_only:
        results = json.loads((Path(args.out) / "results.json").read_text())
        report(results, Path(args.out), Path(args.doc))
        return 0

    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    chosen = [w for w in WORKLOADS if w.key in args.workloads.split(",")]
    only = set(args.clients.split(",")) if args.clients else None
    data_dir = Path(args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    pythons: dict[str, str] = {}
    skipped: list[str] = []
    for client in dict.fromkeys(c for w in chosen for c in w.clients):
        if only is not None and client not in only:
            continue
        py = client_python(client, args.ref_python)
        if py is None:
            skipped.append(f"{client} (not installed)")
        else:
            pythons[client] = py

    versions = {"s3dlio (this)": s3dlio.__version__}
    for client, module in (
        ("s3dlio-0.10.0", "s3dlio"),
        ("s3torchconnector", "s3torchconnector"),
        ("boto3", "boto3"),
    ):
        if client in pythons:
            versions[client if client != "s3dlio-0.10.0" else "s3dlio (reference)"] = version_of(
                pythons[client], module
            )
    if "s5cmd" in pythons:
        versions["s5cmd"] = version_of(sys.executable, "s5cmd")
    for module in ("torch", "numpy"):
        versions[module] = version_of(sys.executable, module)

    server = LocalS3Server(cpu=1 if pin else None).start()
    try:
        server.apply_env()
        assert server.pid is not None
        weed = subprocess.run([shutil.which("weed") or "weed", "version"], capture_output=True, text=True)
        versions["SeaweedFS"] = weed.stdout.split()[2] if len(weed.stdout.split()) > 2 else "?"
        if pin:  # every thread of the server on core 1, whatever taskset at start covered
            subprocess.run(
                ["taskset", "-a", "-p", "-c", "1", str(server.pid)], check=True, capture_output=True
            )
        bucket = "bench"
        s3dlio.create_bucket(f"s3://{bucket}")
        series: dict[tuple[str, str], Series] = {}
        for w in chosen:
            clients = [c for c in w.clients if c in pythons]
            if not clients:
                continue
            n, size = w.shape(quick)
            if w.kind in ("get", "epoch"):
                base = s3_dataset(bucket, w if w.kind == "get" else WORKLOADS[0], quick)
            elif w.kind in ("file", "direct"):
                base = file_dataset(data_dir, w, quick)
            else:
                base = {"size": size}
            print(f"({w.key}) {w.title}: {n} x {size} bytes, clients {', '.join(clients)}", flush=True)
            for rep in range(reps):
                order = clients[rep % len(clients) :] + clients[: rep % len(clients)]
                for client in order:
                    spec = dict(base, endpoint=server.endpoint, batch_size=64)
                    if w.kind == "put":
                        prefix = f"s3://{bucket}/put-{w.key}-{client}-{rep}/"
                        spec.update(prefix=prefix, uris=[f"{prefix}{i:05d}.bin" for i in range(n)])
                    if w.kind == "file":
                        warm_page_cache(spec)
                    run = measure(pythons[client], client, w.kind, spec, server.pid, pin)
                    series.setdefault((w.key, client), Series(w.key, client)).runs.append(run)
                    if w.kind == "put":
                        s3dlio.delete_prefix(spec["prefix"])
                    speed = f"{run.obj_s:,.0f} obj/s" if w.unit == "objects/s" else f"{run.mb_s:,.0f} MB/s"
                    print(
                        f"  rep {rep + 1} {client:18s} {speed:>14s}  cpu {run.cpu_s:6.2f} s  "
                        f"server {run.server_pct:4.0f} %  rss {run.rss_mib:6.0f} MiB",
                        flush=True,
                    )
    finally:
        server.stop()

    results = {
        "title": f"s3dlio vs peers on one local SeaweedFS ({'quick check' if quick else 'full run'})",
        "command": "nox -s bench" + (" -- --quick" if quick else ""),
        "date": time.strftime("%Y-%m-%d"),
        "mode": "quick" if quick else "full",
        "reps": reps,
        "pinning": "server on core 1 (taskset -a -p -c 1), each client process on core 0 (taskset -c 0)"
        if pin
        else "none",
        "machine": machine(),
        "versions": versions,
        "skipped": skipped,
        "summary": [s.summary() for s in series.values()],
        "runs": [
            {"workload": s.workload, "client": s.client, **vars(r)} for s in series.values() for r in s.runs
        ],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results, out, Path(args.doc))
    print(f"wrote {out / 'results.json'}, the chart and {args.doc} in {time.monotonic() - started:.0f} s")
    return 0


def report(results: dict[str, Any], out: Path, doc: Path) -> None:
    """The chart (when matplotlib is installed) and the Markdown section."""
    chart_path: Path | None = out / "bench.png"
    try:
        chart(results, chart_path)  # type: ignore[arg-type]
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        chart_path = None
    rel = os.path.relpath(chart_path, doc.parent) if chart_path else None
    update_doc(doc, markdown(results, rel))


if __name__ == "__main__":
    sys.exit(main())
