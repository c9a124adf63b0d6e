"""The ``s3dlio`` command: ls, stat, cat, cp, sync, rm, mb, rb, du and gen on every scheme s3dlio
serves.

Arguments are URIs (``s3://``, ``az://``, ``gs://``, ``file://``, ``direct://``) or local paths
(relative to the current directory); ``-`` is stdin or stdout for ``cp``. Every command that prints
records prints one JSON object per line with ``--json``.

Exit codes: 0 success; 1 a storage error; 2 a usage error or a bad URI or option; 3 not found;
4 permission denied; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import builtins
import fnmatch
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from . import exceptions as exc

CHUNK = 8 * 1024 * 1024


def _uri(arg: str) -> str:
    """A URI as given, or a local path (relative to the current directory) as a file:// URI; a
    trailing ``/`` is kept (it names a directory)."""
    if "://" in arg:
        return arg
    path = os.path.abspath(arg)
    if arg.endswith("/") and not path.endswith("/"):
        path += "/"
    return "file://" + path


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


class _Out:
    """Where records go: text lines, or one JSON object per line."""

    def __init__(self, as_json: bool, quiet: bool, progress: bool | None = None) -> None:
        self.json, self.quiet = as_json, quiet
        # Progress bars: on a terminal only, and never with -q or --json.
        if progress is None:
            progress = sys.stderr.isatty() and not quiet and not as_json
        self.progress = progress

    def record(self, obj: dict[str, Any], text: str) -> None:
        print(json.dumps(obj) if self.json else text, flush=False)

    def note(self, text: str) -> None:
        if not self.quiet and not self.json:
            print(text, file=sys.stderr)


_COUNTERS = {
    # What a progress bar counts, read from s3dlio.stats(): (bytes, objects) keys.
    "write": (("bytes_written", "bytes_copied"), "objects_written"),
    "read": (("bytes_read",), "objects_read"),
    "delete": ((), "objects_deleted"),
}


def _tty_size() -> tuple[int, int]:
    """(columns, lines) of the terminal on stderr; (0, 0) when it reports none (a pty without a
    window)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return size.columns, size.lines
    except (OSError, ValueError):
        return 0, 0


class _Progress:
    """A progress bar on stderr, fed by the Rust core's transfer counters (``s3dlio.stats()``), not
    by wrapping calls: a thread redraws it ten times a second from the counters' growth since the
    bar started. Drawn only when stderr is a terminal, and never with ``-q`` or ``--json``.

    ``kind`` says what counts: ``write`` (bytes and objects written, server-side copies included),
    ``read`` or ``delete`` (objects only). Totals, when known, give a percentage and an ETA."""

    def __init__(
        self,
        out: _Out,
        desc: str,
        kind: str,
        total_bytes: int | None = None,
        total_objects: int | None = None,
    ) -> None:
        self.enabled = out.progress
        self.desc, self.kind = desc, kind
        self.total_bytes, self.total_objects = total_bytes, total_objects
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._base = (0, 0)

    def _read(self) -> tuple[int, int]:
        import s3dlio

        s = s3dlio.stats()
        byte_keys, obj_key = _COUNTERS[self.kind]
        return sum(int(s[k]) for k in byte_keys), int(s[obj_key])

    def done(self) -> tuple[int, int]:
        """(bytes, objects) counted since the bar started."""
        b, o = self._read()
        return b - self._base[0], o - self._base[1]

    def __enter__(self) -> _Progress:
        self._base = self._read()
        if not self.enabled:
            return self
        from tqdm import tqdm  # type: ignore[import-untyped]

        by_bytes = self.kind != "delete"
        cols, lines = _tty_size()
        self._bar = tqdm(
            total=(self.total_bytes if by_bytes else self.total_objects) or None,
            desc=self.desc,
            unit="B" if by_bytes else " obj",
            unit_scale=by_bytes,
            unit_divisor=1000,
            file=sys.stderr,
            # A terminal that reports no size (a pty without a window) is taken as 80x24: tqdm
            # would draw nothing in 0 columns or 0 lines.
            ncols=None if cols else 80,
            nrows=None if lines else 24,
            dynamic_ncols=bool(cols),
            leave=True,
            mininterval=0.1,
        )
        self._thread = threading.Thread(target=self._run, name="s3dlio-progress", daemon=True)
        self._thread.start()
        return self

    def _draw(self) -> None:
        b, o = self.done()
        bar = self._bar
        if self.kind == "delete":
            bar.n = o
        else:
            bar.n = b
            total = f"/{self.total_objects}" if self.total_objects is not None else ""
            bar.set_postfix_str(f"{o}{total} objects", refresh=False)
        bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._draw()

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw()
        self._bar.close()


def _info(o: Any) -> dict[str, Any]:
    return {
        "uri": o.uri,
        "size": o.size,
        "etag": o.etag,
        "last_modified": o.last_modified,
        "is_dir": o.is_dir,
    }


def _split_glob(uri: str) -> tuple[str, str | None]:
    """``s3://b/data/*.bin`` -> (``s3://b/data/``, ``*.bin``): the listing prefix and the glob."""
    scheme, rest = uri.split("://", 1)
    first = min((i for i, c in enumerate(rest) if c in "*?["), default=-1)
    if first < 0:
        return uri, None
    cut = rest.rfind("/", 0, first) + 1
    return f"{scheme}://{rest[:cut]}", rest[cut:]


# --- commands -------------------------------------------------------------------------------------


def cmd_ls(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    prefix, pattern = _split_glob(_uri(a.uri))
    for o in s3dlio.list_iter(
        prefix, recursive=a.recursive or pattern is not None, pattern=pattern, config=cfg
    ):
        if out.json:
            out.record(_info(o), "")
            continue
        if a.long:
            size = _human(o.size) if a.human else str(o.size)
            text = f"{'DIR' if o.is_dir else size:>12}  {o.etag or '-':<34}  {o.uri}"
        else:
            text = o.uri
        out.record({}, text)
    return 0


def cmd_stat(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    o = s3dlio.stat(_uri(a.uri), config=cfg)
    out.record(_info(o), "\n".join(f"{k}: {v}" for k, v in _info(o).items()))
    return 0


def _write_stream(chunks: Iterator[bytes | memoryview], sink: IO[bytes]) -> None:
    for c in chunks:
        sink.write(c)
    sink.flush()


def _read_chunks(uri: str, cfg: Any, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    import s3dlio

    with s3dlio.open(uri, "rb", config=cfg) as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            data = f.read(CHUNK if left is None else min(CHUNK, left))
            if not data:
                break
            if left is not None:
                left -= len(data)
            yield data
    if left:
        raise exc.RangeError(f"{uri}: the object ends {left} bytes before the range does", uri)


def cmd_cat(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    offset, length = 0, None
    if a.range:
        try:
            off_s, _, len_s = a.range.partition(":")
            offset, length = int(off_s), (int(len_s) if len_s else None)
        except ValueError:
            raise exc.InvalidConfigError(f"--range must be OFFSET:LENGTH, got {a.range!r}") from None
    _write_stream(_read_chunks(_uri(a.uri), cfg, offset, length), sys.stdout.buffer)
    return 0


def _tree(src_dir: str, cfg: Any, include: list[str], exclude: list[str]) -> dict[str, int]:
    """The objects under ``src_dir`` (a directory prefix), as relative key -> size, filtered by
    the include and exclude globs (matched against relative keys)."""
    import s3dlio

    keys = {}
    for o in s3dlio.list_iter(src_dir, recursive=True, config=cfg):
        if o.is_dir:
            continue
        rel = o.uri[len(src_dir) :]
        if include and not any(fnmatch.fnmatchcase(rel, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            continue
        keys[rel] = o.size
    return keys


def cmd_cp(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    if a.src == "-" and a.dst == "-":
        raise exc.InvalidConfigError("cp: source and destination cannot both be '-'")
    if a.src == "-":  # stdin -> object, streamed through the writer (bounded memory)
        dst = _uri(a.dst)
        with _Progress(out, "upload", "write", total_objects=1), s3dlio.open(dst, "wb", config=cfg) as w:
            while chunk := sys.stdin.buffer.read(CHUNK):
                w.write(chunk)
        out.note(f"copied stdin to {dst}")
        return 0
    src = _uri(a.src)
    if a.dst == "-":
        _write_stream(_read_chunks(src, cfg), sys.stdout.buffer)
        return 0
    dst = _uri(a.dst)
    if not a.recursive:
        if dst.endswith("/") or (dst.startswith("file://") and os.path.isdir(dst[7:])):
            dst = dst.rstrip("/") + "/" + src.rstrip("/").rsplit("/", 1)[-1]
        if a.no_clobber and s3dlio.exists(dst, config=cfg):
            out.note(f"skipped {dst}: it exists (--no-clobber)")
            return 0
        size = s3dlio.stat(src, config=cfg).size if out.progress else None
        with _Progress(out, "cp", "write", size, 1):
            n = s3dlio.copy(src, dst, config=cfg)
        out.record({"src": src, "dst": dst, "bytes": n}, f"copied {src} -> {dst} ({n} bytes)")
        return 0
    src_dir, dst_dir = src.rstrip("/") + "/", dst.rstrip("/") + "/"
    only: list[str] | None = None
    total_bytes = total_objects = None
    if a.include or a.exclude or a.no_clobber or out.progress:
        tree = _tree(src_dir, cfg, a.include or [], a.exclude or [])
        if a.no_clobber:
            there = {o.uri[len(dst_dir) :] for o in s3dlio.list_iter(dst_dir, recursive=True, config=cfg)}
            skipped = [k for k in tree if k in there]
            for k in skipped:
                del tree[k]
            if skipped:
                out.note(f"skipped {len(skipped)} objects that exist (--no-clobber)")
        if a.include or a.exclude or a.no_clobber:
            only = builtins.list(tree)
        total_bytes, total_objects = sum(tree.values()), len(tree)
    with _Progress(out, "cp", "write", total_bytes, total_objects):
        n = s3dlio.copy_tree(src_dir, dst_dir, only=only, config=cfg) if only != [] else 0
    out.record({"src": src_dir, "dst": dst_dir, "objects": n}, f"copied {n} objects {src_dir} -> {dst_dir}")
    return 0


def cmd_sync(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    """Copy what is missing at the destination or differs: the size, then (between two stores of
    one kind) the ETag, else the modification time (a source newer by more than a second)."""
    import s3dlio

    src_dir, dst_dir = _uri(a.src).rstrip("/") + "/", _uri(a.dst).rstrip("/") + "/"
    src = {o.uri[len(src_dir) :]: o for o in _under(src_dir, cfg) if not o.is_dir}
    dst = {o.uri[len(dst_dir) :]: o for o in _under(dst_dir, cfg) if not o.is_dir}
    same_kind = src_dir.split("://")[0] == dst_dir.split("://")[0]

    def differs(s: Any, d: Any) -> bool:
        if s.size != d.size:
            return True
        if same_kind and s.etag and d.etag and not src_dir.startswith(("file://", "direct://")):
            return bool(s.etag != d.etag)
        # Newer by more than a second: stores keep whole seconds, local files fractions.
        return bool(s.last_modified and d.last_modified and s.last_modified > d.last_modified + 1.0)

    todo = sorted(k for k, o in src.items() if k not in dst or differs(o, dst[k]))
    extra = sorted(set(dst) - set(src)) if a.delete else []
    for k in todo:
        out.record(
            {"action": "copy", "src": src_dir + k, "dst": dst_dir + k}, f"copy {src_dir + k} -> {dst_dir + k}"
        )
    for k in extra:
        out.record({"action": "delete", "uri": dst_dir + k}, f"delete {dst_dir + k}")
    if a.dry_run:
        out.note(f"dry run: {len(todo)} to copy, {len(extra)} to delete")
        return 0
    if todo:
        with _Progress(out, "sync", "write", sum(src[k].size for k in todo), len(todo)):
            s3dlio.copy_tree(src_dir, dst_dir, only=todo, config=cfg)
    if extra:
        with _Progress(out, "delete", "delete", total_objects=len(extra)):
            s3dlio.delete_many([dst_dir + k for k in extra], config=cfg)
    out.note(f"{len(todo)} copied, {len(extra)} deleted, {len(src) - len(todo)} up to date")
    return 0


def _size_spec(spec: str) -> Any:
    """``--size``: ``N`` (every sample N bytes), ``MIN-MAX`` (uniform in [MIN, MAX], seeded),
    ``normal:MEAN,STD`` (normal, clipped to >= 1) or ``A,B,C`` (cycled); sizes take units
    (``64KiB-1MiB``, ``normal:1MiB,256KiB``). The size spec of :func:`s3dlio.gen.generate`."""
    if spec.startswith("normal:"):
        mean, comma, std = spec[len("normal:") :].partition(",")
        if not comma:
            raise exc.InvalidConfigError(f"--size normal:MEAN,STD needs both, got {spec!r}")
        return {"dist": "normal", "mean": _parse_size(mean, "--size"), "std": _parse_size(std, "--size")}
    if "," in spec:
        return [_parse_size(s, "--size") for s in spec.split(",")]
    lo_s, dash, hi_s = spec.partition("-")
    lo = _parse_size(lo_s, "--size")
    if not dash:
        return lo
    hi = _parse_size(hi_s, "--size")
    if lo > hi:
        raise exc.InvalidConfigError(f"--size MIN-MAX needs MIN <= MAX, got {spec!r}")
    return (lo, hi)


def cmd_gen(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    """A synthetic dataset (:func:`s3dlio.gen.generate`): ``--count`` samples in ``--format``
    (default raw: ``<prefix>/<index>.bin`` objects of seeded random bytes), written concurrently;
    the same seed writes the same bytes."""
    from . import gen

    r = gen.generate(
        _uri(a.prefix),
        count=a.count,
        size=_size_spec(a.size),
        format=a.format,
        seed=a.seed,
        samples_per_shard=a.samples_per_shard,
        dedup_factor=a.dedup,
        compress_factor=a.compress,
        layout=a.layout,
        config=cfg,
        max_concurrency=a.jobs or 64,
        progress=out.progress,
    )
    objects = len(r.files) + len(r.indexes)
    out.record(
        {
            "prefix": r.prefix,
            "format": r.format,
            "objects": objects,
            "samples": r.samples,
            "bytes": r.bytes,
            "files": r.files,
            "indexes": r.indexes,
        },
        f"wrote {r.samples} {r.format} samples in {objects} objects, {r.bytes} bytes under {r.prefix}",
    )
    return 0


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}
_UNITS.update({"g": 1000**3, "gb": 1000**3, "gib": 1024**3})


def _parse_size(text: str, what: str) -> int:
    """``65536``, ``64KiB``, ``1MiB``, ``16MB``, ``2GiB`` -> bytes."""
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :].strip()
    try:
        if unit not in _UNITS:
            raise ValueError
        n = int(float(num) * _UNITS[unit])
        if n < 0:
            raise ValueError
        return n
    except ValueError:
        raise exc.InvalidConfigError(
            f"{what} must be a byte count such as 65536, 64KiB, 1MiB or 16MB, got {text!r}"
        ) from None


def _phase(name: str, s: dict[str, Any], seconds: float, concurrency: int) -> dict[str, Any]:
    """One bench phase's record, from the core's counters over the phase."""
    op = s["ops"][name]
    n = s["objects_read"] if name == "get" else s["objects_written"]
    nbytes = op["bytes"]

    def pick(h: dict[str, Any]) -> dict[str, Any]:
        return {k: h[k] for k in ("p50", "p90", "p99", "max", "mean")}

    return {
        "phase": name,
        "objects": n,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "MB/s": round(nbytes / seconds / 1e6, 1) if seconds else None,
        "obj/s": round(n / seconds, 1) if seconds else None,
        "requests": op["requests"],
        "concurrency": concurrency,
        "max_in_flight": s["max_in_flight"],
        "ttfb_ms": pick(op["ttfb_ms"]),
        "latency_ms": pick(op["latency_ms"]),
        "errors": {k: v for k, v in s["errors"].items() if v},
        "retries": {k: v for k, v in s["retries"].items() if v},
    }


def _phase_text(r: dict[str, Any]) -> str:
    def ms(h: dict[str, Any]) -> str:
        if h["p50"] is None:
            return "-"
        return f"{h['p50']:.2f}/{h['p90']:.2f}/{h['p99']:.2f} ms"

    errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
    retries = ", ".join(f"{k} {v}" for k, v in r["retries"].items()) or "none"
    return (
        f"{r['phase'].upper():<4} {r['objects']} objects, {_human(r['bytes'])} in {r['seconds']:.2f} s: "
        f"{r['MB/s']} MB/s, {r['obj/s']} obj/s (concurrency {r['concurrency']}, max in flight "
        f"{r['max_in_flight']})\n"
        f"     TTFB p50/p90/p99 {ms(r['ttfb_ms'])}; latency p50/p90/p99 {ms(r['latency_ms'])}\n"
        f"     errors: {errors}; retries: {retries}"
    )


def cmd_bench(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    """PUT then GET ``--count`` objects of ``--size`` under a fresh prefix inside URI (deleted
    afterwards unless ``--keep``), or with no ``--size`` GET the objects already under URI. GETs
    replay a training epoch: s3dlio's DataLoader, batches of ``--batch-size``, shuffled with
    ``--shuffle``, ``--concurrency`` requests in flight, epochs repeated for ``--duration``
    seconds (default: one epoch). Every figure comes from the core's counters (s3dlio.stats())."""
    import numpy as np

    import s3dlio

    if a.count is not None and a.count <= 0:
        raise exc.InvalidConfigError(f"--count must be > 0, got {a.count}")
    if a.concurrency <= 0:
        raise exc.InvalidConfigError(f"--concurrency must be > 0, got {a.concurrency}")
    if a.duration is not None and a.duration <= 0:
        raise exc.InvalidConfigError(f"--duration must be > 0 seconds, got {a.duration}")
    base = _uri(a.uri).rstrip("/") + "/"
    results = []
    written: builtins.list[str] = []
    try:
        if a.size is not None:
            size, count = _parse_size(a.size, "--size"), a.count or 100
            prefix = f"{base}s3dlio-bench-{int(time.time())}-{os.getpid()}/"
            data = np.random.default_rng(a.seed).bytes(size)
            written = [f"{prefix}{i:08d}.bin" for i in range(count)]
            s3dlio.stats(reset=True)
            t0 = time.perf_counter()
            with _Progress(out, "put", "write", size * count, count):
                s3dlio.put_many([(u, data) for u in written], max_concurrency=a.concurrency, config=cfg)
            results.append(_phase("put", s3dlio.stats(reset=True), time.perf_counter() - t0, a.concurrency))
            uris, sizes = written, [size] * count
        else:
            listed = [o for o in s3dlio.list_iter(base, recursive=True, config=cfg) if not o.is_dir]
            if a.count:
                listed = listed[: a.count]
            if not listed:
                raise exc.NotFoundError(f"{base}: no objects to read (pass --size to write some)", base)
            uris, sizes = [o.uri for o in listed], [o.size for o in listed]
        ds = s3dlio.ObjectDataset(uris, sizes=sizes, config=cfg)
        pool = s3dlio.PoolConfig(pool_size=a.concurrency, readahead_batches=4)
        loader = s3dlio.DataLoader(
            ds, batch_size=a.batch_size, shuffle=a.shuffle, seed=a.seed, collate_fn=lambda b: b, pool=pool
        )
        epoch_bytes = sum(sizes)
        deadline = None if a.duration is None else time.perf_counter() + a.duration
        s3dlio.stats(reset=True)
        t0 = time.perf_counter()
        with _Progress(
            out, "get", "read", None if deadline else epoch_bytes, None if deadline else len(uris)
        ):
            epoch = 0
            while True:
                loader.set_epoch(epoch)
                for _batch in loader:
                    if deadline is not None and time.perf_counter() >= deadline:
                        break
                epoch += 1
                if deadline is None or time.perf_counter() >= deadline:
                    break
        elapsed = time.perf_counter() - t0
        loader.close()
        results.append(_phase("get", s3dlio.stats(), elapsed, a.concurrency))
    finally:
        if written and not a.keep:
            s3dlio.delete_prefix(written[0].rsplit("/", 1)[0], config=cfg)
    for r in results:
        out.record(r, _phase_text(r))
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_rm(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    uri = _uri(a.uri)
    if not a.recursive:
        if a.dry_run:
            out.record({"uri": uri, "dry_run": True}, f"would delete {uri}")
            return 0
        s3dlio.delete(uri, config=cfg)
        out.record({"uri": uri, "deleted": 1}, f"deleted {uri}")
        return 0
    # The prefix is a directory: `p` means the object p and everything under p/ (never p2).
    base = uri.rstrip("/")
    victims = builtins.list(s3dlio.list_iter(base + "/", recursive=True, config=cfg))
    has_key = "/" in base.split("://", 1)[1].strip("/")
    if has_key and not base.startswith(("file://", "direct://")) and s3dlio.exists(base, config=cfg):
        victims.insert(0, s3dlio.stat(base, config=cfg))
    if a.dry_run:
        for o in victims:
            out.record({"uri": o.uri, "dry_run": True}, f"would delete {o.uri}")
        out.note(f"{len(victims)} objects would be deleted")
        return 0
    if victims and not a.yes:
        if not sys.stdin.isatty():
            raise exc.InvalidConfigError(
                f"rm -r {uri}: {len(victims)} objects; pass --yes to delete without asking"
            )
        if not _confirm(f"delete {len(victims)} objects under {uri}?"):
            out.note("nothing deleted")
            return 1
    with _Progress(out, "rm", "delete", total_objects=len(victims)):
        n = s3dlio.delete_prefix(uri, config=cfg)
    out.record({"uri": uri, "deleted": n}, f"deleted {n} objects")
    return 0


def cmd_mb(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    s3dlio.create_bucket(_uri(a.uri), config=cfg)
    out.note(f"made {a.uri}")
    return 0


def cmd_rb(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    uri = _uri(a.uri)
    if a.force:
        n = s3dlio.delete_prefix(uri.rstrip("/") + "/", config=cfg)
        out.note(f"deleted {n} objects")
    elif next(iter(s3dlio.list_iter(uri.rstrip("/") + "/", recursive=True, config=cfg)), None) is not None:
        # Some servers (SeaweedFS) delete a bucket with its objects: refuse here, whatever the server.
        raise exc.StorageIOError(f"{uri} is not empty; `rb --force` deletes its objects first", uri)
    s3dlio.delete_bucket(uri, config=cfg)
    out.note(f"removed {a.uri}")
    return 0


def _under(uri: str, cfg: Any) -> Iterator[Any]:
    """Every entry under ``uri`` taken as a directory, as rm -r and cp -r take it: ``p`` means
    the object ``p`` and ``p/...``, never ``p2``."""
    import s3dlio

    base = uri.rstrip("/")
    for o in s3dlio.list_iter(uri, recursive=True, config=cfg):
        if uri.endswith("/") or o.uri == base or o.uri.startswith(base + "/"):
            yield o


def cmd_du(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    uri = _uri(a.uri)
    count = total = 0
    for o in _under(uri, cfg):
        if not o.is_dir:
            count += 1
            total += o.size
    size = _human(total) if a.human else str(total)
    out.record({"uri": uri, "objects": count, "bytes": total}, f"{size}\t{count} objects\t{uri}")
    return 0


# --- parser and main ------------------------------------------------------------------------------


_EXAMPLES = {
    "ls": ["s3dlio ls s3://bucket/data/", "s3dlio ls -rlh 's3://bucket/data/*.npz'"],
    "stat": ["s3dlio stat s3://bucket/data/000001.bin"],
    "cat": ["s3dlio cat s3://bucket/log.txt | head", "s3dlio cat --range 0:512 s3://bucket/shard.tar | xxd"],
    "cp": [
        "s3dlio cp ./model.pt s3://bucket/ckpt/",
        "s3dlio cp -r ./dataset s3://bucket/dataset --exclude '*.tmp' -j 64",
        "tar c dir | s3dlio cp - s3://bucket/dir.tar",
    ],
    "sync": ["s3dlio sync ./dataset s3://bucket/dataset --delete --dry-run"],
    "gen": [
        "s3dlio gen s3://bucket/synthetic --count 10000 --size 65536-262144 --seed 1",
        "s3dlio gen s3://bucket/imagenet --format wds --count 100000 --size normal:110KiB,30KiB --layout dlio",
        "s3dlio gen s3://bucket/unet3d --format npz --count 168 --size 140MiB --layout dlio -j 16",
        "s3dlio gen s3://bucket/dedup --count 1000 --size 1MiB --dedup 3 --compress 2",
    ],
    "bench": [
        "s3dlio bench s3://bucket/scratch --size 16MiB --count 64 -j 32",
        "s3dlio bench s3://bucket/dataset/ --shuffle --duration 30 --json",
    ],
    "rm": ["s3dlio rm s3://bucket/data/old.bin", "s3dlio rm -r s3://bucket/scratch --dry-run"],
    "mb": ["s3dlio mb s3://new-bucket"],
    "rb": ["s3dlio rb s3://old-bucket --force"],
    "du": ["s3dlio du -h s3://bucket/dataset"],
}


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .gen import FORMATS as gen_formats

    p = argparse.ArgumentParser(
        prog="s3dlio",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Exit codes: 0 ok, 1 storage error, 2 usage or bad URI/option, 3 not found, "
        "4 permission denied, 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"s3dlio {__version__}")
    g = p.add_argument_group("storage")
    g.add_argument("--endpoint-url", help="S3 endpoint (or Azure/GCS endpoint for az:// and gs://)")
    g.add_argument("--region", help="S3 region")
    g.add_argument("--profile", help="AWS profile")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("-q", "--quiet", action="store_true", help="no notes on stderr")
    p.add_argument("-v", "--verbose", action="store_true", help="show the full error chain")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help_: str) -> argparse.ArgumentParser:
        examples = "\n".join(f"  {e}" for e in _EXAMPLES[name])
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_,
            add_help=False,
            epilog=f"examples:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.add_argument("--help", action="help", help="show this help and exit")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("ls", cmd_ls, "list objects under a prefix (a glob such as 's3://b/data/*.bin' filters)")
    sp.add_argument("uri")
    sp.add_argument("-r", "--recursive", action="store_true", help="every level, not one")
    sp.add_argument("-l", "--long", action="store_true", help="size and etag too")
    sp.add_argument("-h", "--human-readable", dest="human", action="store_true", help="sizes in KiB/MiB/...")
    sp = add("stat", cmd_stat, "size, etag and last-modified of one object")
    sp.add_argument("uri")
    sp = add("cat", cmd_cat, "write an object (or a byte range of it) to stdout, streamed")
    sp.add_argument("uri")
    sp.add_argument("--range", metavar="OFFSET:LENGTH", help="only these bytes (LENGTH empty: to the end)")
    sp = add("cp", cmd_cp, "copy between any two schemes and local paths ('-': stdin/stdout)")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.add_argument(
        "-r", "--recursive", action="store_true", help="a prefix (a directory) and everything under it"
    )
    sp.add_argument("--include", action="append", metavar="GLOB", help="with -r: only relative keys matching")
    sp.add_argument("--exclude", action="append", metavar="GLOB", help="with -r: skip relative keys matching")
    sp.add_argument("-j", "--concurrency", dest="jobs", type=int, help="requests in flight (max_concurrency)")
    sp.add_argument("--part-size", type=int, help="bytes per part of large objects")
    sp.add_argument("--no-clobber", action="store_true", help="never overwrite an existing destination")
    sp = add("sync", cmd_sync, "copy what is missing or differs (size, then ETag or mtime) from SRC to DST")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.add_argument("--delete", action="store_true", help="also delete what DST has and SRC has not")
    sp.add_argument("--dry-run", action="store_true", help="print what would be copied and deleted")
    sp.add_argument("-j", "--concurrency", dest="jobs", type=int, help="objects copied at once")
    sp = add("gen", cmd_gen, "write a synthetic dataset (raw, npy, npz, tfrecord, wds, hdf5, jpeg, png)")
    sp.add_argument("prefix")
    sp.add_argument("--format", default="raw", choices=gen_formats, help="file format (default raw)")
    sp.add_argument("--count", type=int, required=True, help="samples to write")
    sp.add_argument(
        "--size",
        default="65536",
        help="data bytes per sample: N (65536, 64KiB, 1MiB), MIN-MAX (uniform), normal:MEAN,STD, "
        "or A,B,C (cycled); seeded",
    )
    sp.add_argument("--samples-per-shard", type=int, help="tfrecord, wds, hdf5 (default: shards of ~64 MiB)")
    sp.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    sp.add_argument(
        "--dedup", type=int, default=1, metavar="N", help="1/N of each sample's 4 KiB blocks unique"
    )
    sp.add_argument("--compress", type=float, default=1, metavar="M", help="data compresses about M:1")
    sp.add_argument(
        "--layout",
        default="flat",
        choices=("flat", "dlio"),
        help="flat: PREFIX/00000.bin, PREFIX/shard-000000.tar (default); dlio: PREFIX/train/img_0_of_N.npz",
    )
    sp.add_argument("-j", "--concurrency", dest="jobs", type=int, help="requests in flight (default 64)")
    sp = add(
        "bench", cmd_bench, "measure GET (and PUT) throughput, TTFB and latency on a training read pattern"
    )
    sp.add_argument("uri", help="where to write the bench objects, or (without --size) the objects to read")
    sp.add_argument("--size", help="PUT then GET objects of this size (65536, 64KiB, 16MiB, ...)")
    sp.add_argument("--count", type=int, help="objects (default 100 with --size; else all listed)")
    sp.add_argument("-j", "--concurrency", type=int, default=32, help="requests in flight (default 32)")
    sp.add_argument("--batch-size", type=int, default=16, help="objects per loader batch (default 16)")
    sp.add_argument("--shuffle", action="store_true", help="read in a seeded random order, new every epoch")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--duration", type=float, help="read epochs for this many seconds (default: one epoch)")
    sp.add_argument("--keep", action="store_true", help="keep the objects --size wrote")
    sp = add("rm", cmd_rm, "delete one object, or with -r a prefix (a directory: p and p/..., never p2)")
    sp.add_argument("uri")
    sp.add_argument("-r", "--recursive", action="store_true")
    sp.add_argument("--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)")
    sp.add_argument("--dry-run", action="store_true", help="print what would be deleted")
    sp = add("mb", cmd_mb, "make a bucket or container")
    sp.add_argument("uri")
    sp = add("rb", cmd_rb, "remove an empty bucket or container")
    sp.add_argument("uri")
    sp.add_argument("--force", action="store_true", help="delete its objects first")
    sp = add("du", cmd_du, "object count and bytes under a prefix (a directory: p and p/..., never p2)")
    sp.add_argument("uri")
    sp.add_argument("-h", "--human-readable", dest="human", action="store_true")
    return p


def _config(a: argparse.Namespace) -> Any:
    import s3dlio

    kw: dict[str, Any] = {}
    if a.endpoint_url:
        kw["endpoint_url"] = a.endpoint_url
    if a.region:
        kw["region"] = a.region
    if a.profile:
        kw["profile"] = a.profile
    if getattr(a, "jobs", None):
        kw["max_concurrency"] = a.jobs
    if getattr(a, "part_size", None):
        kw["part_size"] = a.part_size
        kw["multipart_threshold"] = a.part_size
    return s3dlio.StorageConfig(**kw) if kw else None


def _exit_code(e: BaseException) -> int:
    if isinstance(e, FileNotFoundError):
        return 3
    if isinstance(e, PermissionError):
        return 4
    if isinstance(e, ValueError):
        return 2
    return 1


def _counters() -> dict[str, int]:
    import s3dlio

    s = s3dlio.stats()
    return {k: int(s[k]) for k in ("objects_written", "bytes_written", "bytes_copied", "objects_deleted")}


def _done_since(start: dict[str, int]) -> str:
    """What was done before an interruption: `` after writing 3 objects (12.0 MiB) and deleting
    0`` (empty when nothing was)."""
    now = _counters()
    d = {k: now[k] - start[k] for k in now}
    if not any(d.values()):
        return "; nothing was written or deleted"
    size = _human(d["bytes_written"] + d["bytes_copied"])
    return (
        f"; done before it: {d['objects_written']} objects written ({size} sent in all), "
        f"{d['objects_deleted']} deleted; writes left unfinished were aborted, never published"
    )


def main(argv: builtins.list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    out = _Out(a.json, a.quiet)
    start = _counters()
    try:
        cfg = _config(a)
        rc = int(a.fn(a, cfg, out))
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # `s3dlio cat ... | head`: the reader went away; stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"s3dlio: interrupted{_done_since(start)}", file=sys.stderr)
        return 130
    except (exc.S3dlioError, OSError, ValueError) as e:
        msg = str(e) if a.verbose else str(e).splitlines()[0]
        print(f"s3dlio: error: {msg}", file=sys.stderr)
        return _exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
