"""Runs the Feed suite on the SQLite and PostgreSQL stores' own feeds, and on JetStream's
(PostgreSQL as the store, a relay feeding a nats-server)."""

import pytest

from tidings.testing.conformance.feed import *  # noqa: F403
from tidings.testing.plugin import BUS_BACKENDS


@pytest.fixture(params=BUS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
