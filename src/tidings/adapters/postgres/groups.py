"""The PostgreSQL store's feed (its log by partition) and what it keeps of consumer groups.

Both are parts of the store, on its pool; the group writes that commit with a handler's effects
are the transaction's (``PostgresGroupWrites``), on the transaction's connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import psycopg

from tidings.adapters.postgres import schema, steps
from tidings.adapters.postgres.connections import Connection, PostgresConnections
from tidings.adapters.sql.common import Partitioner
from tidings.adapters.sql.consumers import (
    ConsumerSql,
    LogShape,
    check_dead_letter_state,
    dead_letter_of,
    dead_letter_row,
    handlings_of,
    lease_statements,
    release_statements,
)
from tidings.adapters.sql.counts import DEAD_LETTER_COUNTS, dead_letter_counts_of, partition_head
from tidings.adapters.sql.rows import records_of, to_micros
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import RecordedEvent
from tidings.ports import DeadLetter, Trace

CONSUMERS = ConsumerSql.dialect("%s", row_lock=" FOR UPDATE")
PARTITION_HEAD = partition_head("%s")
log = logging.getLogger("tidings.postgres")


class PostgresFeed(LogShape):
    """``Feed``: the store's own log, read by partition; appends are announced by NOTIFY."""

    def __init__(self, connections: PostgresConnections, partition_of: Partitioner, conninfo: str) -> None:
        super().__init__(partition_of)
        self._connections = connections
        self._conninfo = conninfo

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        async with self._connections.connection() as connection, connection.cursor(binary=True) as cursor:
            await cursor.execute(CONSUMERS.read_partition, (partition, after, limit))
            return records_of(await cursor.fetchall())

    async def head(self, partition: int) -> int:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(PARTITION_HEAD, (partition,))
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def watch(self, wake: Callable[[], None]) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {schema.CHANNEL}")
                    wake()  # appends made while (re)connecting
                    async for _ in connection.notifies():
                        wake()
            except psycopg.OperationalError as exc:
                log.warning("listening for appends on %s failed (%s); retrying", self._connections.url, exc)
                wake()
                await asyncio.sleep(1.0)


class PostgresGroups:
    """``GroupState``: leases, inbox, dead letters and parking, outside transactions."""

    def __init__(self, connections: PostgresConnections, partition_of: Partitioner) -> None:
        self._connections = connections
        self._partition_of = partition_of

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        now = time.time_ns() // 1000
        partitions = self._partition_of.partitions
        statements = lease_statements(
            CONSUMERS, group, member, now_us=now, ttl_us=int(ttl * 1e6), partitions=partitions
        )
        async with self._connections.connection() as connection, connection.transaction():
            # One member of a group plans at a time: each reads the table that the others wrote.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tidings:{group}",))
            return await steps.run(connection, statements)

    async def release(self, group: str, member: str) -> None:
        async with self._connections.connection() as connection, connection.transaction():
            await steps.run(connection, release_statements(CONSUMERS, group, member))

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        async with self._connections.connection() as connection:
            cursor = await connection.execute(schema.HANDLED, (group, list(event_ids)))
            return {event_id for (event_id,) in await cursor.fetchall()}

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        key = (correlation_id, correlation_id)
        async with self._connections.connection() as connection, connection.cursor(binary=True) as cursor:
            await cursor.execute(CONSUMERS.trace_events, (*key, limit))
            events = records_of(await cursor.fetchall())
            await cursor.execute(CONSUMERS.trace_inbox, key)
            inbox = await cursor.fetchall()
            await cursor.execute(CONSUMERS.trace_dead_letters, key)
            dead = await cursor.fetchall()
        return Trace(events=events, handlings=handlings_of(inbox, dead))

    async def dead_letters(
        self, group: str | None = None, *, state: DeadLetterState | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(CONSUMERS.dead_letters, (group, group, state, state, limit))
            return [dead_letter_of(row) for row in await cursor.fetchall()]

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        check_dead_letter_state(state)
        async with self._connections.connection() as connection, connection.transaction():
            changed = 0
            for entry in entries:
                cursor = await connection.execute(CONSUMERS.set_dead_letter_state, (state, entry))
                changed += cursor.rowcount
        return changed

    async def dead_letter_counts(self) -> dict[tuple[str, DeadLetterReason, DeadLetterState], int]:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(DEAD_LETTER_COUNTS)
            return dead_letter_counts_of(await cursor.fetchall())

    async def blocked_keys(self, group: str) -> set[str]:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(CONSUMERS.blocked_keys, (group,))
            return {key for (key,) in await cursor.fetchall()}

    async def unpark(self, group: str, key: str) -> int:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(CONSUMERS.unpark, (group, key))
            return cursor.rowcount

    async def release_parked(self, group: str) -> int:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(CONSUMERS.release_parked, (group,))
            return cursor.rowcount


class PostgresGroupWrites:
    """``GroupWrites``: within a transaction, on its connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def holds_lease(self, group: str, partition: int, member: str) -> bool:
        now = time.time_ns() // 1000
        cursor = await self._connection.execute(CONSUMERS.holds_lease, (group, partition, member, now))
        return await cursor.fetchone() is not None

    async def mark_handled(self, group: str, event_id: str, attempts: int = 1) -> bool:
        cursor = await self._connection.execute(
            CONSUMERS.mark_handled, (group, event_id, time.time_ns() // 1000, attempts)
        )
        return cursor.rowcount == 1

    async def dead_letter(self, letter: DeadLetter) -> int:
        cursor = await self._connection.execute(
            CONSUMERS.insert_dead_letter, dead_letter_row(letter, to_micros)
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def settle_dead_letter(self, entry: int, state: DeadLetterState) -> bool:
        check_dead_letter_state(state)
        cursor = await self._connection.execute(CONSUMERS.settle_dead_letter, (state, entry))
        return cursor.rowcount == 1
