"""Property test over byte ranges on every backend: any (offset, length) a user can pass yields
exactly ``data[offset:offset+length]`` or a ValueError naming the URI; never a panic, a short or
padded read, or an arithmetic overflow (``get_range(uri, 2**64 - 1, 2)`` once panicked)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import s3dlio

SIZE = 10_000
DATA = os.urandom(SIZE)
U64 = 2**64

_near = st.sampled_from([0, 1, SIZE - 1, SIZE, SIZE + 1, U64 - 2, U64 - 1, U64, 2**63, -1])
offsets = st.one_of(st.integers(0, SIZE + 10), _near)
lengths = st.one_of(st.none(), st.integers(0, SIZE + 10), _near)


@pytest.fixture
def obj(root: str) -> str:
    uri = f"{root}props.bin"
    s3dlio.put(uri, DATA)
    return uri


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=offsets, length=lengths)
def test_any_range_is_exact_or_a_value_error_naming_the_uri(
    obj: str, offset: int, length: int | None
) -> None:
    """The exact slice when the range lies inside the object, else a ValueError (RangeError or
    InvalidConfigError) whose .uri is the object's URI."""
    inside = 0 <= offset < SIZE and (length is None or (length > 0 and offset + length <= SIZE))
    if inside:
        end = SIZE if length is None else offset + length
        assert bytes(s3dlio.get_range(obj, offset, length)) == DATA[offset:end]
        return
    with pytest.raises(ValueError) as ei:
        s3dlio.get_range(obj, offset, length)
    assert getattr(ei.value, "uri", None) == obj, repr(ei.value)


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (U64 - 1, 2),
        (U64 - 1, 1),
        (U64 - 1, None),
        (1, U64 - 1),
        (SIZE - 1, U64 - 1),
        (2**63, 2**63),
        (SIZE, 1),
    ],
    ids=["max-plus-2", "max-plus-1", "max-open", "1-plus-max", "last-plus-max", "half-plus-half", "at-end"],
)
def test_overflowing_ranges_are_range_errors_sync_and_async(
    obj: str, offset: int, length: int | None
) -> None:
    """The issue's reproduction and its neighbours: an offset + length that overflows u64 (or an
    offset at the end) is a RangeError whose .uri is the URI, from get_range and from
    get_range_async alike; never RuntimeError ("internal error (task panicked): attempt to add
    with overflow")."""
    import asyncio

    from s3dlio.exceptions import RangeError

    for call in (
        lambda: s3dlio.get_range(obj, offset, length),
        lambda: asyncio.run(s3dlio.get_range_async(obj, offset, length)),
    ):
        with pytest.raises(RangeError) as ei:
            call()
        assert isinstance(ei.value, ValueError) and not isinstance(ei.value, RuntimeError)
        assert ei.value.uri == obj, repr(ei.value)
