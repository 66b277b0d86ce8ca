"""Runs the bus part of the conformance suite on the SQLite log, the PostgreSQL log and
JetStream (PostgreSQL as the store, the relay feeding a nats-server), and on SQLite with
encryption on; redrive with several members of a group included."""

import pytest

from tidings.testing.conformance.bus import *  # noqa: F403
from tidings.testing.conformance.redrive import *  # noqa: F403
from tidings.testing.plugin import BUS_BACKENDS, SEALED


@pytest.fixture(params=(*BUS_BACKENDS, SEALED))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
