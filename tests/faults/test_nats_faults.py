"""The bus under faults, with the relay publishing and a group consuming through JetStream: a
stream leader that hangs (SIGSTOP) for 10 s in a three-node cluster, the three nodes killed
together and restarted, and the client's connection cut after a publish, before its
acknowledgement. The store is the source of truth: no event it holds is lost, none is handled
twice or out of its partition's order, and the streams hold each event once. Each scenario runs
with several seeds (the moment of the fault, the order of the keys, the partition hit)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

import nats
import pytest

from tests.faults.bus_load import committed, counting_app, publish_load, settle, stored_on_the_bus
from tests.faults.tally import tally
from tidings.app import App
from tidings.testing.eventually import eventually
from tidings.testing.nats import NatsServer, nats_servers, open_on_new_cluster
from tidings.testing.plugin import fresh_bus_url
from tidings.testing.proxy import cutting_proxy

SEEDS = [1, 2, 3]
TOTAL = 480
RATE = 80.0  # events per second: the relay is busy when the fault comes
PAUSE = 10.0
RUN = {"lease_ttl": 2.0, "poll": 0.2}


async def _leader_of(url: str, stream: str) -> str:
    client = await nats.connect(url, connect_timeout=5)
    try:
        info = await client.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader
    finally:
        await client.close()


def _cluster_bus(servers: list[NatsServer], stream: str) -> str:
    hosts = ",".join(s.url.removeprefix("nats://") for s in servers)
    return f"nats://{hosts}?stream={stream}&prefix={stream.lower()}&replicas=3"


async def _check(
    scenario: str, app: App, urls: list[str], stream: str, fault_ended: float, recovered: float
) -> None:
    result = await tally(
        scenario, app.store.feed, await committed(app), expected=TOTAL, recovery=recovered - fault_ended
    )
    assert result.clean, result
    # A node just resumed or restarted may answer for a stream before it has caught up with the
    # others: ask until the count settles (more than TOTAL never settles to it).
    counts: list[int] = []

    async def each_event_once() -> bool:
        counts.append(await stored_on_the_bus(urls, stream, app.store.feed.partitions))
        return counts[-1] == TOTAL

    with contextlib.suppress(AssertionError):
        await eventually(each_event_once, within=30)
    print(f"{scenario}: the streams hold {counts[-1]} messages for {TOTAL} events")
    assert counts[-1] == TOTAL, f"an event stored twice on the bus (or missing): {counts}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_paused_stream_leader_loses_and_doubles_nothing(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    stream = f"PAUSED{seed}"
    with nats_servers(3) as servers:
        app = counting_app("paused", f"sqlite:///{tmp_path / 'store.db'}", _cluster_bus(servers, stream))
        await open_on_new_cluster(app)
        try:
            async with app.running(**RUN):
                load = asyncio.create_task(publish_load(app, rng, TOTAL, rate=RATE))
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                partition = rng.randrange(app.store.feed.partitions)
                leader = await _leader_of(servers[0].url, f"{stream}_{partition}")
                victim = next(s for s in servers if s.server_name == leader)
                victim.pause()
                try:
                    await asyncio.sleep(PAUSE)
                finally:
                    victim.resume()
                resumed = time.monotonic()
                await load
                recovered = await settle(app, TOTAL, within=60)
            await _check(
                f"leader {victim.name} of partition {partition} paused {PAUSE:.0f} s (seed {seed})",
                app,
                [s.url for s in servers],
                stream,
                resumed,
                recovered,
            )
        finally:
            await app.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_cluster_killed_whole_and_restarted_loses_and_doubles_nothing(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    stream = f"WHOLE{seed}"
    with nats_servers(3) as servers:
        app = counting_app("whole", f"sqlite:///{tmp_path / 'store.db'}", _cluster_bus(servers, stream))
        await open_on_new_cluster(app)
        try:
            async with app.running(**RUN):
                load = asyncio.create_task(publish_load(app, rng, TOTAL, rate=RATE))
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                for server in servers:  # SIGKILL, every node: no replica is left to lead
                    server.kill()
                await asyncio.sleep(rng.uniform(0.0, 2.0))
                for server in servers:
                    server.start()
                for server in servers:
                    await asyncio.to_thread(server.wait_until_listening)
                restarted = time.monotonic()
                await load
                recovered = await settle(app, TOTAL, within=60)
            await _check(
                f"whole cluster killed and restarted (seed {seed})",
                app,
                [s.url for s in servers],
                stream,
                restarted,
                recovered,
            )
        finally:
            await app.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_connection_cut_before_the_acknowledgement_loses_and_doubles_nothing(
    tmp_path: Path, nats_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    host, port = nats_url.removeprefix("nats://").split(":")
    async with cutting_proxy(host, int(port)) as proxy:
        bus = fresh_bus_url(f"nats://127.0.0.1:{proxy.port}")
        stream = bus.split("stream=", 1)[1].split("&", 1)[0]
        prefix = bus.split("prefix=", 1)[1].split("&", 1)[0]
        app = counting_app("cut", f"sqlite:///{tmp_path / 'store.db'}", bus)
        async with app, app.running(**RUN):
            load = asyncio.create_task(publish_load(app, rng, TOTAL, rate=RATE))
            cuts = 2
            for _ in range(cuts):
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                # The relay's next publish reaches the server; its acknowledgement never comes.
                cut = proxy.cut_after_client_sends(f"HPUB {prefix}.".encode())
                await asyncio.wait_for(cut.wait(), 60)
            last_cut = time.monotonic()
            await load
            recovered = await settle(app, TOTAL, within=60)
            await _check(
                f"connection cut after a publish, {cuts} times (seed {seed})",
                app,
                [nats_url],
                stream,
                last_cut,
                recovered,
            )
        with contextlib.suppress(Exception):
            await app.close()
