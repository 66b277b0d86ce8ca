"""What only a broker has: anyone may publish to its subjects. Consumers read JetStream itself,
send what is no event to the dead letter queue with its raw bytes, and go on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import DiscardPolicy
from nats.js.errors import NoStreamResponseError

from tidings.adapters.sql.common import Partitioner
from tidings.app import App
from tidings.domain.binary import to_binary
from tidings.errors import ConfigurationError
from tidings.runtime.context import Context
from tidings.testing.conformance.bus import RUN
from tidings.testing.conformance.events import Ping, codec
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url


@pytest.fixture
async def raw_client(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url, connect_timeout=5)
    yield client
    await client.close()


def _parts(bus_url: str) -> tuple[str, str]:
    stream, prefix = bus_url.split("stream=")[1].split("&prefix=")
    return stream, prefix


async def test_consumers_read_the_stream_and_dead_letter_what_is_no_event(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    bus_url = fresh_bus_url(nats_url)
    _, prefix = _parts(bus_url)
    app = App("reader", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)
    got: list[int] = []

    @app.subscribe("conformance.bus.>", group="sturdy")
    async def sturdy(event: Ping, ctx: Context) -> None:
        got.append(event.n)

    async with app, app.running(**RUN):
        partition = Partitioner(app.store.feed.partitions)("k")
        subject = f"{prefix}.{partition}.conformance.bus.ping"
        js = raw_client.jetstream()
        await app.publish(Ping(key="k", n=1), key="k")
        await eventually(lambda: got == [1])
        # Straight onto the stream, never in the store: only a consumer of JetStream sees these.
        garbage = b"\x00\xffnot an event"
        await js.publish(subject, garbage, headers={"ce-id": "forged-1", "ce-specversion": "0.3"})
        await js.publish(subject, b'{"key":"k","n":"two"}', headers=_headers(Ping(key="k", n=0)))
        headers, body = _headers(Ping(key="k", n=3)), b'{"key":"k","n":3}'
        await js.publish(subject, body, headers=headers)
        forged_topic = _headers(Ping(key="k", n=4))
        await js.publish(
            f"{prefix}.{partition}.conformance.bus.other", b'{"key":"k","n":4}', headers=forged_topic
        )
        await eventually(lambda: got == [1, 3])

        async def three_letters() -> bool:
            return len(await app.dead_letters("sturdy")) == 3

        await eventually(three_letters)
        letters = await app.dead_letters("sturdy")
        head = await app.store.head_position()
    assert head == 1, "nothing of the bus's found its way into the store"
    assert [x.reason for x in letters] == ["malformed"] * 3
    assert letters[0].event_id == "forged-1"
    assert letters[0].raw == garbage and letters[0].envelope is None
    assert "specversion" in letters[0].error
    assert "invalid data" in letters[1].error
    assert "was sent on subject" in letters[2].error


def _headers(event: Ping) -> dict[str, str]:
    headers, _ = to_binary(codec.encode(event, partition_key=event.key))
    return headers


async def test_publishing_outside_the_partitions_gets_no_stream(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    bus_url = fresh_bus_url(nats_url)
    _, prefix = _parts(bus_url)
    async with App("maker", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url):
        pass
    js = raw_client.jetstream()
    with pytest.raises((NoStreamResponseError, NoRespondersError)):
        await js.publish(f"{prefix}.conformance.bus.ping", b"{}", timeout=1)


async def test_group_checkpoints_count_stream_sequences_apart_from_the_store(
    tmp_path: Path, nats_url: str
) -> None:
    app = App("reader", store=f"sqlite:///{tmp_path / 's.db'}", bus=fresh_bus_url(nats_url))
    async with app:
        assert app.feed is not app.store.feed
        assert app.feed.checkpoint_name("g", 3) != app.store.feed.checkpoint_name("g", 3)
        assert app.feed.partitions == app.store.feed.partitions


async def test_a_copy_of_an_event_in_the_same_batch_is_handled_once(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    """JetStream can hold an event twice (published again after its duplicate window): the
    second copy is skipped, also when it arrives in the same batch as the first."""
    bus_url = fresh_bus_url(nats_url)
    _, prefix = _parts(bus_url)
    app = App("counter", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)

    @app.subscribe("conformance.bus.ping", group="counter")
    async def count(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.put("counts", event.key, (await uow.get("counts", event.key, int) or 0) + 1)

    async with app:
        partition = Partitioner(app.store.feed.partitions)("dup")
        envelope = codec.encode(Ping(key="dup", n=1), partition_key="dup")
        headers, body = to_binary(envelope)
        js = raw_client.jetstream()
        subject = f"{prefix}.{partition}.conformance.bus.ping"
        for copy in range(2):  # distinct Nats-Msg-Ids: the server keeps both
            await js.publish(subject, body, headers={**headers, "Nats-Msg-Id": f"c{copy}"})
        later = codec.encode(Ping(key="dup", n=2), partition_key="dup")
        headers, body = to_binary(later)
        await js.publish(subject, body, headers=headers)
        async with app.running(**RUN):

            async def counted() -> bool:
                return await app.store.get_document("counts", "dup") == b"2"

            await eventually(counted)
            await asyncio.sleep(0.5)
            final = await app.store.get_document("counts", "dup")
    assert final == b"2", "two events, one of them twice: counted twice"


async def test_a_stream_that_would_delete_unread_events_is_refused_at_open(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    """An operator's limit with ``discard: old`` would let the server drop events that lagging
    groups have not read: refused at open, naming the setting. With ``discard: new`` the server
    refuses publishes at the limit instead (the relay waits), which is safe."""
    bus_url = fresh_bus_url(nats_url)
    stream, _ = _parts(bus_url)
    store = f"sqlite:///{tmp_path / 's.db'}"
    async with App("maker", store=store, bus=bus_url):
        pass
    js = raw_client.jetstream()
    info = await js.stream_info(f"{stream}_0")
    info.config.max_age = 3600.0
    await js.update_stream(info.config)
    with pytest.raises(ConfigurationError, match=r"would delete events .*max_age 3600 s with discard old"):
        async with App("maker", store=store, bus=bus_url):
            pass
    info.config.discard = DiscardPolicy.NEW
    await js.update_stream(info.config)
    async with App("maker", store=store, bus=bus_url) as app:
        assert app.state.value == "open"
