"""PostgreSQL crashes under load: a throwaway server stopped with ``pg_ctl stop -m immediate``
while a producer appends, the relay publishes to JetStream and a consumer group applies effects,
then started again on the same port; and, separately, every connection of tidings ended with
``pg_terminate_backend``. The producer retries each refused event under its own id (a retry of
an append that committed unseen is the stored no-op). Every acknowledged event is applied once,
in order per key, and stored once on the bus; each run prints its counts and how long tidings
took to work again once the server was back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Iterator

import nats
import psycopg
import pytest

from tidings.testing.plugin import fresh_bus_url
from tidings.testing.servers import EmbeddedServer

from .store_load import Producer, consuming_app, count_faults, throwaway_postgres
from .workers import effects

KEYS = 6
PER_KEY = 50
SEEDS = range(3)


@pytest.fixture(scope="module")
def crashing_server() -> Iterator[EmbeddedServer]:
    """A throwaway PostgreSQL of this module's own: the tests crash it."""
    with throwaway_postgres() as server:
        yield server


@contextlib.contextmanager
def _database(server: EmbeddedServer) -> Iterator[str]:
    name = f"crash_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.socket_conninfo(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://{server.user}@127.0.0.1:{server.port}/{name}?connect_timeout=2"
    finally:
        with psycopg.connect(server.socket_conninfo(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _terminate_backends(server: EmbeddedServer, database: str) -> int:
    with psycopg.connect(server.socket_conninfo(), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        ).fetchall()
    return len(rows)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fault", ["immediate-stop", "terminate-backends"])
async def test_postgres_crashes_under_load_lose_and_double_nothing(
    crashing_server: EmbeddedServer, nats_url: str, fault: str, seed: int
) -> None:
    rng = random.Random(f"{fault}-{seed}")
    total = KEYS * PER_KEY
    strike_at = rng.randrange(total // 4, total * 3 // 5)
    with _database(crashing_server) as store_url:
        bus_url = fresh_bus_url(nats_url)
        app = consuming_app("pg-crash", store_url, bus_url)
        async with app, app.running(lease_ttl=2.0, poll=0.1):
            producer = Producer(app, KEYS)
            now = asyncio.Event()
            striker = asyncio.create_task(_strike(crashing_server, store_url, fault, rng, now))
            for n in range(PER_KEY):
                for key in range(KEYS):
                    if len(producer.acknowledged) == strike_at:
                        now.set()  # the fault strikes while the producer goes on
                    assert await producer.publish(n, key)
            back = await striker
            appended = time.monotonic()
            deadline = appended + 90
            while sum(map(len, (await effects(app, KEYS)).values())) < total:
                assert time.monotonic() < deadline, f"stuck: {await effects(app, KEYS)}"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # time for a repeat to show, if one were coming
            counts = count_faults(await effects(app, KEYS), PER_KEY)
        on_bus = await _stored_on_bus(bus_url)
    recovery = producer.first_ack_after_refusal - back if producer.refusals else 0.0
    print(
        f"\n{fault} seed {seed} after {strike_at} of {total} events: {counts}, {on_bus} on the bus, "
        f"{len(producer.refusals)} refused appends, first append {recovery:.2f} s after the server was back"
    )
    assert (counts.lost, counts.duplicated, counts.out_of_order) == (0, 0, 0), counts
    assert on_bus == total, "an event is missing on the bus, or stored there twice"
    assert recovery < 10, "tidings took too long to work again"


async def _strike(
    server: EmbeddedServer, store_url: str, fault: str, rng: random.Random, now: asyncio.Event
) -> float:
    """Inject the fault once ``now`` is set; return when the server was back (monotonic time)."""
    await now.wait()
    if fault == "immediate-stop":
        await asyncio.to_thread(server.stop_immediately)
        await asyncio.sleep(rng.uniform(0.5, 2.0))  # tidings meets a server that is down
        await asyncio.to_thread(server.start_again)
    else:
        database = store_url.rsplit("/", 1)[1].partition("?")[0]
        ended = await asyncio.to_thread(_terminate_backends, server, database)
        assert ended > 0, "tidings held no connection to end"
    return time.monotonic()


async def _stored_on_bus(bus_url: str) -> int:
    server, _, query = bus_url.partition("?")
    stream = dict(part.split("=") for part in query.split("&"))["stream"]
    client = await nats.connect(server, connect_timeout=5)
    try:
        js = client.jetstream()
        return sum([(await js.stream_info(f"{stream}_{p}")).state.messages for p in range(8)])
    finally:
        await client.close()
