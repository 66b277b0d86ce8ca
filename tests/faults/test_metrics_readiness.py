"""``/readyz`` of a running ``tidings run --metrics-port`` follows its store: a throwaway
PostgreSQL stopped (``pg_ctl stop -m immediate``) makes it 503 naming the store, in bounded time,
while ``/healthz`` stays 200 (the process is alive); started again, 200 again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.unit.test_cli_metrics import free_port, get, start, stop, wait_until_serving
from tidings.testing.eventually import eventually
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
