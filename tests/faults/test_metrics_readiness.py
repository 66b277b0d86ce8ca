"""``/readyz`` of a running ``tidings run --metrics-port`` follows its store: a throwaway
PostgreSQL stopped (``pg_ctl stop -m immediate``) makes it 503 naming the store, in bounded time,
while ``/healthz`` stays 200 (the process is alive); started again, 200 again. And readiness
names a bus that hangs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.unit.test_cli_metrics import free_port, get, start, stop, wait_until_serving
from tidings.app import App
from tidings.runtime.context import Context
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually
from tidings.testing.nats import nats_servers
from tidings.testing.servers import EmbeddedServer

from .store_load import throwaway_postgres


@pytest.fixture(scope="module")
def stopping_server() -> Iterator[EmbeddedServer]:
    """A throwaway PostgreSQL of this module's own: the test stops it."""
    with throwaway_postgres() as server:
        yield server


@pytest.mark.timeout(180)
def test_readyz_turns_503_while_the_store_is_away_and_200_once_back(
    stopping_server: EmbeddedServer, tmp_path: Path
) -> None:
    name = f"ready_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stopping_server.socket_conninfo(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://{stopping_server.user}@127.0.0.1:{stopping_server.port}/{name}?connect_timeout=2"
    port = free_port()
    runner = start(tmp_path, url, port)

    def ready() -> bool:
        return get(port, "/readyz")[0] == 200

    def unready() -> bool:
        return get(port, "/readyz")[0] == 503

    try:
        asyncio.run(wait_until_serving(port, runner))
        asyncio.run(eventually(ready, within=30))
        stopping_server.stop_immediately()
        try:
            asyncio.run(eventually(unready, within=30))
            began = time.monotonic()
            status, body = get(port, "/readyz")
            assert time.monotonic() - began < 5  # the probe is bounded, not stuck on the store
            assert status == 503 and "store unreachable" in body
            assert get(port, "/healthz") == (200, "ok\n")
        finally:
            stopping_server.start_again()
        asyncio.run(eventually(ready, within=60))
        assert get(port, "/readyz") == (200, "ready\n")
    finally:
        stop(runner, tmp_path)
        with psycopg.connect(stopping_server.socket_conninfo(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.timeout(120)
async def test_readiness_names_a_hanging_bus_in_bounded_time(tmp_path: Path) -> None:
    """A nats-server that hangs (SIGSTOP: connections open, nothing answered) makes the bus
    unready within the probe's timeout, and ready again once it resumes."""
    with nats_servers() as (server,):
        app = App("ready-bus", store=f"sqlite:///{tmp_path / 'store.db'}", bus=server.url)

        @app.subscribe("conformance.bus.ping", group="pinged")
        async def handle(event: Ping, ctx: Context) -> None:
            pass

        async with app, app.running(lease_ttl=2.0, poll=0.2, monitoring=0.2):
            monitor = app.monitor
            assert monitor is not None
            assert await monitor.unready() == []
            server.pause()
            try:
                began = time.monotonic()
                problems = await monitor.unready()
                assert time.monotonic() - began < 3  # each probe waits a second at most
                assert problems == ["bus unreachable (no answer within 1 s)"]
            finally:
                server.resume()

            async def ready() -> bool:
                return await monitor.unready() == []

            await eventually(ready, within=30)
