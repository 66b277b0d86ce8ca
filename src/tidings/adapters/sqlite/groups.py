"""The SQLite store's feed (its log by partition) and what it keeps of consumer groups.

Both are parts of the store, on its two connections: reads on the reader, writes on the writer
under its lock. The group writes that commit with a handler's effects are the transaction's
(``SqliteGroupWrites``), on the writer that the transaction holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from tidings.adapters.sql.common import Partitioner
from tidings.adapters.sql.consumers import LogShape, check_dead_letter_state
from tidings.adapters.sql.counts import DEAD_LETTER_COUNTS, dead_letter_counts_of, partition_head
from tidings.adapters.sqlite import steps
from tidings.adapters.sqlite.connections import SqliteConnections
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import RecordedEvent
from tidings.ports import DeadLetter, Trace

WATCH_INTERVAL = 0.005  # seconds between looks at the file's change counter
PARTITION_HEAD = partition_head("?")


class SqliteFeed(LogShape):
    """``Feed``: the store's own log, read by partition."""

    def __init__(self, connections: SqliteConnections, partition_of: Partitioner) -> None:
        super().__init__(partition_of)
        self._connections = connections

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        return await self._connections.read(steps.read_partition, partition, after, limit)

    async def head(self, partition: int) -> int:
        return await self._connections.read(
            lambda c: int(c.execute(PARTITION_HEAD, (partition,)).fetchone()[0])
        )

    async def watch(self, wake: Callable[[], None]) -> None:
        # PRAGMA data_version changes whenever another connection (in this process or another)
        # commits to the file; reading it costs no table access, so it can be polled often.
        last = await self._connections.read(steps.data_version)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            version = await self._connections.read(steps.data_version)
            if version != last:
                last = version
                wake()


class SqliteGroups:
    """``GroupState``: leases, inbox, dead letters and parking, outside transactions."""

    def __init__(self, connections: SqliteConnections, partition_of: Partitioner) -> None:
        self._connections = connections
        self._partition_of = partition_of

    async def _write(self, step: Callable[..., Any], *args: Any) -> Any:
        async with self._connections.write_lock:
            return await self._connections.write(steps.in_transaction, step, *args)

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        partitions = self._partition_of.partitions
        leased: list[int] = await self._write(steps.lease, group, member, int(ttl * 1e6), partitions)
        return leased

    async def release(self, group: str, member: str) -> None:
        await self._write(steps.release, group, member)

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        return await self._connections.read(steps.handled, group, event_ids)

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        return await self._connections.read(steps.trace, correlation_id, limit)

    async def dead_letters(
        self, group: str | None = None, *, state: DeadLetterState | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return await self._connections.read(steps.dead_letters, group, state, limit)

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        check_dead_letter_state(state)
        return int(await self._write(steps.set_dead_letter_state, list(entries), state))

    async def dead_letter_counts(self) -> dict[tuple[str, DeadLetterReason, DeadLetterState], int]:
        return await self._connections.read(lambda c: dead_letter_counts_of(c.execute(DEAD_LETTER_COUNTS)))

    async def blocked_keys(self, group: str) -> set[str]:
        return await self._connections.read(steps.blocked_keys, group)

    async def unpark(self, group: str, key: str) -> int:
        return int(await self._write(steps.unpark, group, key))

    async def release_parked(self, group: str) -> int:
        return int(await self._write(steps.release_parked, group))


class SqliteGroupWrites:
    """``GroupWrites``: within a transaction, on the writer that it holds (no lock of its own:
    taking the write lock there would wait for the transaction itself)."""

    def __init__(self, connections: SqliteConnections) -> None:
        self._write = connections.write

    async def holds_lease(self, group: str, partition: int, member: str) -> bool:
        return await self._write(steps.holds_lease, group, partition, member)

    async def mark_handled(self, group: str, event_id: str, attempts: int = 1) -> bool:
        return await self._write(steps.mark_handled, group, event_id, attempts)

    async def dead_letter(self, letter: DeadLetter) -> int:
        return await self._write(steps.dead_letter, letter)

    async def settle_dead_letter(self, entry: int, state: DeadLetterState) -> bool:
        check_dead_letter_state(state)
        return await self._write(steps.settle_dead_letter, entry, state)
