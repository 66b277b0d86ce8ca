"""The feed that consumer groups read in distributed mode: partitions from JetStream. The rest
is the store's whatever the feed (leases, inbox, dead letters and traces its ``GroupState``, the
checkpoints its own), so that a handler's effects, its inbox record and the group's checkpoint
still commit in one store transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from tidings.adapters.nats.settings import NatsSettings
from tidings.domain.envelope import DEFAULT_MAX_SIZE, RecordedEvent, TopicOf
from tidings.ports import Feed


class PartitionStreams(Protocol):
    """What the feed needs of the bus (``NatsBus``): where each partition is read, its messages
    after a stream sequence, and the doorbell. Named here, not imported: the bus builds the feed,
    and the feed importing the bus back would make the two modules a circle."""

    @property
    def settings(self) -> NatsSettings: ...

    def read_stream_of(self, partition: int) -> str: ...

    async def read_partition(
        self, partition: int, *, after: int, limit: int, topic_of: TopicOf | None, max_size: int
    ) -> list[RecordedEvent]: ...

    async def head(self, partition: int) -> int: ...

    async def watch(self, wake: Callable[[], None]) -> None: ...


class JetStreamFeed:
    """``Feed`` whose positions are the JetStream stream's sequence numbers."""

    def __init__(
        self,
        bus: PartitionStreams,
        store_feed: Feed,
        topic_of: TopicOf | None = None,
        max_event_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.bus = bus
        self.topic_of = topic_of
        self.max_event_size = max_event_size
        self.store_feed = store_feed
        self.partitions = store_feed.partitions

    def partition_of(self, key: str) -> int:
        return self.store_feed.partition_of(key)  # the bus keeps the store's partitions

    def checkpoint_name(self, group: str, partition: int) -> str:
        # Stream sequences, not store positions: kept apart from the embedded log's checkpoints.
        read = self.bus.read_stream_of(partition)
        if read == self.bus.settings.stream_of(partition):
            return f"group:{group}@nats:{self.bus.settings.stream}:{partition}"
        return f"group:{group}@nats:{read}"  # a principal's read stream: sequences of its own

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        return await self.bus.read_partition(
            partition, after=after, limit=limit, topic_of=self.topic_of, max_size=self.max_event_size
        )

    async def head(self, partition: int) -> int:
        return await self.bus.head(partition)

    async def watch(self, wake: Callable[[], None]) -> None:
        await self.bus.watch(wake)
