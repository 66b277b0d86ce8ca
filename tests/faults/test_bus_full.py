"""The bus at its size limit: every JetStream stream of the log capped (``max_bytes``, discarding
new messages, the one policy that never drops a stored event) while a producer appends, the relay
publishes and a group consumes. The relay meets the full stream, says so in its log and keeps the
events in the store (the store is the outbox: nothing acknowledged is lost); once the limit is
raised, it carries on by itself and every effect is applied once, in order per key."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path

import nats
import pytest
from nats.js.api import DiscardPolicy

from tidings.testing.plugin import fresh_bus_url

from .store_load import Producer, consuming_app, count_faults
from .workers import effects

KEYS = 6
PER_KEY = 50
PARTITIONS = 8  # the store's default
SEEDS = range(3)


class Refusals(logging.Handler):
    """Collects what the runtime logs when the bus did not store a message."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "did not store" in text:
            self.messages.append(text)


async def _cap_streams(bus_url: str, max_bytes: int) -> int:
    """Set every partition's stream to ``max_bytes`` (-1: no limit); return the messages held."""
    server, _, query = bus_url.partition("?")
    stream = dict(part.split("=") for part in query.split("&"))["stream"]
    client = await nats.connect(server, connect_timeout=5)
    try:
        js = client.jetstream()
        held = 0
        for partition in range(PARTITIONS):
            info = await js.stream_info(f"{stream}_{partition}")
            info.config.max_bytes = max_bytes
            info.config.discard = DiscardPolicy.NEW
            await js.update_stream(info.config)
            held += info.state.messages
        return held
    finally:
        await client.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_full_stream_holds_the_relay_back_and_loses_nothing(
    tmp_path: Path, nats_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    limit = rng.randrange(4096, 12288)
    total = KEYS * PER_KEY
    bus_url = fresh_bus_url(nats_url)
    refusals = Refusals()
    logging.getLogger("tidings").addHandler(refusals)
    app = consuming_app("bus-full", f"sqlite:///{tmp_path / 'store.db'}", bus_url)
    try:
        async with app:
            await _cap_streams(bus_url, limit)
            async with app.running(lease_ttl=2.0, poll=0.1):
                producer = Producer(app, KEYS)
                for n in range(PER_KEY):
                    for key in range(KEYS):
                        assert await producer.publish(n, key)
                deadline = time.monotonic() + 30
                while not refusals.messages:
                    assert time.monotonic() < deadline, "the relay never met the full stream"
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the consumers handle what the streams hold
                held = await _cap_streams(bus_url, limit)
                applied_while_full = sum(map(len, (await effects(app, KEYS)).values()))
                assert held < total and applied_while_full <= held
                space_back = time.monotonic()
                assert await _cap_streams(bus_url, -1) >= held
                while sum(map(len, (await effects(app, KEYS)).values())) < total:
                    assert time.monotonic() < space_back + 60, "the relay did not resume"
                    await asyncio.sleep(0.1)
                caught_up = time.monotonic() - space_back
                await asyncio.sleep(0.5)  # time for a repeat to show, if one were coming
                counts = count_faults(await effects(app, KEYS), PER_KEY)
            on_bus = await _cap_streams(bus_url, -1)
    finally:
        logging.getLogger("tidings").removeHandler(refusals)
    print(
        f"\nstreams capped at {limit} bytes: {held} of {total} events on the bus, {applied_while_full} "
        f"applied while full; {counts}, {on_bus} on the bus at the end, consumers caught up "
        f"{caught_up:.2f} s after the limit was raised; the relay said: {refusals.messages[0]}"
    )
    assert (counts.lost, counts.duplicated, counts.out_of_order) == (0, 0, 0), counts
    assert on_bus == total, "an event is missing on the bus, or stored there twice"
