"""Runs the saga part of the conformance suite on the SQLite log, the PostgreSQL log and
JetStream."""

import pytest

from tidings.testing.conformance.sagas import *  # noqa: F403
from tidings.testing.plugin import BUS_BACKENDS, SEALED


@pytest.fixture(params=(*BUS_BACKENDS, SEALED))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
