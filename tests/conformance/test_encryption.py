"""Runs the encryption part of the conformance suite on the SQLite log, the PostgreSQL log and
JetStream."""

import pytest

from tidings.testing.conformance.encryption import *  # noqa: F403
from tidings.testing.conformance.encryption_master_key import *  # noqa: F403
from tidings.testing.conformance.encryption_names import *  # noqa: F403
from tidings.testing.plugin import BUS_BACKENDS


@pytest.fixture(params=BUS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name
