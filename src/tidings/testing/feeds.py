"""The feeds that tidings' own engines give the Feed suite (``conformance/feed.py``).

A SQL store's feed is its own log: the events go in through a second store on the same URL, as
another process's appends would. A JetStream feed carries what the relay published: the events go
into the store, and a bus of their own relays them, as the relay's App in another process would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from tidings.adapters.registry import open_bus, open_store
from tidings.domain.envelope import Envelope
from tidings.ports import Bus, EventStore, Feed

#: The most events that one publish hands the bus (as a relay's batch).
_RELAY_BATCH = 500


@asynccontextmanager
async def _opened_store(url: str) -> AsyncIterator[EventStore]:
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _opened_bus(url: str, store_feed: Feed) -> AsyncIterator[Bus]:
    bus = open_bus(url)
    await bus.open(store_feed)
    try:
        yield bus
    finally:
        await bus.close()


class StoreFeed:
    """A SQL store's own feed, with another writer on the same store."""

    def __init__(self, store_url: str, reader: EventStore, writer: EventStore) -> None:
        self.store_url, self._reader, self._writer = store_url, reader, writer

    @property
    def feed(self) -> Feed:
        return self._reader.feed

    async def fill(self, stream: str, envelopes: Sequence[Envelope]) -> None:
        await self._writer.append(stream, envelopes)

    @asynccontextmanager
    async def reopen(self) -> AsyncIterator[Feed]:
        async with _opened_store(self.store_url) as again:
            yield again.feed

    @classmethod
    @asynccontextmanager
    async def opened(cls, store_url: str) -> AsyncIterator[StoreFeed]:
        async with _opened_store(store_url) as reader, _opened_store(store_url) as writer:
            yield cls(store_url, reader, writer)


class RelayedFeed:
    """A bus's feed, filled through the store and a relay that publishes on another connection."""

    def __init__(self, store_url: str, bus_url: str, store: EventStore, relay: Bus, reader: Bus) -> None:
        self.store_url, self.bus_url = store_url, bus_url
        self._store, self._relay = store, relay
        self._feed = reader.feed()

    @property
    def feed(self) -> Feed:
        return self._feed

    async def fill(self, stream: str, envelopes: Sequence[Envelope]) -> None:
        records = await self._store.append(stream, envelopes)
        log = self._store.feed
        for partition in sorted({log.partition_of(r.envelope.partitionkey or r.stream) for r in records}):
            # As the relay does: on from what the bus holds, so that nothing goes twice.
            done = await self._relay.published(partition)
            while batch := await log.read_partition(partition, after=done, limit=_RELAY_BATCH):
                await self._relay.publish(partition, batch)
                done = batch[-1].position

    @asynccontextmanager
    async def reopen(self) -> AsyncIterator[Feed]:
        async with _opened_store(self.store_url) as store, _opened_bus(self.bus_url, store.feed) as bus:
            yield bus.feed()

    @classmethod
    @asynccontextmanager
    async def opened(cls, store_url: str, bus_url: str) -> AsyncIterator[RelayedFeed]:
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(_opened_store(store_url))
            relay = await stack.enter_async_context(_opened_bus(bus_url, store.feed))
            reader = await stack.enter_async_context(_opened_bus(bus_url, store.feed))
            yield cls(store_url, bus_url, store, relay, reader)
