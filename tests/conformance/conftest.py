"""The conformance suite's one fixture, ``store``: a fresh, empty place on each backend of
:data:`stores.BACKENDS` (see stores.py for how a backend joins). The session-wide fixtures it draws on
(``bucket``, ``boto3_client``, ``proxy``, ``disk_dir``) come from tests/conftest.py."""

from __future__ import annotations

import pytest

from .stores import BACKENDS, Store


@pytest.fixture(params=list(BACKENDS))
def store(request: pytest.FixtureRequest) -> Store:
    """A fresh, empty :class:`Store` on each backend (only the S3 one starts the S3 server)."""
    return BACKENDS[request.param](request)
