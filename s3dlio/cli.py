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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
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

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.json, self.quiet = as_json, quiet

    def record(self, obj: dict[str, Any], text: str) -> None:
        print(json.dumps(obj) if self.json else text, flush=False)

    def note(self, text: str) -> None:
        if not self.quiet and not self.json:
            print(text, file=sys.stderr)


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


def _relative_files(src_dir: str, cfg: Any, include: list[str], exclude: list[str]) -> list[str]:
    import s3dlio

    keys = []
    for o in s3dlio.list_iter(src_dir, recursive=True, config=cfg):
        if o.is_dir:
            continue
        rel = o.uri[len(src_dir) :]
        if include and not any(fnmatch.fnmatchcase(rel, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            continue
        keys.append(rel)
    return keys


def cmd_cp(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    import s3dlio

    if a.src == "-" and a.dst == "-":
        raise exc.InvalidConfigError("cp: source and destination cannot both be '-'")
    if a.src == "-":  # stdin -> object, streamed through the writer (bounded memory)
        dst = _uri(a.dst)
        with s3dlio.open(dst, "wb", config=cfg) as w:
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
        n = s3dlio.copy(src, dst, config=cfg)
        out.record({"src": src, "dst": dst, "bytes": n}, f"copied {src} -> {dst} ({n} bytes)")
        return 0
    src_dir, dst_dir = src.rstrip("/") + "/", dst.rstrip("/") + "/"
    if not (a.include or a.exclude or a.no_clobber):
        n = s3dlio.copy_tree(src_dir, dst_dir, config=cfg)
        out.record(
            {"src": src_dir, "dst": dst_dir, "objects": n}, f"copied {n} objects {src_dir} -> {dst_dir}"
        )
        return 0
    rels = _relative_files(src_dir, cfg, a.include or [], a.exclude or [])

    def one(rel: str) -> int:
        target = dst_dir + rel
        if a.no_clobber and s3dlio.exists(target, config=cfg):
            return 0
        s3dlio.copy(src_dir + rel, target, config=cfg)
        return 1

    with ThreadPoolExecutor(max(1, min(a.jobs or 16, 64))) as ex:
        n = sum(ex.map(one, rels))
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

    def one(k: str) -> None:
        s3dlio.copy(src_dir + k, dst_dir + k, config=cfg)

    with ThreadPoolExecutor(max(1, min(a.jobs or 16, 64))) as ex:
        builtins.list(ex.map(one, todo))
        builtins.list(ex.map(lambda k: s3dlio.delete(dst_dir + k, config=cfg), extra))
    out.note(f"{len(todo)} copied, {len(extra)} deleted, {len(src) - len(todo)} up to date")
    return 0


def _sizes(spec: str, count: int, seed: int) -> builtins.list[int]:
    """``N`` (every object N bytes) or ``MIN-MAX`` (uniform in [MIN, MAX], seeded)."""
    import numpy as np

    try:
        if "-" in spec:
            lo, hi = (int(x) for x in spec.split("-", 1))
            if not 0 <= lo <= hi:
                raise ValueError
            return [int(x) for x in np.random.default_rng([seed, 1]).integers(lo, hi + 1, count)]
        n = int(spec)
        if n < 0:
            raise ValueError
        return [n] * count
    except ValueError:
        raise exc.InvalidConfigError(
            f"--size must be BYTES or MIN-MAX (0 <= MIN <= MAX), got {spec!r}"
        ) from None


def cmd_gen(a: argparse.Namespace, cfg: Any, out: _Out) -> int:
    """A synthetic dataset: ``count`` objects ``<prefix>/<index>.bin`` of seeded random bytes (the
    same seed writes the same bytes), written concurrently in batches."""
    import numpy as np

    import s3dlio

    if a.count < 0:
        raise exc.InvalidConfigError(f"--count must be >= 0, got {a.count}")
    prefix = _uri(a.prefix).rstrip("/") + "/"
    sizes = _sizes(a.size, a.count, a.seed)
    width = max(5, len(str(max(a.count - 1, 0))))
    batch, written = 256, 0
    for start in range(0, a.count, batch):
        items: builtins.list[tuple[str, bytes]] = []
        for i in range(start, min(start + batch, a.count)):
            items.append(
                (f"{prefix}{i:0{width}d}.bin", np.random.default_rng([a.seed, 0, i]).bytes(sizes[i]))
            )
        s3dlio.put_many(items, max_concurrency=a.jobs, config=cfg)
        written += sum(sizes[start : start + batch])
    out.record(
        {"prefix": prefix, "objects": a.count, "bytes": written},
        f"wrote {a.count} objects, {written} bytes under {prefix}",
    )
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


def _parser() -> argparse.ArgumentParser:
    from . import __version__

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
        sp = sub.add_parser(name, help=help_, description=help_, add_help=False)
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
    sp = add("gen", cmd_gen, "write a synthetic dataset of seeded random objects")
    sp.add_argument("prefix")
    sp.add_argument("--count", type=int, required=True, help="objects to write")
    sp.add_argument("--size", default="65536", help="bytes per object, or MIN-MAX (uniform, seeded)")
    sp.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    sp.add_argument("-j", "--concurrency", dest="jobs", type=int, help="requests in flight")
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


def main(argv: builtins.list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    out = _Out(a.json, a.quiet)
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
        print("s3dlio: interrupted", file=sys.stderr)
        return 130
    except (exc.S3dlioError, OSError, ValueError) as e:
        msg = str(e) if a.verbose else str(e).splitlines()[0]
        print(f"s3dlio: error: {msg}", file=sys.stderr)
        return _exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
