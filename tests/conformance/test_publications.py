"""Runs the conformance suite of events published while handling another (their derived ids) on
the SQLite log, the PostgreSQL log, JetStream and SQLite with encryption on."""

import pytest

from tidings.testing.conformance.publications import *  # noqa: F403
from tidings.testing.plugin import BUS_BACKENDS, SEALED


@pytest.fixture(params=(*BUS_BACKENDS, SEALED))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
