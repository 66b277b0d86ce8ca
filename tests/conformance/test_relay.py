"""The relay: the store's log reaches JetStream once, in order per partition, in CloudEvents
binary mode, on the subject of its partition."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import nats
import pytest

from tidings.adapters.sql.common import Partitioner
from tidings.domain.envelope import from_binary
from tidings.errors import ConfigurationError
from tidings.runtime.app import App
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url


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


async def test_the_log_is_relayed_in_order_once(store_url: str, nats_url: str) -> None:
    bus_url = fresh_bus_url(nats_url)
    stream, prefix = bus_url.split("stream=")[1].split("&prefix=")
    app = App("relay-test", store=store_url, bus=bus_url)
    keys = [f"k{n}" for n in range(5)]
    async with app:
        published = [await app.publish(Ping(key=keys[n % 5], n=n), key=keys[n % 5]) for n in range(30)]

        async def relayed() -> bool:
            try:
                return len(await _stored(nats_url, stream)) == 30
            except Exception:
                return False

        async with app.running():
            await eventually(relayed, within=20)
        names = [f"tidings:relay:{p}" for p in range(app.log.partitions)]
        done = [await app.store.get_checkpoint(name) for name in names]
        # A relay that lost its checkpoints publishes everything again: JetStream drops repeats.
        async with app.store.transaction() as tx:
            for name in names:
                await tx.set_checkpoint(name, 0)

        async def caught_up() -> bool:
            return [await app.store.get_checkpoint(name) for name in names] == done

        async with app.running():
            await eventually(caught_up, within=20)
        stored = await _stored(nats_url, stream)
        partition_of = Partitioner(app.log.partitions)
    assert len(stored) == 30
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


async def test_a_stream_made_for_other_partitions_is_refused(tmp_path: Path, nats_url: str) -> None:
    bus_url = fresh_bus_url(nats_url)
    async with App("first", store=f"sqlite:///{tmp_path / 'a.db'}", bus=bus_url):
        pass
    with pytest.raises(ConfigurationError, match="has 4 partitions"):
        async with App("second", store=f"sqlite:///{tmp_path / 'b.db'}?partitions=4", bus=bus_url):
            pass
