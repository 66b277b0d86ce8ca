"""The relay: the store's log reaches JetStream in order, once, in CloudEvents binary mode."""

from __future__ import annotations

from collections.abc import Iterator

import nats
import pytest

from tidings.domain.envelope import from_binary
from tidings.runtime.app import App
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually
from tidings.testing.nats import NatsServer, nats_servers


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with nats_servers(1) as (server,):
        yield server


async def _stored(url: str, stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    client = await nats.connect(url, connect_timeout=5)
    try:
        js = client.jetstream()
        info = await js.stream_info(stream)
        messages = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, sequence)
            messages.append((message.subject or "", dict(message.headers or {}), message.data or b""))
        return messages
    finally:
        await client.close()


async def test_the_log_is_relayed_in_order_once(
    store_url: str, nats_server: NatsServer, backend: str
) -> None:
    stream = f"RELAY_{backend.upper()}_{id(store_url) % 100000}"
    bus_url = f"{nats_server.url}?stream={stream}&prefix=r{id(store_url) % 100000}"
    app = App("relay-test", store=store_url, bus=bus_url)
    async with app:
        published = [await app.publish(Ping(key=f"k{n % 3}", n=n), key=f"k{n % 3}") for n in range(30)]

        async def relayed() -> bool:
            try:
                return len(await _stored(nats_server.url, stream)) == 30
            except Exception:
                return False

        async with app.running():
            await eventually(relayed, within=20)
        # A relay that lost its checkpoint publishes everything again: JetStream drops the repeats.
        async with app.store.transaction() as tx:
            await tx.set_checkpoint("relay:bus", 0)
        async with app.running():
            await eventually(lambda: _checkpoint_at(app, published[-1].position), within=20)
        stored = await _stored(nats_server.url, stream)
    assert len(stored) == 30
    envelopes = [from_binary(headers, body) for _, headers, body in stored]
    assert [e.id for e in envelopes] == [r.envelope.id for r in published]
    assert all(subject.endswith(".conformance.bus.ping") for subject, _, _ in stored)
    assert all(headers["Nats-Msg-Id"] == headers["ce-id"] for _, headers, _ in stored)
    assert envelopes[4] == published[4].envelope


async def _checkpoint_at(app: App, position: int) -> bool:
    return await app.store.get_checkpoint("relay:bus") == position
