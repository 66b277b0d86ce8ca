"""The event store on PostgreSQL, through psycopg 3 and a connection pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime

import psycopg

from tidings.adapters.postgres import schema, steps
from tidings.adapters.postgres.connections import Connection, PostgresConnections
from tidings.adapters.postgres.keys import PostgresKeyring
from tidings.adapters.postgres.settings import PostgresSettings
from tidings.adapters.sql.common import (
    Partitioner,
    StoreAudit,
    identity_of_store,
    new_meta,
    validate_stream_name,
)
from tidings.adapters.sql.consumers import (
    ConsumerSql,
    check_dead_letter_state,
    dead_letter_of,
    dead_letter_row,
    group_checkpoint,
    handlings_of,
    lease_statements,
    release_statements,
)
from tidings.adapters.sql.reads import StreamQuery, follow_log
from tidings.adapters.sql.rows import from_micros, records_of, to_micros
from tidings.adapters.sql.timers import TimerSql, timers_of
from tidings.adapters.urls import redact_url
from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import Envelope, RecordedEvent, to_structured
from tidings.domain.integrity import IntegrityReport, VerifiedState
from tidings.ports import (
    ANY,
    DataKeyRecord,
    DeadLetter,
    ExpectedVersion,
    Sealer,
    Snapshot,
    StreamInfo,
    Timer,
    Trace,
)

CONSUMERS = ConsumerSql.dialect("%s", row_lock=" FOR UPDATE")
TIMERS = TimerSql.dialect("%s", skip_locked=" FOR UPDATE SKIP LOCKED")
log = logging.getLogger("tidings.postgres")


class PostgresStore:
    """``EventStore`` on PostgreSQL; any number of processes may share one database."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.url = settings.display_url or redact_url(settings.conninfo)
        self._connections = PostgresConnections(settings, self.url)
        self._keys = PostgresKeyring(self._connections)
        self._partition_of = Partitioner(settings.partitions)
        self.log_id = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._connections.open(self._create_schema)

    async def close(self) -> None:
        await self._keys.close()
        await self._connections.close()

    async def _create_schema(self, connection: Connection) -> None:
        async with connection.transaction():
            if self.settings.create and not await self._schema_ready(connection):
                # CREATE TABLE IF NOT EXISTS races with itself across processes; a lock orders them.
                # It runs only for a new (or older) store: CREATE INDEX takes a share lock on its
                # table even when the index exists, and a process that restarts while others
                # write would deadlock with them.
                await connection.execute(f"SELECT pg_advisory_xact_lock({schema.SCHEMA_LOCK})")
                for statement in (*schema.CREATE, *schema.CREATE_CONSUMERS):
                    await connection.execute(statement)
                for row in new_meta(self.settings.partitions):
                    await connection.execute(schema.PUT_META, row)
            cursor = await connection.execute(schema.TABLES_EXIST)
            exists = await cursor.fetchone()
            meta: dict[str, str] = {}
            if exists and exists[0]:
                cursor = await connection.execute(schema.STORE.all_meta)
                meta = dict(await cursor.fetchall())
        identity = identity_of_store(self.url, meta)
        self._partition_of = Partitioner(identity.partitions)
        self.log_id = identity.log_id

    @staticmethod
    async def _schema_ready(connection: Connection) -> bool:
        cursor = await connection.execute(schema.TABLES_EXIST)
        exists = await cursor.fetchone()
        if not (exists and exists[0]):
            return False
        cursor = await connection.execute(schema.SCHEMA_READY)
        ready = await cursor.fetchone()
        return bool(ready and ready[0])

    def _connection(self) -> AbstractAsyncContextManager[Connection]:
        return self._connections.connection()

    # -- appending -------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        async with self._connection() as connection, connection.transaction():
            return await steps.append(
                connection,
                stream,
                envelopes,
                expected_version,
                self._partition_of,
                self.settings.max_size,
                seal,
            )

    # -- reading ---------------------------------------------------------------------------

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        at: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        # One statement: the rows, their predecessor and the head come from one snapshot.
        query = StreamQuery.build("%s", stream, from_version, to_version, at, backwards, limit)
        async with self._connection() as connection, connection.cursor(binary=True) as cursor:
            await cursor.execute(query.sql, query.args)
            return query.records(await cursor.fetchall())

    async def read_from_snapshot(
        self, stream: str, *, to_version: int | None = None, at: datetime | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]]:
        async with self._connection() as connection, connection.cursor(binary=True) as cursor:
            snapshot = await steps.load_snapshot(cursor, stream, to_version, at)
            start = snapshot.version + 1 if snapshot else 1
            query = StreamQuery.build("%s", stream, start, to_version, at, False, None)
            await cursor.execute(query.sql, query.args)
            return snapshot, query.records(await cursor.fetchall())

    def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        async def fetch(after: int, prefix: str, size: int) -> tuple[int, list[RecordedEvent]]:
            async with self._connection() as connection, connection.cursor(binary=True) as cursor:
                if prefix:
                    await cursor.execute(schema.LOG_BATCH_PREFIX, (after, len(prefix), prefix, size))
                else:
                    await cursor.execute(schema.STORE.log_batch, (after, size))
                rows = await cursor.fetchall()
            return (rows[-1][0] if rows else after), records_of(rows)

        return follow_log(fetch, after=after, pattern=pattern, batch_size=batch_size, limit=limit)

    async def head_position(self) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(schema.STORE.head_position)
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def stream_version(self, stream: str) -> int:
        async with self._connection() as connection:
            head = await steps.read_head(connection, stream)
        return head.version if head else 0

    async def list_streams(self, *, prefix: str = "", limit: int | None = None) -> list[StreamInfo]:
        async with self._connection() as connection:
            cursor = await connection.execute(schema.LIST_STREAMS, (len(prefix), prefix, limit))
            rows = await cursor.fetchall()
        return [StreamInfo(s, v, from_micros(f), from_micros(last)) for s, v, f, last in rows]

    # -- snapshots, documents, checkpoints -------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        row = (snapshot.stream, snapshot.version, snapshot.schema, to_micros(snapshot.time), snapshot.state)
        async with self._connection() as connection:
            await connection.execute(schema.PUT_SNAPSHOT, row)

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        async with self._connection() as connection, connection.cursor(binary=True) as cursor:
            return await steps.load_snapshot(cursor, stream, max_version, at)

    async def get_document(self, collection: str, key: str) -> bytes | None:
        async with self._connection() as connection:
            return await steps.get_document(connection, collection, key)

    async def get_checkpoint(self, name: str) -> int:
        async with self._connection() as connection:
            return await steps.get_checkpoint(connection, name)

    async def next_timer_due(self) -> datetime | None:
        async with self._connection() as connection:
            cursor = await connection.execute(TIMERS.next_due)
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else from_micros(row[0])

    # -- the log, as consumer groups read it --------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partition_of.partitions

    def partition_of(self, key: str) -> int:
        return self._partition_of(key)

    def checkpoint_name(self, group: str, partition: int) -> str:
        return group_checkpoint(group, partition)

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        async with self._connection() as connection, connection.cursor(binary=True) as cursor:
            await cursor.execute(CONSUMERS.read_partition, (partition, after, limit))
            return records_of(await cursor.fetchall())

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        now = time.time_ns() // 1000
        statements = lease_statements(
            CONSUMERS, group, member, now_us=now, ttl_us=int(ttl * 1e6), partitions=self.partitions
        )
        async with self._connection() as connection, connection.transaction():
            # One member of a group plans at a time: each reads the table that the others wrote.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"tidings:{group}",))
            return await steps.run(connection, statements)

    async def release(self, group: str, member: str) -> None:
        async with self._connection() as connection, connection.transaction():
            await steps.run(connection, release_statements(CONSUMERS, group, member))

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        async with self._connection() as connection:
            cursor = await connection.execute(schema.HANDLED, (group, list(event_ids)))
            return {event_id for (event_id,) in await cursor.fetchall()}

    async def watch(self, wake: Callable[[], None]) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.settings.conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {schema.CHANNEL}")
                    wake()  # appends made while (re)connecting
                    async for _ in connection.notifies():
                        wake()
            except psycopg.OperationalError as exc:
                log.warning("listening for appends on %s failed (%s); retrying", self.url, exc)
                wake()
                await asyncio.sleep(1.0)

    async def blocked_keys(self, group: str) -> set[str]:
        async with self._connection() as connection:
            cursor = await connection.execute(CONSUMERS.blocked_keys, (group,))
            return {key for (key,) in await cursor.fetchall()}

    async def unpark(self, group: str, key: str) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(CONSUMERS.unpark, (group, key))
            return cursor.rowcount

    async def release_parked(self, group: str) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(CONSUMERS.release_parked, (group,))
            return cursor.rowcount

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        key = (correlation_id, correlation_id)
        async with self._connection() as connection, connection.cursor(binary=True) as cursor:
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
        async with self._connection() as connection:
            cursor = await connection.execute(CONSUMERS.dead_letters, (group, group, state, state, limit))
            return [dead_letter_of(row) for row in await cursor.fetchall()]

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        check_dead_letter_state(state)
        async with self._connection() as connection, connection.transaction():
            changed = 0
            for entry in entries:
                cursor = await connection.execute(CONSUMERS.set_dead_letter_state, (state, entry))
                changed += cursor.rowcount
        return changed

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._connection() as connection, connection.transaction():
            yield PostgresTransaction(connection, self)

    # -- data keys: the keyring's -----------------------------------------------------------

    async def data_keys(self, scopes: Sequence[str]) -> list[DataKeyRecord]:
        return await self._keys.data_keys(scopes)

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        return await self._keys.data_key_page(after, limit)

    async def rewrap_data_key(self, record: DataKeyRecord, master_version: int, wrapped: bytes) -> bool:
        return await self._keys.rewrap_data_key(record, master_version, wrapped)

    async def retire_data_keys(self) -> int:
        return await self._keys.retire_data_keys()

    async def shred_data_keys(self, scope: str) -> int:
        return await self._keys.shred_data_keys(scope)

    # -- integrity -------------------------------------------------------------------------

    async def verify(self, against: VerifiedState | None = None) -> IntegrityReport:
        async with self._connection() as connection, connection.transaction():
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor = await connection.execute(schema.STORE.all_heads)
            heads = {s: (v, bytes(h)) for s, v, h in await cursor.fetchall()}
            audit = StoreAudit(heads, self._partition_of, self.log_id, against)
            # Named (server-side) cursors stream the rows: memory stays flat for any size.
            async with connection.cursor(name="tidings_verify", binary=True) as rows:
                await rows.execute(schema.STORE.all_events_by_stream)
                async for row in rows:
                    audit.feed(row)
            async with connection.cursor(name="tidings_verify_log", binary=True) as rows:
                await rows.execute(schema.STORE.log_layout)
                async for position, stream, version in rows:
                    audit.feed_log(position, stream, version)
        return audit.report()


class PostgresTransaction:
    """A transaction on one pooled connection: appends, documents and checkpoints commit together."""

    def __init__(self, connection: Connection, store: PostgresStore) -> None:
        self._connection = connection
        self._store = store

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        store = self._store
        return await steps.append(
            self._connection,
            stream,
            envelopes,
            expected_version,
            store._partition_of,
            store.settings.max_size,
            seal,
        )

    async def newest_data_key(self, scope: str) -> DataKeyRecord | None:
        return await self._store._keys.newest_data_key(scope)

    async def add_data_key(self, record: DataKeyRecord) -> DataKeyRecord:
        return await self._store._keys.add_data_key(record)

    async def reserve_data_key_uses(self, scope: str, version: int, count: int, limit: int) -> int | None:
        return await self._store._keys.reserve_data_key_uses(scope, version, count, limit)

    async def get_document(self, collection: str, key: str) -> bytes | None:
        return await steps.get_document(self._connection, collection, key)

    async def put_document(self, collection: str, key: str, value: bytes) -> None:
        await self._connection.execute(schema.DOCUMENTS.put_document, (collection, key, value))

    async def delete_document(self, collection: str, key: str) -> None:
        await self._connection.execute(schema.DOCUMENTS.delete_document, (collection, key))

    async def clear_collection(self, collection: str) -> None:
        await self._connection.execute(schema.DOCUMENTS.clear_collection, (collection,))

    async def get_checkpoint(self, name: str) -> int:
        return await steps.get_checkpoint(self._connection, name)

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._connection.execute(schema.DOCUMENTS.put_checkpoint, (name, position))

    async def schedule_timer(self, timer_id: str, due: datetime, stream: str, envelope: Envelope) -> None:
        row = (timer_id, to_micros(due), stream, to_structured(envelope))
        await self._connection.execute(TIMERS.schedule, row)

    async def cancel_timer(self, timer_id: str) -> None:
        await self._connection.execute(TIMERS.cancel, (timer_id,))

    async def due_timers(self, now: datetime, limit: int) -> list[Timer]:
        cursor = await self._connection.execute(TIMERS.due, (to_micros(now), limit))
        return timers_of(await cursor.fetchall(), self._store.settings.max_size)

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
