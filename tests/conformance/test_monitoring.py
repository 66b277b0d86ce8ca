"""Runs the monitoring part of the conformance suite (what metrics read of the ports) on the
SQLite log, the PostgreSQL log, JetStream (PostgreSQL as the store) and SQLite with encryption."""

import pytest

from tidings.testing.conformance.monitoring import *  # noqa: F403
from tidings.testing.plugin import BUS_BACKENDS, SEALED


@pytest.fixture(params=(*BUS_BACKENDS, SEALED))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
