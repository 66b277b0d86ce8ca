"""Distributed mode on a three-node JetStream cluster (streams replicated three times): the node
that leads a partition's stream is SIGKILLed while the relay publishes. No event the store acknowledged
is lost, none is handled twice, order per key holds, and the streams hold each event once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from pathlib import Path

import nats
import pytest

from tidings.app import App
from tidings.runtime.context import Context
from tidings.testing.conformance.events import Ping
from tidings.testing.nats import NatsServer, nats_servers, open_on_new_cluster

KEYS = 10
PER_KEY = 100
STREAM = "CLUSTERED"


async def _stream_leader(url: str) -> tuple[str, int]:
    """The node that leads partition 0's stream, and how many events the partitions hold."""
    client = await nats.connect(url, connect_timeout=5)
    try:
        js = client.jetstream()
        infos = [await js.stream_info(f"{STREAM}_{partition}") for partition in range(8)]
        assert infos[0].cluster is not None and infos[0].cluster.leader
        return infos[0].cluster.leader, sum(info.state.messages for info in infos)
    finally:
        await client.close()


@pytest.mark.timeout(240)
async def test_a_killed_stream_leader_loses_no_acknowledged_event(tmp_path: Path) -> None:
    with nats_servers(3) as servers:
        hosts = ",".join(s.url.removeprefix("nats://") for s in servers)
        bus_url = f"nats://{hosts}?stream={STREAM}&prefix=c&replicas=3"
        app = App("cluster", store=f"sqlite:///{tmp_path / 'store.db'}", bus=bus_url)
        handled: dict[str, list[int]] = defaultdict(list)

        @app.subscribe("conformance.bus.ping", group="cluster")
        async def apply(event: Ping, ctx: Context) -> None:
            async with ctx.unit_of_work() as uow:
                seen = await uow.get("effects", event.key, list[int]) or []
                uow.put("effects", event.key, [*seen, event.n])
            handled[event.key].append(event.n)

        await open_on_new_cluster(app)
        try:
            async with app.running(lease_ttl=2.0, poll=0.2):
                killed = await _publish_and_kill_the_leader(app, servers)
                deadline = time.monotonic() + 120
                while sum(len(v) for v in handled.values()) < KEYS * PER_KEY:
                    assert time.monotonic() < deadline, f"stuck; {killed.name} was killed"
                    await asyncio.sleep(0.2)
            survivor = next(s for s in servers if s is not killed)
            _, stored = await _stream_leader(survivor.url)
            for key in range(KEYS):
                raw = await app.store.get_document("effects", f"key-{key}")
                assert raw == str(list(range(PER_KEY))).replace(" ", "").encode(), f"key-{key}: {raw!r}"
        finally:
            await app.close()
    assert stored == KEYS * PER_KEY


async def _publish_and_kill_the_leader(app: App, servers: list[NatsServer]) -> NatsServer:
    victim: NatsServer | None = None
    for n in range(PER_KEY):
        for key in range(KEYS):
            await app.publish(Ping(key=f"key-{key}", n=n), key=f"key-{key}")
        if n == PER_KEY // 3:
            await asyncio.sleep(0.3)  # let the relay be in the middle of publishing
            leader = ""
            with contextlib.suppress(Exception):
                leader, _ = await _stream_leader(servers[0].url)
            victim = next((s for s in servers if s.server_name == leader), servers[0])
            victim.kill()
    assert victim is not None
    return victim
