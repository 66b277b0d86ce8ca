"""A poison flood: 10,000 malformed raw messages on one partition's subject, while valid events
flow through the relay on every partition, the flooded one included (there the relay publishes
between the junk, and finds its place again past it). The flooded partition drains (a
``malformed`` dead letter per message, no more, no fewer) and every valid event is handled once,
in its partition's order. How much the flood slows the other partitions is a speed question, measured
by ``benchmarks/poison.py``, not here."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import nats
import pytest

from tests.faults.bus_load import GROUP, KEYS, committed, counting_app, settle
from tests.faults.tally import tally
from tidings.app import App
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url
from tidings.testing.raw import raw_execute

SEEDS = [1, 2]  # each drains 10,000 letters, a minute or so
FLOOD = 10_000
VALID = 400


def _junk(rng: random.Random, n: int) -> tuple[bytes, dict[str, str] | None]:
    """A message no reader can take for an event: bytes, broken JSON, or CloudEvents headers
    that lack what an event needs."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200)), None
    if kind == 1:
        return b'{"specversion": "1.0", "id": "junk-' + str(n).encode() + b'", "data": {', None
    return b'{"key":"k","n":1}', {"ce-specversion": "1.0", "ce-id": f"junk-{n}"}


async def flood(nats_url: str, subject: str, rng: random.Random, count: int) -> None:
    """``count`` malformed messages on ``subject``, published as fast as the server takes them."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        for start in range(0, count, 500):
            acks = [
                js.publish(subject, body, headers=headers)
                for body, headers in (_junk(rng, n) for n in range(start, min(start + 500, count)))
            ]
            await asyncio.gather(*acks)
    finally:
        await client.close()


async def _publish_valid(app: App, keys: list[str], rng: random.Random, total: int) -> None:
    counts = dict.fromkeys(keys, 0)
    for _ in range(total):
        key = rng.choice(keys)
        await app.publish(Ping(key=key, n=counts[key]), key=key)
        counts[key] += 1
        await asyncio.sleep(0.005)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_poison_flood_drains_and_the_other_partitions_lose_nothing(
    tmp_path: Path, nats_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    bus = fresh_bus_url(nats_url)
    prefix = bus.split("prefix=", 1)[1].split("&", 1)[0]
    app = counting_app("flooded", store, bus)
    async with app, app.running(lease_ttl=2.0, poll=0.2):
        flooded = rng.randrange(app.store.feed.partitions)
        subject = f"{prefix}.{flooded}.conformance.bus.ping"
        started = time.monotonic()
        await asyncio.gather(
            flood(nats_url, subject, rng, FLOOD),
            _publish_valid(app, [f"key-{k}" for k in range(KEYS)], rng, VALID),
        )
        done = await settle(app, VALID, within=180)

        async def letters() -> int:
            ((count,),) = await asyncio.to_thread(
                raw_execute,
                store,
                "SELECT count(*) FROM tidings_dead_letters WHERE group_name = ? AND reason = 'malformed'",
                GROUP,
            )
            return int(count)

        async def drained_all() -> bool:
            return await letters() >= FLOOD

        await eventually(drained_all, within=180)
        drained = time.monotonic()
        await asyncio.sleep(1.0)  # anything lettered twice would show now
        lettered = await letters()
        result = await tally(
            f"poison flood of {FLOOD} on partition {flooded} (seed {seed})",
            app.store.feed,
            await committed(app),
            expected=VALID,
            recovery=max(done, drained) - started,
        )
    print(f"{result.scenario}: {lettered} malformed dead letters; drained in {drained - started:.1f} s")
    assert result.clean, result
    assert lettered == FLOOD, f"{lettered} dead letters for {FLOOD} malformed messages"
