"""The test fixture for nats-server: a node and a cluster with JetStream, that keep what they ack."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NoStreamResponseError

from tidings.testing.nats import nats_server_binary, nats_servers


def test_the_server_comes_from_the_package_not_the_machine() -> None:
    binary = nats_server_binary()
    assert binary.is_file() and binary.parent.name == "bin"


async def _publish_and_count(urls: list[str], stream: str, count: int) -> int:
    client = await nats.connect(servers=urls, connect_timeout=5)
    try:
        js = client.jetstream()
        replicas = 3 if len(urls) == 3 else 1
        for attempt in range(50):  # a new cluster elects its JetStream leader first
            try:
                await js.add_stream(
                    StreamConfig(
                        name=stream, subjects=[f"{stream}.>"], storage=StorageType.FILE, num_replicas=replicas
                    )
                )
                break
            except Exception:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        for attempt in range(50):  # the new stream elects its own leader (a loaded machine: later)
            try:
                await js.publish(f"{stream}.tick", b"0", headers={"Nats-Msg-Id": "id-0"})
                break
            except NoStreamResponseError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
        for n in range(1, count):
            await js.publish(f"{stream}.tick", str(n).encode(), headers={"Nats-Msg-Id": f"id-{n}"})
        await js.publish(f"{stream}.tick", b"again", headers={"Nats-Msg-Id": "id-0"})  # deduplicated
        info = await js.stream_info(stream)
        return info.state.messages
    finally:
        await client.close()


def test_a_single_node_keeps_what_it_acknowledged_across_a_kill() -> None:
    with nats_servers(1) as (server,):
        assert asyncio.run(_publish_and_count([server.url], "SINGLE", 20)) == 20
        server.kill()
        server.start()
        server.wait_until_listening()

        async def count() -> int:
            client = await nats.connect(server.url, connect_timeout=5)
            try:
                for _ in range(50):
                    try:
                        return (await client.jetstream().stream_info("SINGLE")).state.messages
                    except Exception:
                        await asyncio.sleep(0.2)
                raise AssertionError("the stream did not come back")
            finally:
                await client.close()

        assert asyncio.run(count()) == 20


def test_a_three_node_cluster_replicates() -> None:
    with nats_servers(3) as servers:
        assert asyncio.run(_publish_and_count([s.url for s in servers], "CLUSTERED", 10)) == 10
