"""The relay: the store's log reaches JetStream once, in order per partition, in CloudEvents
binary mode, on the subject of its partition."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import nats
import pytest

from tidings.adapters.registry import open_bus
from tidings.adapters.sql.common import Partitioner
from tidings.app import App
from tidings.domain.binary import from_binary
from tidings.errors import BackendUnavailable, ConfigurationError
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url


async def _stored(url: str, stream: str, partitions: int = 8) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of the partitions' streams, partition by partition, in stream order."""
    client = await nats.connect(url, connect_timeout=5)
    try:
        js = client.jetstream()
        messages = []
        for partition in range(partitions):
            info = await js.stream_info(f"{stream}_{partition}")
            if not info.state.messages:
                continue
            for sequence in range(info.state.first_seq, info.state.last_seq + 1):
                message = await js.get_msg(f"{stream}_{partition}", sequence)
                messages.append((message.subject or "", dict(message.headers or {}), message.data or b""))
        return messages
    finally:
        await client.close()


async def test_the_log_is_relayed_in_order_once(store_url: str, nats_url: str) -> None:
    bus_url = fresh_bus_url(nats_url)
    stream, prefix = bus_url.split("stream=")[1].split("&prefix=")
    app = App("relay-test", store=store_url, bus=bus_url)
    keys = [f"k{n}" for n in range(5)]

    async def relayed(count: int) -> bool:
        return len(await _stored(nats_url, stream)) == count

    async with app:
        published = [await app.publish(Ping(key=keys[n % 5], n=n), key=keys[n % 5]) for n in range(30)]
        async with app.running():
            await eventually(lambda: relayed(30), within=20)
        # A relay started again goes on after what the bus holds: nothing twice, nothing skipped.
        async with app.running():
            published.append(await app.publish(Ping(key="k0", n=30), key="k0"))
            await eventually(lambda: relayed(31), within=20)
            await asyncio.sleep(0.3)
        stored = await _stored(nats_url, stream)
        partition_of = Partitioner(app.store.feed.partitions)
    assert len(stored) == 31
    by_key: dict[str, list[str]] = defaultdict(list)
    for subject, headers, body in stored:
        envelope = from_binary(headers, body)
        key = envelope.partitionkey or ""
        assert subject == f"{prefix}.{partition_of(key)}.conformance.bus.ping"
        assert headers["Nats-Msg-Id"] == envelope.id
        assert headers["Tidings-Stream"] == key
        by_key[key].append(envelope.id)
    for key in keys:
        assert by_key[key] == [r.envelope.id for r in published if r.envelope.partitionkey == key]
    assert from_binary(stored[0][1], stored[0][2]) in [r.envelope for r in published]


async def test_a_second_publisher_of_a_partition_can_neither_repeat_nor_reorder(
    store_url: str, nats_url: str
) -> None:
    """Two relays on one partition (one lost its lease unawares): each publish must follow the
    stream's last event, so the late one is refused and learns where the stream stands."""
    bus_url = fresh_bus_url(nats_url)
    async with App("racer", store=store_url) as app:
        records = [await app.publish(Ping(key="same", n=n), key="same") for n in range(4)]
        partition = Partitioner(app.store.feed.partitions)("same")
        first, second = open_bus(bus_url), open_bus(bus_url)
        await first.open(app.store)
        await second.open(app.store)
        try:
            assert await first.published(partition) == await second.published(partition) == 0
            await first.publish(partition, records[:2])
            with pytest.raises(BackendUnavailable, match="wrong last sequence"):
                await second.publish(partition, records[:3])
            # Its third message did follow the stream's last event: it may be stored, in order.
            done = await second.published(partition)
            assert done in (records[1].position, records[2].position)
            await second.publish(partition, [r for r in records if r.position > done])
            with pytest.raises(BackendUnavailable, match="wrong last sequence"):
                await first.publish(partition, records[2:])
        finally:
            await first.close()
            await second.close()
    stream = bus_url.split("stream=")[1].split("&")[0]
    stored = await _stored(nats_url, stream)
    assert [from_binary(h, b).id for _, h, b in stored] == [r.envelope.id for r in records]


async def test_a_stream_made_for_other_partitions_is_refused(tmp_path: Path, nats_url: str) -> None:
    bus_url = fresh_bus_url(nats_url)
    async with App("first", store=f"sqlite:///{tmp_path / 'a.db'}", bus=bus_url):
        pass
    with pytest.raises(ConfigurationError, match=r"has 4 partitions .* made for 8 partitions"):
        async with App("second", store=f"sqlite:///{tmp_path / 'b.db'}?partitions=4", bus=bus_url):
            pass


async def test_a_stream_carrying_another_stores_log_is_refused(tmp_path: Path, nats_url: str) -> None:
    """Positions of one store mean nothing in another: a relay must never go on after them."""
    bus_url = fresh_bus_url(nats_url)
    async with App("first", store=f"sqlite:///{tmp_path / 'a.db'}", bus=bus_url):
        pass
    async with App("again", store=f"sqlite:///{tmp_path / 'a.db'}", bus=bus_url):
        pass  # the same store again is welcome
    with pytest.raises(ConfigurationError, match="carries the log of another store"):
        async with App("second", store=f"sqlite:///{tmp_path / 'b.db'}", bus=bus_url):
            pass
