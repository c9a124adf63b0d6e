"""Reprs never leak secrets and read as Python: ``repr(StorageConfig)`` shows at most the last 4
characters of the access key id (as the AWS CLI does) and ``'***'`` for the secret and the session
token; ``repr(ObjectInfo)`` is Python-style."""

from __future__ import annotations

import pickle

import pytest

import s3dlio

KEY = "AKIAABCDEFGH1234"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-EXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLE-session-token-value"


def test_config_repr_masks_the_access_key_id() -> None:
    """The access key id shows as '****' plus its last 4 characters, never more of it; the secret
    and the session token show as '***'."""
    cfg = s3dlio.StorageConfig(access_key_id=KEY, secret_access_key=SECRET, session_token=TOKEN)
    r = repr(cfg)
    assert "access_key_id='****1234'" in r, r
    assert "secret_access_key='***'" in r and "session_token='***'" in r, r
    for leaked in (KEY, KEY[:-4], KEY[-5:], SECRET, SECRET[-8:], TOKEN, TOKEN[-8:]):
        assert leaked not in r, (leaked, r)
    assert str(cfg) == r  # a dataclass's str() is its repr


@pytest.mark.parametrize("key", ["", "a", "abcd"])
def test_config_repr_short_key_shows_nothing_of_it(key: str) -> None:
    """A key of 4 characters or fewer shows as '****' alone: its last 4 would be all of it."""
    r = repr(s3dlio.StorageConfig(access_key_id=key, secret_access_key="s"))
    assert "access_key_id='****'" in r, r


def test_config_repr_five_character_key_shows_only_its_last_four() -> None:
    """The shortest key that is masked partially: one hidden character, four shown."""
    r = repr(s3dlio.StorageConfig(access_key_id="ZWXYZ", secret_access_key="s"))
    assert "access_key_id='****WXYZ'" in r and "ZWXYZ" not in r, r


def test_config_repr_without_credentials_and_other_fields() -> None:
    """Fields left None print None (nothing masked that is not there); other fields print as
    Python values."""
    r = repr(s3dlio.StorageConfig(endpoint_url="http://127.0.0.1:9000", max_attempts=3))
    assert r.startswith("StorageConfig(endpoint_url='http://127.0.0.1:9000', ")
    assert "access_key_id=None" in r and "secret_access_key=None" in r and "session_token=None" in r
    assert "max_attempts=3" in r and "'***'" not in r and "'****" not in r


def test_config_keeps_the_real_key_behind_the_repr() -> None:
    """Masking is display only: the field, equality and a pickle round trip keep the whole key
    (the client needs it), and the repr of the copy is masked too."""
    cfg = s3dlio.StorageConfig(access_key_id=KEY, secret_access_key=SECRET)
    assert cfg.access_key_id == KEY and cfg.secret_access_key == SECRET
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.access_key_id == KEY
    assert repr(back) == repr(cfg) and KEY not in repr(back)


# repr(ObjectInfo) is the Rust extension's (the lead's change): FAILS ON THE BASELINE, which prints
# Rust's Debug form (etag=Some("...")) and leaves out last_modified.
def test_object_info_repr_is_python_style(root: str) -> None:
    """repr(ObjectInfo) is ObjectInfo(uri='...', size=..., etag=..., last_modified=...) with
    Python reprs of the values (quoted strings, None for a missing etag, a float timestamp), on
    every backend."""
    uri = f"{root}k.bin"
    s3dlio.put(uri, b"abc")
    info = s3dlio.stat(uri)
    r = repr(info)
    assert "Some(" not in r and "None(" not in r, r
    expected = (
        f"ObjectInfo(uri={info.uri!r}, size={info.size!r}, etag={info.etag!r}, "
        f"last_modified={info.last_modified!r})"
    )
    assert r == expected, r
    assert isinstance(info.last_modified, float)
