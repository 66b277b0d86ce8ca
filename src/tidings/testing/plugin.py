"""pytest fixtures: real engines for every backend, fresh per test.

``backend`` is parametrised over every store engine (ids ``sqlite`` and ``postgres``); ``store_url``
is a fresh, empty store of that engine for one test (a new file, or a new database on the session's
PostgreSQL server), and ``store`` the same, opened. A module that overrides ``backend`` with
``BUS_BACKENDS`` also runs on ``nats``: PostgreSQL as the store and a fresh JetStream stream on
the session's nats-server as the bus (``TIDINGS_BUS`` is set for the test, so every App of the
test uses it); with ``SEALED``, on SQLite with a master key in the environment (encryption on).
``feed_under_test`` is what the Feed suite reads on that backend: the store's own feed, or on
``nats`` JetStream's, fed by a relay (``tidings.testing.feeds``).
With ``CI`` set, a server that cannot be had is an error; elsewhere its tests are
skipped with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio

from tidings.adapters.registry import open_store
from tidings.ports import EventStore
from tidings.testing.conformance.feed import FeedUnderTest
from tidings.testing.feeds import RelayedFeed, StoreFeed
from tidings.testing.nats import nats_servers
from tidings.testing.servers import postgres_server

BACKENDS = ("sqlite", "postgres")
BUS_BACKENDS = ("sqlite", "postgres", "nats")
#: SQLite with a master key in the environment: every App of the test encrypts (suites that go
#: through the App add it, so that everything they prove also holds with encryption on).
SEALED = "sealed"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """What a test does when a service or program it needs cannot be had: skip on a developer's
    machine, fail with ``CI`` set (a skip there would hide that the test never ran)."""
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_store_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TIDINGS_STORE``, ``TIDINGS_BUS``, ``TIDINGS_POLICY`` and ``TIDINGS_PRINCIPAL`` override
    every App's: a test must not follow them to real ones. A master key in the environment would
    switch encryption on everywhere: only where a test asks."""
    names = ("TIDINGS_STORE", "TIDINGS_BUS", "TIDINGS_POLICY", "TIDINGS_PRINCIPAL")
    for name in (*names, "TIDINGS_MASTER_KEY", "TIDINGS_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session (see ``tidings.testing.servers``)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_server())
        except Exception as exc:
            if _in_ci():
                raise
            pytest.skip(f"no PostgreSQL for the conformance suite: {exc}")
        yield url


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A nats-server with JetStream for the whole session (see ``tidings.testing.nats``)."""
    with contextlib.ExitStack() as stack:
        try:
            (server,) = stack.enter_context(nats_servers(1))
        except Exception as exc:
            if _in_ci():
                raise
            pytest.skip(f"no nats-server for the bus suite: {exc}")
        yield server.url


def fresh_bus_url(server_url: str) -> str:
    """A stream and subject prefix of their own on the server, for one test."""
    tag = uuid.uuid4().hex[:12]
    return f"{server_url}?stream=T_{tag}&prefix=t{tag}"


@contextlib.contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server for one test; dropped afterwards."""
    import psycopg

    name = f"tidings_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlite_url(directory: Path, name: str = "store.db") -> str:
    return f"sqlite:///{directory / name}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the engine under test."""
    name: str = request.param
    return name


@pytest.fixture
def store_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh, empty store URL of the engine under test (and on ``nats``, a fresh bus)."""
    if backend in ("sqlite", SEALED):
        if backend == SEALED:
            monkeypatch.setenv("TIDINGS_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
        yield sqlite_url(tmp_path)
        return
    server: str = request.getfixturevalue("postgres_url")
    with fresh_postgres_database(server) as url:
        if backend == "nats":
            monkeypatch.setenv("TIDINGS_BUS", fresh_bus_url(request.getfixturevalue("nats_url")))
        yield url


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    """An opened, empty store of the engine under test."""
    opened = open_store(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture
async def feed_under_test(
    backend: str, store_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[FeedUnderTest]:
    """The feed of the engine under test, over a fresh log, and a way to fill that log."""
    if backend == "nats":
        bus_url = fresh_bus_url(request.getfixturevalue("nats_url"))
        async with RelayedFeed.opened(store_url, bus_url) as relayed:
            yield relayed
        return
    async with StoreFeed.opened(store_url) as own:
        yield own
