"""The JetStream peers of the bus benchmark, on the same nats-server as tidings:

- raw nats-py: JetStream async publish of the whole batch, and a durable pull consumer fetching
  batches and acknowledging each message, running at the same time;
- FastStream: its JetStream publisher (each publish awaits its ack, as in FastStream's own
  examples) and its pull subscriber (batches of 100), acknowledging after each handler.

Each returns end-to-end events per second: from the first publish to the last message handled.
Neither gives effects exactly once; they are what the transport costs without tidings.
"""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

PAYLOAD = b'{"key":"k1","n":1,"note":"' + b"x" * 160 + b'"}'  # about 200 bytes, as tidings' Tick


async def raw_nats(url: str, count: int, tag: str) -> float:
    client = await nats.connect(url, connect_timeout=5)
    try:
        js = client.jetstream()
        subject = f"raw{tag}.tick"
        await js.add_stream(
            StreamConfig(name=f"RAW{tag}", subjects=[f"raw{tag}.>"], storage=StorageType.FILE)
        )
        subscription = await js.pull_subscribe(
            subject, durable=f"raw{tag}", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        )
        handled = 0

        async def consume() -> None:
            nonlocal handled
            while handled < count:
                try:
                    messages = await subscription.fetch(100, timeout=1)
                except TimeoutError:
                    continue
                for message in messages:
                    await message.ack()
                handled += len(messages)

        started = time.perf_counter()
        consumer = asyncio.create_task(consume())
        acks = [await js.publish_async(subject, PAYLOAD) for _ in range(count)]
        await asyncio.gather(*acks)
        await consumer
        return count / (time.perf_counter() - started)
    finally:
        await client.close()


async def faststream(url: str, count: int, tag: str) -> float:
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(url, logger=None)  # its per-message log lines would cost it time
    stream = JStream(name=f"FS{tag}", subjects=[f"fs{tag}.>"], storage=StorageType.FILE)
    done = asyncio.Event()
    handled = 0

    @broker.subscriber(f"fs{tag}.tick", stream=stream, pull_sub=PullSub(batch_size=100), durable=f"fs{tag}")
    async def handle(body: dict[str, object]) -> None:
        nonlocal handled
        handled += 1
        if handled == count:
            done.set()

    await broker.start()
    try:
        started = time.perf_counter()
        for _ in range(count):
            await broker.publish(PAYLOAD, f"fs{tag}.tick", stream=f"FS{tag}")
        await asyncio.wait_for(done.wait(), 600)
        return count / (time.perf_counter() - started)
    finally:
        await broker.stop()
