"""The log that consumer groups read in distributed mode: partitions from JetStream, the rest
(leases, inbox, checkpoints, dead letters, traces) from the store, so that a handler's effects,
its inbox record and the group's checkpoint still commit in one store transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tidings.adapters.nats.settings import NatsSettings
from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import DEFAULT_MAX_SIZE, RecordedEvent, TopicOf
from tidings.ports import DeadLetter, Log, Trace


class PartitionStreams(Protocol):
    """What the log needs of the bus (``NatsBus``): where each partition is read, its messages
    after a stream sequence, and the doorbell. Named here, not imported: the bus builds the log,
    and the log importing the bus back would make the two modules a circle."""

    @property
    def settings(self) -> NatsSettings: ...

    def read_stream_of(self, partition: int) -> str: ...

    async def read_partition(
        self, partition: int, *, after: int, limit: int, topic_of: TopicOf | None, max_size: int
    ) -> list[RecordedEvent]: ...

    async def watch(self, wake: Callable[[], None]) -> None: ...


class JetStreamLog:
    """``Log`` whose positions are the JetStream stream's sequence numbers."""

    def __init__(
        self,
        bus: PartitionStreams,
        store_log: Log,
        topic_of: TopicOf | None = None,
        max_event_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.bus = bus
        self.topic_of = topic_of
        self.max_event_size = max_event_size
        self.store_log = store_log
        self.partitions = store_log.partitions
        self.log_id = store_log.log_id

    def partition_of(self, key: str) -> int:
        return self.store_log.partition_of(key)  # the bus keeps the store's partitions

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

    async def watch(self, wake: Callable[[], None]) -> None:
        await self.bus.watch(wake)

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        return await self.store_log.lease(group, member, ttl=ttl)

    async def release(self, group: str, member: str) -> None:
        await self.store_log.release(group, member)

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        return await self.store_log.handled(group, event_ids)

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        return await self.store_log.trace(correlation_id, limit=limit)

    async def dead_letters(
        self, group: str | None = None, *, state: DeadLetterState | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return await self.store_log.dead_letters(group, state=state, limit=limit)

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        return await self.store_log.set_dead_letter_state(entries, state)

    async def blocked_keys(self, group: str) -> set[str]:
        return await self.store_log.blocked_keys(group)

    async def unpark(self, group: str, key: str) -> int:
        return await self.store_log.unpark(group, key)

    async def release_parked(self, group: str) -> int:
        return await self.store_log.release_parked(group)
