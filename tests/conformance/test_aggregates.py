"""Runs the aggregate and projection part of the conformance suite on every store, and on SQLite with
encryption on."""

import pytest

from tidings.testing.conformance.aggregates import *  # noqa: F403
from tidings.testing.plugin import BACKENDS, SEALED


@pytest.fixture(params=(*BACKENDS, SEALED))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
