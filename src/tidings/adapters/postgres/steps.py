"""The steps of the PostgreSQL store that run inside a caller's connection or transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import psycopg

from tidings.adapters.postgres import schema
from tidings.adapters.sql.common import Head, Partitioner, check_expected, unique_by_id
from tidings.adapters.sql.consumers import Statements
from tidings.adapters.sql.reads import snapshot_query
from tidings.adapters.sql.rows import from_micros, plan_rows, record_of
from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.errors import ConcurrencyError
from tidings.ports import ExpectedVersion, Sealer, Snapshot

ID_KEY: Final = "tidings_events_id_key"  # the unique constraint on event ids, named by PostgreSQL
T = TypeVar("T")


async def read_head(connection: psycopg.AsyncConnection[Any], stream: str) -> Head | None:
    cursor = await connection.execute(schema.STORE.head, (stream,))
    row = await cursor.fetchone()
    return Head(row[0], bytes(row[1])) if row else None


async def append(
    connection: psycopg.AsyncConnection[Any],
    stream: str,
    envelopes: Sequence[Envelope],
    expected: ExpectedVersion,
    partition_of: Partitioner,
    max_size: int,
    seal: Sealer | None = None,
) -> list[RecordedEvent]:
    """Append optimistically; only a conflict (a retry, most likely) looks up stored ids.

    The caller holds a transaction open; the attempt runs under a savepoint, so a conflict rolls
    back only the attempt.
    """
    await connection.execute(schema.LOCK_APPENDS)
    unique = unique_by_id(envelopes)
    stored: dict[str, RecordedEvent] = {}
    try:
        async with connection.transaction():
            appended = await insert(connection, stream, unique, expected, partition_of, max_size, seal)
    except (ConcurrencyError, psycopg.errors.UniqueViolation) as exc:
        if isinstance(exc, psycopg.errors.UniqueViolation) and exc.diag.constraint_name != ID_KEY:
            raise
        async with connection.cursor(binary=True) as cursor:
            await cursor.execute(schema.EXISTING_IDS, ([e.id for e in unique],))
            for row in await cursor.fetchall():
                record = record_of(row)
                stored[record.envelope.id] = record
        if not stored:
            raise
        fresh = [e for e in unique if e.id not in stored]
        appended = (
            await insert(connection, stream, fresh, expected, partition_of, max_size, seal) if fresh else []
        )
    by_id = {record.envelope.id: record for record in appended}
    by_id.update(stored)
    return [by_id[e.id] for e in envelopes]


async def insert(
    connection: psycopg.AsyncConnection[Any],
    stream: str,
    envelopes: list[Envelope],
    expected: ExpectedVersion,
    partition_of: Partitioner,
    max_size: int,
    seal: Sealer | None = None,
) -> list[RecordedEvent]:
    head = await read_head(connection, stream)
    check_expected(stream, expected, head.version if head else 0)
    rows = plan_rows(stream, envelopes, head, partition_of, max_size, seal)
    columns = [list(column) for column in zip(*rows, strict=True)]
    cursor = await connection.execute(schema.INSERT_EVENTS, columns)
    position_of = dict(await cursor.fetchall())
    last = rows[-1]
    await connection.execute(
        schema.STORE.upsert_head, (stream, last.version, last.hash, rows[0].time_us, last.time_us)
    )
    await connection.execute(schema.NOTIFY)  # delivered when, and only if, the append commits
    return [
        RecordedEvent(
            envelope=envelope, stream=stream, version=row.version, position=position_of[row.version]
        )
        for row, envelope in zip(rows, envelopes, strict=True)
    ]


async def load_snapshot(
    cursor: psycopg.AsyncCursor[Any], stream: str, max_version: int | None, at: datetime | None
) -> Snapshot | None:
    await cursor.execute(*snapshot_query("%s", stream, max_version, at))
    row = await cursor.fetchone()
    return None if row is None else Snapshot(row[0], row[1], row[2], from_micros(row[3]), bytes(row[4]))


async def get_document(connection: psycopg.AsyncConnection[Any], collection: str, key: str) -> bytes | None:
    cursor = await connection.execute(schema.DOCUMENTS.get_document, (collection, key))
    row = await cursor.fetchone()
    return bytes(row[0]) if row else None


async def get_checkpoint(connection: psycopg.AsyncConnection[Any], name: str) -> int:
    cursor = await connection.execute(schema.DOCUMENTS.get_checkpoint, (name,))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def run(connection: psycopg.AsyncConnection[Any], statements: Statements[T]) -> T:
    """Run statements written once for both engines (``sql/consumers.py``) on ``connection``."""
    try:
        statement = next(statements)
        while True:
            cursor = await connection.execute(statement.sql, statement.args)
            # psycopg has rows to fetch only after a statement that returns some.
            rows = await cursor.fetchall() if cursor.description is not None else []
            statement = statements.send(rows)
    except StopIteration as done:
        result: T = done.value
        return result
