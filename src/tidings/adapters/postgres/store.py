"""The event store on PostgreSQL, through psycopg 3 and a connection pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime

from tidings.adapters.postgres import schema, steps
from tidings.adapters.postgres.connections import Connection, PostgresConnections
from tidings.adapters.postgres.groups import PostgresFeed, PostgresGroups, PostgresGroupWrites
from tidings.adapters.postgres.keys import PostgresKeys, PostgresKeyWrites
from tidings.adapters.postgres.settings import PostgresSettings
from tidings.adapters.sql.common import (
    Partitioner,
    StoreAudit,
    identity_of_store,
    new_meta,
    validate_stream_name,
)
from tidings.adapters.sql.reads import StreamQuery, follow_log
from tidings.adapters.sql.rows import from_micros, records_of, to_micros
from tidings.adapters.sql.timers import TimerSql, timers_of
from tidings.adapters.urls import redact_url
from tidings.domain.envelope import Envelope, RecordedEvent, to_structured
from tidings.domain.integrity import IntegrityReport, VerifiedState
from tidings.ports import (
    ANY,
    ExpectedVersion,
    Sealer,
    Snapshot,
    StreamInfo,
    Timer,
)

TIMERS = TimerSql.dialect("%s", skip_locked=" FOR UPDATE SKIP LOCKED")
log = logging.getLogger("tidings.postgres")


class PostgresStore:
    """``EventStore`` on PostgreSQL; any number of processes may share one database."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.url = settings.display_url or redact_url(settings.conninfo)
        self._connections = PostgresConnections(settings, self.url)
        # The partitions are the database's: set when it opens, and shared with the parts below.
        self._partition_of = Partitioner(settings.partitions)
        self._feed = PostgresFeed(self._connections, self._partition_of, settings.conninfo)
        self._groups = PostgresGroups(self._connections, self._partition_of)
        self._keys = PostgresKeys(self._connections)
        self._key_writes = PostgresKeyWrites(self._connections)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._connections.open(self._create_schema)

    async def close(self) -> None:
        await self._key_writes.close()
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
        self._partition_of.partitions = identity.partitions
        self._feed.log_id = identity.log_id

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

    # -- its parts: the feed, group state and the keyring ------------------------------------

    @property
    def feed(self) -> PostgresFeed:
        return self._feed

    @property
    def groups(self) -> PostgresGroups:
        return self._groups

    @property
    def key_store(self) -> PostgresKeys:
        return self._keys

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._connection() as connection, connection.transaction():
            yield PostgresTransaction(connection, self)

    # -- integrity -------------------------------------------------------------------------

    async def verify(self, against: VerifiedState | None = None) -> IntegrityReport:
        async with self._connection() as connection, connection.transaction():
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor = await connection.execute(schema.STORE.all_heads)
            heads = {s: (v, bytes(h)) for s, v, h in await cursor.fetchall()}
            audit = StoreAudit(heads, self._partition_of, self._feed.log_id, against)
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
        self.groups = PostgresGroupWrites(connection)
        self.key_store = store._key_writes

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
