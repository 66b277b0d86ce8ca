"""A steady load through the relay and JetStream, for the bus fault tests: ``Ping`` events on
``KEYS`` keys, and one group that commits, per partition, the ids of the events it handled in a
document of its unit of work (so a test counts what committed, not what a handler began)."""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
import nats

from tidings.adapters.sql.common import Partitioner
from tidings.app import App
from tidings.runtime.context import Context
from tidings.testing.conformance.events import Ping

KEYS = 16
GROUP = "counted"


def counting_app(name: str, store: str, bus: str) -> App:
    app = App(name, store=store, bus=bus)

    @app.subscribe("conformance.bus.ping", group=GROUP)
    async def count(event: Ping, ctx: Context) -> None:
        partition = str(Partitioner(app.store.feed.partitions)(ctx.envelope.partitionkey or ""))
        async with ctx.unit_of_work() as uow:
            seen = await uow.get("seen", partition, list[str]) or []
            uow.put("seen", partition, [*seen, ctx.envelope.id])

    return app


async def committed(app: App) -> list[str]:
    """The ids of the events whose handling committed, per partition in commit order."""
    found: list[str] = []
    for partition in range(app.store.feed.partitions):
        raw = await app.store.get_document("seen", str(partition))
        found += [] if raw is None else msgspec.json.decode(raw, type=list[str])
    return found


async def publish_load(app: App, rng: random.Random, total: int, *, rate: float) -> None:
    """``total`` events at about ``rate`` per second, the keys in a seeded order, ``n`` counting
    up per key."""
    counts = [0] * KEYS
    started = time.monotonic()
    for index in range(total):
        key = rng.randrange(KEYS)
        await app.publish(Ping(key=f"key-{key}", n=counts[key]), key=f"key-{key}")
        counts[key] += 1
        await asyncio.sleep(max(0.0, started + (index + 1) / rate - time.monotonic()))


async def settle(app: App, total: int, *, within: float) -> float:
    """Wait until ``total`` handlings committed; returns when that was (monotonic seconds)."""
    deadline = time.monotonic() + within
    while len(await committed(app)) < total:
        assert time.monotonic() < deadline, (
            f"{len(await committed(app))} of {total} handled in {within:.0f} s"
        )
        await asyncio.sleep(0.2)
    return time.monotonic()


async def stored_on_the_bus(urls: list[str], stream: str, partitions: int) -> int:
    """How many messages the partition streams hold (each event once: the number of events)."""
    client = await nats.connect(servers=urls, connect_timeout=5)
    try:
        js = client.jetstream()
        for attempt in range(100):  # a cluster just restarted elects its leaders first
            try:
                infos = [await js.stream_info(f"{stream}_{partition}") for partition in range(partitions)]
                return sum(info.state.messages for info in infos)
            except Exception:
                if attempt == 99:
                    raise
                await asyncio.sleep(0.3)
        raise AssertionError("unreachable")
    finally:
        await client.close()
