"""The event store on PostgreSQL, through psycopg 3 and a connection pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool

from tidings.adapters.postgres import schema
from tidings.adapters.sql.common import (
    DEFAULT_PARTITIONS,
    SCHEMA_VERSION,
    Head,
    StoreAudit,
    StoredRow,
    StreamQuery,
    check_expected,
    check_reaches_head,
    checked_stream_rows,
    from_micros,
    lowest_version,
    missing_version,
    plan_rows,
    record_from_row,
    to_micros,
    unique_by_id,
    validate_stream_name,
)
from tidings.adapters.urls import redact_url
from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent
from tidings.domain.integrity import GENESIS, IntegrityReport
from tidings.domain.topics import compile_pattern
from tidings.errors import BackendUnavailable, ConfigurationError, TidingsError
from tidings.ports import ANY, ExpectedVersion, Snapshot, StreamInfo

_FAR_FUTURE_US = 2**62
_OWN_OPTIONS = ("partitions", "pool_size", "connect_timeout")


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """Where and how to connect. ``conninfo`` is the URL without tidings' own options, so every
    libpq option (``sslmode=verify-full``, ``sslrootcert``, ...) passes straight through."""

    conninfo: str
    partitions: int = DEFAULT_PARTITIONS
    pool_size: int = 10
    connect_timeout: float = 10.0
    max_size: int = DEFAULT_MAX_SIZE
    display_url: str = field(default="", compare=False)

    @classmethod
    def from_url(cls, url: str) -> PostgresSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r}")
        query = parse_qsl(parts.query)
        own = {k: v for k, v in query if k in _OWN_OPTIONS}
        rest = [(k, v) for k, v in query if k not in _OWN_OPTIONS]
        try:
            partitions = int(own.get("partitions", DEFAULT_PARTITIONS))
            pool_size = int(own.get("pool_size", 10))
            connect_timeout = float(own.get("connect_timeout", 10))
        except ValueError as exc:
            raise ConfigurationError(f"bad option in {redact_url(url)!r}: {exc}") from None
        if partitions < 1 or pool_size < 1:
            raise ConfigurationError("partitions and pool_size must be >= 1")
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
        return cls(
            conninfo=conninfo,
            partitions=partitions,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            display_url=redact_url(url),
        )


class PostgresStore:
    """``EventStore`` on PostgreSQL; any number of processes may share one database."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.url = settings.display_url or redact_url(settings.conninfo)
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._partitions = settings.partitions

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        # One direct connection first: its error says precisely what is wrong (refused, bad
        # password, no such database), where a pool would only time out.
        try:
            async with await psycopg.AsyncConnection.connect(
                self.settings.conninfo,
                connect_timeout=max(1, round(self.settings.connect_timeout)),
                autocommit=True,
            ) as connection:
                await self._create_schema(connection)
        except psycopg.Error as exc:
            raise self._translate(exc) from None
        pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = (
            psycopg_pool.AsyncConnectionPool(
                self.settings.conninfo,
                min_size=1,
                max_size=self.settings.pool_size,
                open=False,
                timeout=self.settings.connect_timeout,
                kwargs={"autocommit": True},
            )
        )
        try:
            await pool.open(wait=True, timeout=self.settings.connect_timeout)
        except psycopg_pool.PoolTimeout as exc:
            await pool.close()
            raise BackendUnavailable(f"cannot connect to {self.url}: {exc}") from None
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _create_schema(self, connection: psycopg.AsyncConnection[Any]) -> None:
        async with connection.transaction():
            # CREATE TABLE IF NOT EXISTS races with itself across processes; a lock orders them.
            await connection.execute(f"SELECT pg_advisory_xact_lock({schema.SCHEMA_LOCK})")
            for statement in schema.CREATE:
                await connection.execute(statement)
            await connection.execute(schema.PUT_META, ("schema_version", str(SCHEMA_VERSION)))
            await connection.execute(schema.PUT_META, ("partitions", str(self.settings.partitions)))
            cursor = await connection.execute(schema.GET_META, ("partitions",))
            row = await cursor.fetchone()
            self._partitions = int(row[0]) if row else self.settings.partitions

    def _translate(self, exc: psycopg.Error) -> TidingsError:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = message.replace(self.settings.conninfo, self.url)
        return BackendUnavailable(f"PostgreSQL at {self.url}: {message}")

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise BackendUnavailable(f"store {self.url} is not open (call open() first)")
        try:
            async with self._pool.connection() as connection:
                yield connection
        except psycopg_pool.PoolTimeout as exc:
            raise BackendUnavailable(f"no connection to {self.url} became free: {exc}") from None
        except psycopg.OperationalError as exc:
            raise self._translate(exc) from None

    # -- appending -------------------------------------------------------------------------

    async def append(
        self, stream: str, envelopes: Sequence[Envelope], *, expected_version: ExpectedVersion = ANY
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        async with self._connection() as connection, connection.transaction():
            return await _append(connection, stream, envelopes, expected_version, self._partitions)

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
        query = StreamQuery.build(
            schema.STREAM_COLUMNS, "%s", stream, from_version, to_version, at, backwards, limit
        )
        # One snapshot for the rows, the predecessor's hash and the head, so that an append
        # committing meanwhile cannot look like a stream cut short.
        async with (
            self._connection() as connection,
            connection.transaction(),
            connection.cursor() as cursor,
        ):
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await cursor.execute(query.sql, query.args)
            rows = [StoredRow(*row) for row in await cursor.fetchall()]
            if not rows:
                return []
            lowest = lowest_version(rows, backwards)
            previous = GENESIS
            if lowest > 1:
                await cursor.execute(schema.HASH_AT, (stream, lowest - 1))
                found = await cursor.fetchone()
                if found is None:
                    raise missing_version(stream, lowest - 1)
                previous = bytes(found[0])
            head = await _head(connection, stream) if query.reaches_head else None
        records = checked_stream_rows(stream, rows, previous, backwards)
        if query.reaches_head:
            check_reaches_head(stream, rows, head)
        return records

    async def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        compiled = compile_pattern(pattern) if pattern else None
        prefix = compiled.prefix if compiled else ""
        remaining = limit
        while remaining is None or remaining > 0:
            size = batch_size if remaining is None else min(batch_size, remaining)
            async with self._connection() as connection:
                if prefix:
                    cursor = await connection.execute(
                        schema.LOG_BATCH_PREFIX, (after, len(prefix), prefix, size)
                    )
                else:
                    cursor = await connection.execute(schema.LOG_BATCH, (after, size))
                rows = await cursor.fetchall()
            if not rows:
                return
            for position, stream, version, document in rows:
                after = position
                record = record_from_row(document, stream, version, position, self.settings.max_size)
                if compiled is not None and not compiled.matches(record.envelope.topic):
                    continue
                yield record
                if remaining is not None:
                    remaining -= 1
                    if remaining == 0:
                        return
            if len(rows) < size:
                return

    async def head_position(self) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(schema.HEAD_POSITION)
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def stream_version(self, stream: str) -> int:
        async with self._connection() as connection:
            head = await _head(connection, stream)
        return head.version if head else 0

    async def list_streams(self, *, prefix: str = "", limit: int | None = None) -> list[StreamInfo]:
        async with self._connection() as connection:
            cursor = await connection.execute(schema.LIST_STREAMS, (len(prefix), prefix, limit))
            rows = await cursor.fetchall()
        return [StreamInfo(s, v, from_micros(f), from_micros(last)) for s, v, f, last in rows]

    # -- snapshots, documents, checkpoints -------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        row = (
            snapshot.stream,
            snapshot.version,
            snapshot.schema,
            to_micros(snapshot.time),
            snapshot.state,
        )
        async with self._connection() as connection:
            await connection.execute(schema.PUT_SNAPSHOT, row)

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        args = (stream, max_version or _FAR_FUTURE_US, to_micros(at) if at else _FAR_FUTURE_US)
        async with self._connection() as connection:
            cursor = await connection.execute(schema.GET_SNAPSHOT, args)
            row = await cursor.fetchone()
        if row is None:
            return None
        return Snapshot(row[0], row[1], row[2], from_micros(row[3]), bytes(row[4]))

    async def get_document(self, collection: str, key: str) -> bytes | None:
        async with self._connection() as connection:
            return await _get_document(connection, collection, key)

    async def get_checkpoint(self, name: str) -> int:
        async with self._connection() as connection:
            return await _get_checkpoint(connection, name)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._connection() as connection, connection.transaction():
            yield PostgresTransaction(connection, self._partitions)

    # -- integrity -------------------------------------------------------------------------

    async def verify(self) -> IntegrityReport:
        async with self._connection() as connection, connection.transaction():
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cursor = await connection.execute(schema.ALL_HEADS)
            audit = StoreAudit({s: (v, bytes(h)) for s, v, h in await cursor.fetchall()})
            # A named (server-side) cursor streams the rows: memory stays flat for any size.
            async with connection.cursor(name="tidings_verify") as rows:
                await rows.execute(schema.ALL_EVENTS_BY_STREAM)
                async for row in rows:
                    audit.feed(*row)
        return audit.report()


class PostgresTransaction:
    """A transaction on one pooled connection: appends, documents and checkpoints commit together."""

    def __init__(self, connection: psycopg.AsyncConnection[Any], partitions: int) -> None:
        self._connection = connection
        self._partitions = partitions

    async def append(
        self, stream: str, envelopes: Sequence[Envelope], *, expected_version: ExpectedVersion = ANY
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        return await _append(self._connection, stream, envelopes, expected_version, self._partitions)

    async def get_document(self, collection: str, key: str) -> bytes | None:
        return await _get_document(self._connection, collection, key)

    async def put_document(self, collection: str, key: str, value: bytes) -> None:
        await self._connection.execute(schema.PUT_DOCUMENT, (collection, key, value))

    async def delete_document(self, collection: str, key: str) -> None:
        await self._connection.execute(schema.DELETE_DOCUMENT, (collection, key))

    async def clear_collection(self, collection: str) -> None:
        await self._connection.execute(schema.CLEAR_COLLECTION, (collection,))

    async def get_checkpoint(self, name: str) -> int:
        return await _get_checkpoint(self._connection, name)

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._connection.execute(schema.PUT_CHECKPOINT, (name, position))


async def _head(connection: psycopg.AsyncConnection[Any], stream: str) -> Head | None:
    cursor = await connection.execute(schema.HEAD, (stream,))
    row = await cursor.fetchone()
    return Head(row[0], bytes(row[1])) if row else None


async def _append(
    connection: psycopg.AsyncConnection[Any],
    stream: str,
    envelopes: Sequence[Envelope],
    expected: ExpectedVersion,
    partitions: int,
) -> list[RecordedEvent]:
    """The append steps; the caller holds a transaction open around them."""
    await connection.execute(schema.LOCK_APPENDS)
    unique = unique_by_id(envelopes)
    stored: dict[str, RecordedEvent] = {}
    cursor = await connection.execute(schema.EXISTING_IDS, ([e.id for e in unique],))
    for event_id, position, s, version, document in await cursor.fetchall():
        stored[event_id] = record_from_row(document, s, version, position)
    fresh = [e for e in unique if e.id not in stored]
    if not fresh:
        return [stored[e.id] for e in envelopes]
    head = await _head(connection, stream)
    check_expected(stream, expected, head.version if head else 0)
    rows = plan_rows(stream, fresh, head, partitions)
    cursor = await connection.execute(
        schema.INSERT_EVENTS, [list(column) for column in zip(*rows, strict=True)]
    )
    position_of = dict(await cursor.fetchall())
    last = rows[-1]
    await connection.execute(
        schema.UPSERT_HEAD, (stream, last.version, last.hash, rows[0].time_us, last.time_us)
    )
    by_id = {
        row.id: RecordedEvent(
            envelope=envelope, stream=stream, version=row.version, position=position_of[row.version]
        )
        for row, envelope in zip(rows, fresh, strict=True)
    }
    by_id.update(stored)
    return [by_id[e.id] for e in envelopes]


async def _get_document(connection: psycopg.AsyncConnection[Any], collection: str, key: str) -> bytes | None:
    cursor = await connection.execute(schema.GET_DOCUMENT, (collection, key))
    row = await cursor.fetchone()
    return bytes(row[0]) if row else None


async def _get_checkpoint(connection: psycopg.AsyncConnection[Any], name: str) -> int:
    cursor = await connection.execute(schema.GET_CHECKPOINT, (name,))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0
