"""StorageConfig is declared once, in the Rust core: the Python dataclass and the docs table are
checked against that declaration (``s3dlio._core.Config.schema()``)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import s3dlio
from s3dlio import _core

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_dataclass_matches_the_core_declaration() -> None:
    """Same fields, same order, same defaults; secrets are the ones the core marks secret."""
    schema = _core.Config.schema()
    fields = dataclasses.fields(s3dlio.StorageConfig)
    assert [f.name for f in fields] == [row[0] for row in schema]
    for f, (name, _kind, default, _secret, doc) in zip(fields, schema, strict=True):
        assert f.default == default, f"{name}: dataclass default {f.default!r}, core {default!r}"
        assert doc, f"{name} has no doc in the core"
    assert {row[0] for row in schema if row[3]} == {"secret_access_key", "session_token"}


def test_docs_table_lists_every_field_with_its_default() -> None:
    """docs/configuration.md has one table row per field, in order, with the core's default."""
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", DOCS.read_text(), flags=re.MULTILINE)
    schema = _core.Config.schema()
    assert [r[0] for r in rows] == [row[0] for row in schema]

    def shown(v: object) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v >= 1024 * 1024 and v % (1024 * 1024) == 0:
            return f"{v // (1024 * 1024)} MiB"
        return repr(v)

    for (name, doc_default), row in zip(rows, schema, strict=True):
        assert doc_default == shown(row[2]), f"{name}: docs say {doc_default}, core says {row[2]!r}"


def test_to_dict_redacts_and_round_trips_the_fields() -> None:
    """to_dict shows every field; secrets as '***' and the key id by its last 4 characters."""
    cfg = s3dlio.StorageConfig(access_key_id="AKIAABCDEFGH1234", secret_access_key="s3cr3t-value")
    d = cfg.native.to_dict()
    assert list(d) == [row[0] for row in _core.Config.schema()]
    assert d["secret_access_key"] == "***"
    assert d["access_key_id"] == "****1234"
    assert "s3cr3t" not in repr(cfg.native) and "AKIAABCD" not in repr(cfg.native)
