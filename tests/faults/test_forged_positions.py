"""Messages anyone may publish on a partition's subject that look like the relay's own (a
``Tidings-Position`` header) or bury them: a relay that restarts must go on after the last event
it published itself, skipping none (a real nats-server, no policy on)."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from tidings import Context, Event
from tidings.adapters.nats.publish import resync
from tidings.adapters.sql.common import Partitioner
from tidings.app import App
from tidings.testing.eventually import eventually
from tidings.testing.nats import flushed
from tidings.testing.plugin import fresh_bus_url

TOPIC = "forged.order.placed"
TYPE = "com.example.forged.placed"
KEY = "k"
JUNK = 1006


class Placed(Event, topic=TOPIC, type=TYPE):
    order: str


def _prefix_and_stream(bus: str) -> tuple[str, str]:
    stream, prefix = bus.split("stream=", 1)[1].split("&prefix=")
    return prefix, stream


async def _last_ids(nats_url: str, stream: str, count: int) -> list[str]:
    """The event ids (``Nats-Msg-Id``) of a stream's last ``count`` messages."""
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = client.jetstream()
        last = (await js.stream_info(stream)).state.last_seq
        found = [await js.get_msg(stream, seq) for seq in range(max(last - count + 1, 1), last + 1)]
        return [(m.headers or {}).get("Nats-Msg-Id", "") for m in found]
    finally:
        await client.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("claim", ["999999999", "\u00b2", "1"])
async def test_a_forged_position_makes_a_restarted_relay_skip_nothing(
    tmp_path: Path, nats_url: str, claim: str
) -> None:
    bus = fresh_bus_url(nats_url)
    prefix, _ = _prefix_and_stream(bus)
    app = App("forged-reader", store=f"sqlite:///{tmp_path / 'forged.db'}", bus=bus)
    handled: list[str] = []

    @app.subscribe("forged.>", group="reader")
    async def read(event: Placed, ctx: Context) -> None:
        handled.append(event.order)

    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        async with app:
            async with app.running(lease_ttl=2.0, poll=0.2):
                for n in range(3):
                    await app.publish(Placed(order=f"o-{n}"), key=KEY)
                await eventually(lambda: len(handled) == 3, within=20)
            # While no relay runs: a message that claims to be the relay's, on the partition's
            # subject (a valid event, so consumers handle it: anyone may publish without a policy).
            subject = f"{prefix}.{Partitioner(app.store.feed.partitions)(KEY)}.{TOPIC}"
            headers = {
                "ce-specversion": "1.0",
                "ce-source": "forger",
                "ce-type": TYPE,
                "ce-id": "forged",
                "Nats-Msg-Id": "forged",
                "Tidings-Position": claim,
            }
            await client.jetstream().publish(subject, b'{"order":"forged"}', headers=headers)
            async with app.running(lease_ttl=2.0, poll=0.2):
                for n in range(3, 6):
                    await app.publish(Placed(order=f"o-{n}"), key=KEY)
                await eventually(lambda: len(handled) == 7, within=20)
    finally:
        await client.close()
    assert sorted(handled) == sorted([*(f"o-{n}" for n in range(6)), "forged"])
    assert handled.index("forged") == 3  # stored after the first three, before the rest


@pytest.mark.timeout(120)
async def test_junk_past_any_scan_limit_costs_time_never_events(tmp_path: Path, nats_url: str) -> None:
    """1,006 messages of others (the first claiming a position the store denies) after the relay's
    last one: a restarted relay passes over them all and publishes what the store appended."""
    bus = fresh_bus_url(nats_url)
    prefix, stream = _prefix_and_stream(bus)
    app = App("junk-relay", store=f"sqlite:///{tmp_path / 'junk.db'}", bus=bus)
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        async with app:
            first = await app.publish(Placed(order="o-0"), key=KEY)
            partition = Partitioner(app.store.feed.partitions)(KEY)
            partition_stream = f"{stream}_{partition}"
            async with app.running(lease_ttl=2.0, poll=0.2):

                async def relayed_first() -> bool:
                    return await _last_ids(nats_url, partition_stream, 1) == [first.envelope.id]

                await eventually(relayed_first, within=20)
            subject = f"{prefix}.{partition}.{TOPIC}"
            for n in range(JUNK):
                # The first few claim the position of the relay's event, under another id.
                headers = {"Tidings-Position": str(first.position)} if n < 5 else None
                await client.publish(subject, b"junk", headers=headers)
            await flushed(client)

            async def all_junk_stored() -> bool:
                stored = (await client.jetstream().stream_info(partition_stream)).state.messages
                return bool(stored == JUNK + 1)

            await eventually(all_junk_stored, within=20)
            later = [await app.publish(Placed(order=f"o-{n}"), key=KEY) for n in range(1, 4)]
            started = time.monotonic()
            async with app.running(lease_ttl=2.0, poll=0.2):

                async def relayed_later() -> bool:
                    return await _last_ids(nats_url, partition_stream, 3) == [r.envelope.id for r in later]

                await eventually(relayed_later, within=30)
            assert time.monotonic() - started < 30
    finally:
        await client.close()


@pytest.mark.timeout(120)
async def test_junk_is_looked_at_once_however_often_the_relay_resyncs(nats_url: str) -> None:
    """Junk that keeps coming makes every publish of the relay fail and resync: each resync looks
    only at what came after the last one, so junk costs time once, never a scan of all of it
    again (which grew without bound and kept the relay from ever publishing)."""
    stream, subject = f"JUNK_{uuid.uuid4().hex[:8]}", f"junk{uuid.uuid4().hex[:8]}"
    client = await nats.connect(nats_url, connect_timeout=5)
    looked_at: list[str] = []
    published = [0]

    async def verify(position: int, event_id: str) -> bool:
        looked_at.append(event_id)
        return event_id == "own"  # the store confirms only the relay's own message

    async def publish(event_id: str, count: int = 1) -> None:
        for _ in range(count):
            # Ids of their own: the stream drops a message whose id it holds already.
            headers = {
                "Tidings-Position": "7",
                "Nats-Msg-Id": event_id if count == 1 else f"{event_id}-{uuid.uuid4()}",
            }
            await client.publish(f"{subject}.x", b"", headers=headers)
        await flushed(client)
        published[0] += count

        async def stored() -> bool:  # the stream takes plain publishes a moment after the server
            info = await client.jetstream().stream_info(stream)
            return info.state.last_seq >= published[0]

        await eventually(stored)

    try:
        await client.jetstream().add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"]))
        await publish("own")
        await publish("junk", 500)  # forged claims: each one costs the store a read
        last, seen = await resync(client, stream, verify)
        assert (last, seen.position, len(looked_at)) == (501, 7, 501)
        await publish("junk", 20)
        last, seen = await resync(client, stream, verify, seen)
        assert (last, seen.position, len(looked_at)) == (521, 7, 521)
        last, seen = await resync(client, stream, verify, seen)  # nothing new: nothing looked at
        assert (last, seen.position, len(looked_at)) == (521, 7, 521)
        await client.jetstream().purge_stream(stream)  # the relay's own message is gone
        await publish("junk", 3)
        last, seen = await resync(client, stream, verify, seen)
        assert (last, seen.position, len(looked_at)) == (524, 0, 524)
    finally:
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(stream)
        await client.close()
