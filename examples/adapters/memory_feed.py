"""A ``Feed`` over lists in memory: the smallest engine that passes the Feed suite.

Every feed opened over one ``MemoryLog`` reads the same events, as every process reads one
store; ``append`` plays the other writer. Nothing survives the process, so it is for tests.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence

from tidings.domain.envelope import Envelope, RecordedEvent


class MemoryLog:
    """Events in log order, kept per partition; positions count from 1 across partitions."""

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.log_id = uuid.uuid4().hex  # made with the log: a bus that carries it says which
        self.by_partition: list[list[RecordedEvent]] = [[] for _ in range(partitions)]
        self.position = 0
        self.versions: dict[str, int] = {}
        self.watchers: set[Callable[[], None]] = set()

    def partition_of(self, key: str) -> int:
        # CRC-32, as tidings' stores: stable across processes and machines (``hash()`` is not).
        return zlib.crc32(key.encode()) % self.partitions

    def append(self, stream: str, envelopes: Sequence[Envelope]) -> list[RecordedEvent]:
        recorded = []
        for envelope in envelopes:
            self.position += 1
            self.versions[stream] = version = self.versions.get(stream, 0) + 1
            record = RecordedEvent(envelope, stream, version, self.position)
            self.by_partition[self.partition_of(envelope.partitionkey or stream)].append(record)
            recorded.append(record)
        for wake in list(self.watchers):
            wake()
        return recorded


class MemoryFeed:
    """``tidings.ports.Feed`` over a ``MemoryLog``."""

    def __init__(self, log: MemoryLog) -> None:
        self._log = log

    @property
    def partitions(self) -> int:
        return self._log.partitions

    def partition_of(self, key: str) -> int:
        return self._log.partition_of(key)

    def checkpoint_name(self, group: str, partition: int) -> str:
        # Named after the feed: its positions mean nothing in another feed's log.
        return f"group:{group}@memory:{self._log.log_id}:{partition}"

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        events = self._log.by_partition[partition]
        start = bisect_right(events, after, key=lambda record: record.position)
        return events[start : start + limit]

    async def head(self, partition: int) -> int:
        events = self._log.by_partition[partition]
        return events[-1].position if events else 0

    async def watch(self, wake: Callable[[], None]) -> None:
        self._log.watchers.add(wake)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._log.watchers.discard(wake)
