"""The blocking steps of the SQLite store: each runs on the thread that owns its connection."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from tidings.adapters.sql.common import (
    Head,
    Partitioner,
    StoreAudit,
    check_expected,
    unique_by_id,
)
from tidings.adapters.sql.consumers import (
    ConsumerSql,
    Statements,
    dead_letter_of,
    dead_letter_row,
    handlings_of,
    lease_statements,
    release_statements,
)
from tidings.adapters.sql.reads import StreamQuery, snapshot_query
from tidings.adapters.sql.rows import from_micros, plan_rows, record_of, records_of, to_micros
from tidings.adapters.sqlite import schema
from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.domain.integrity import IntegrityProblem, IntegrityReport, VerifiedState
from tidings.errors import ConcurrencyError
from tidings.ports import DeadLetter, ExpectedVersion, Sealer, Snapshot, Trace

T = TypeVar("T")
log = logging.getLogger("tidings.sqlite")


class WriterConnection(sqlite3.Connection):
    """The write connection: it waits for the database's write lock itself (``begin``)."""

    patience: float = 0.0  # seconds to wait for the write lock (the store's busy_timeout)


def begin(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:  # never expected; would otherwise wedge every later write
        log.error("the SQLite writer was left inside a transaction; rolling it back")
        connection.execute("ROLLBACK")
    patience = getattr(connection, "patience", 0.0)
    if not patience:
        connection.execute("BEGIN IMMEDIATE")
        return
    # SQLite's own busy handler sleeps up to 25-100 ms between tries once it has waited a
    # while, though another process's write transaction usually ends within a millisecond or
    # two: that sleep was the tail of publish -> handler latency. Polling every 0.1-2 ms instead
    # takes the lock soon after it is free.
    deadline, pause = time.monotonic() + patience, 0.0001
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.002)


def commit(connection: sqlite3.Connection) -> None:
    connection.execute("COMMIT")


def rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


def in_transaction(connection: sqlite3.Connection, step: Callable[..., T], *args: Any) -> T:
    begin(connection)
    try:
        result = step(connection, *args)
        connection.execute("COMMIT")
    except BaseException:
        rollback(connection)
        raise
    return result


def read_head(connection: sqlite3.Connection, stream: str) -> Head | None:
    row = connection.execute(schema.STORE.head, (stream,)).fetchone()
    return Head(row[0], bytes(row[1])) if row else None


def append(
    connection: sqlite3.Connection,
    stream: str,
    envelopes: Sequence[Envelope],
    expected: ExpectedVersion,
    partition_of: Partitioner,
    max_size: int,
    seal: Sealer | None = None,
) -> list[RecordedEvent]:
    """Append optimistically; only a conflict (a retry, most likely) looks up stored ids.

    Runs inside the caller's transaction, under a savepoint so that a failed attempt leaves
    nothing behind even in a unit of work that goes on.
    """
    unique = unique_by_id(envelopes)
    connection.execute("SAVEPOINT tidings_append")
    try:
        stored: dict[str, RecordedEvent] = {}
        try:
            appended = insert(connection, stream, unique, expected, partition_of, max_size, seal)
        except (ConcurrencyError, sqlite3.IntegrityError) as exc:
            if isinstance(exc, sqlite3.IntegrityError) and "tidings_events.id" not in str(exc):
                raise
            connection.execute("ROLLBACK TO tidings_append")
            stored = stored_by_id(connection, unique)
            if not stored:
                raise
            fresh = [e for e in unique if e.id not in stored]
            appended = (
                insert(connection, stream, fresh, expected, partition_of, max_size, seal) if fresh else []
            )
    except BaseException:
        connection.execute("ROLLBACK TO tidings_append")
        connection.execute("RELEASE tidings_append")
        raise
    connection.execute("RELEASE tidings_append")
    by_id = {record.envelope.id: record for record in appended}
    by_id.update(stored)
    return [by_id[e.id] for e in envelopes]


def insert(
    connection: sqlite3.Connection,
    stream: str,
    envelopes: list[Envelope],
    expected: ExpectedVersion,
    partition_of: Partitioner,
    max_size: int,
    seal: Sealer | None = None,
) -> list[RecordedEvent]:
    head = read_head(connection, stream)
    check_expected(stream, expected, head.version if head else 0)
    rows = plan_rows(stream, envelopes, head, partition_of, max_size, seal)
    connection.executemany(schema.INSERT_EVENT, rows)
    # The write lock is held and AUTOINCREMENT gives each row the largest position so far plus
    # one, so the rows of this call hold consecutive positions ending at the last rowid.
    (last_position,) = connection.execute("SELECT last_insert_rowid()").fetchone()
    last = rows[-1]
    connection.execute(
        schema.STORE.upsert_head, (stream, last.version, last.hash, rows[0].time_us, last.time_us)
    )
    first_position = last_position - len(rows) + 1
    return [
        RecordedEvent(envelope=envelope, stream=stream, version=row.version, position=first_position + n)
        for n, (row, envelope) in enumerate(zip(rows, envelopes, strict=True))
    ]


def stored_by_id(connection: sqlite3.Connection, envelopes: list[Envelope]) -> dict[str, RecordedEvent]:
    stored: dict[str, RecordedEvent] = {}
    for start in range(0, len(envelopes), 500):  # stay below SQLite's bound-parameter limit
        chunk = [e.id for e in envelopes[start : start + 500]]
        query = schema.EXISTING_IDS.format(marks=",".join("?" * len(chunk)))
        for row in connection.execute(query, chunk):
            record = record_of(row)
            stored[record.envelope.id] = record
    return stored


def read_stream(connection: sqlite3.Connection, query: StreamQuery) -> list[RecordedEvent]:
    return query.records(connection.execute(query.sql, query.args).fetchall())


def load_snapshot(
    connection: sqlite3.Connection, stream: str, max_version: int | None, at: datetime | None
) -> Snapshot | None:
    row = connection.execute(*snapshot_query("?", stream, max_version, at)).fetchone()
    return None if row is None else Snapshot(row[0], row[1], row[2], from_micros(row[3]), bytes(row[4]))


def read_from_snapshot(
    connection: sqlite3.Connection, stream: str, to_version: int | None, at: datetime | None
) -> tuple[Snapshot | None, list[RecordedEvent]]:
    snapshot = load_snapshot(connection, stream, to_version, at)
    start = snapshot.version + 1 if snapshot else 1
    query = StreamQuery.build("?", stream, start, to_version, at, False, None)
    return snapshot, read_stream(connection, query)


def log_batch(
    connection: sqlite3.Connection, after: int, prefix: str, size: int
) -> tuple[int, list[RecordedEvent]]:
    """One batch of the log, decoded on the reader thread; and the last position it scanned."""
    if prefix:
        rows = connection.execute(schema.LOG_BATCH_PREFIX, (after, len(prefix), prefix, size)).fetchall()
    else:
        rows = connection.execute(schema.STORE.log_batch, (after, size)).fetchall()
    return (rows[-1][0] if rows else after), records_of(rows)


def get_document(connection: sqlite3.Connection, collection: str, key: str) -> bytes | None:
    row = connection.execute(schema.DOCUMENTS.get_document, (collection, key)).fetchone()
    return bytes(row[0]) if row else None


def get_checkpoint(connection: sqlite3.Connection, name: str) -> int:
    row = connection.execute(schema.DOCUMENTS.get_checkpoint, (name,)).fetchone()
    return int(row[0]) if row else 0


def verify(
    connection: sqlite3.Connection, partition_of: Partitioner, log_id: str, against: VerifiedState | None
) -> IntegrityReport:
    # One read transaction: the heads, the events and the log layout are one snapshot (WAL).
    connection.execute("BEGIN")
    try:
        heads = {s: (v, bytes(h)) for s, v, h in connection.execute(schema.STORE.all_heads)}
        audit = StoreAudit(heads, partition_of, log_id, against)
        for (message,) in connection.execute("PRAGMA quick_check"):
            if message != "ok":
                audit.problems.append(IntegrityProblem("", 0, 0, f"SQLite storage check: {message}"))
        for row in connection.execute(schema.STORE.all_events_by_stream):
            audit.feed(row)
        for position, stream, version in connection.execute(schema.STORE.log_layout):
            audit.feed_log(position, stream, version)
    finally:
        if connection.in_transaction:  # SQLite may have rolled it back on an error already
            connection.execute("COMMIT")
    return audit.report()


# -- consumer groups -------------------------------------------------------------------------

CONSUMERS: Final = ConsumerSql.dialect("?")


def read_partition(
    connection: sqlite3.Connection, partition: int, after: int, limit: int
) -> list[RecordedEvent]:
    return records_of(connection.execute(CONSUMERS.read_partition, (partition, after, limit)).fetchall())


def run(connection: sqlite3.Connection, statements: Statements[T]) -> T:
    """Run statements written once for both engines (``sql/consumers.py``) on ``connection``."""
    try:
        statement = next(statements)
        while True:
            statement = statements.send(connection.execute(*statement).fetchall())
    except StopIteration as done:
        result: T = done.value
        return result


def lease(connection: sqlite3.Connection, group: str, member: str, ttl_us: int, partitions: int) -> list[int]:
    now = time.time_ns() // 1000  # once the transaction began: BEGIN may have waited for the lock
    statements = lease_statements(CONSUMERS, group, member, now_us=now, ttl_us=ttl_us, partitions=partitions)
    return run(connection, statements)


def release(connection: sqlite3.Connection, group: str, member: str) -> None:
    run(connection, release_statements(CONSUMERS, group, member))


def holds_lease(connection: sqlite3.Connection, group: str, partition: int, member: str) -> bool:
    now = time.time_ns() // 1000
    return connection.execute(CONSUMERS.holds_lease, (group, partition, member, now)).fetchone() is not None


def handled(connection: sqlite3.Connection, group: str, event_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(event_ids), 500):  # stay below SQLite's bound-parameter limit
        chunk = list(event_ids[start : start + 500])
        query = schema.HANDLED.format(marks=",".join("?" * len(chunk)))
        found.update(event_id for (event_id,) in connection.execute(query, (group, *chunk)))
    return found


def mark_handled(connection: sqlite3.Connection, group: str, event_id: str, attempts: int) -> bool:
    cursor = connection.execute(CONSUMERS.mark_handled, (group, event_id, time.time_ns() // 1000, attempts))
    return cursor.rowcount == 1


def dead_letter(connection: sqlite3.Connection, letter: DeadLetter) -> int:
    (entry,) = connection.execute(CONSUMERS.insert_dead_letter, dead_letter_row(letter, to_micros)).fetchone()
    return int(entry)


def trace(connection: sqlite3.Connection, correlation_id: str, limit: int) -> Trace:
    key = (correlation_id, correlation_id)
    events = records_of(connection.execute(CONSUMERS.trace_events, (*key, limit)).fetchall())
    inbox = connection.execute(CONSUMERS.trace_inbox, key).fetchall()
    dead = connection.execute(CONSUMERS.trace_dead_letters, key).fetchall()
    return Trace(events=events, handlings=handlings_of(inbox, dead))


def dead_letters(
    connection: sqlite3.Connection, group: str | None, state: str | None, limit: int
) -> list[DeadLetter]:
    rows = connection.execute(CONSUMERS.dead_letters, (group, group, state, state, limit)).fetchall()
    return [dead_letter_of(row) for row in rows]


def data_version(connection: sqlite3.Connection) -> int:
    """SQLite's counter of commits made by other connections (to this file)."""
    return int(connection.execute("PRAGMA data_version").fetchone()[0])


def blocked_keys(connection: sqlite3.Connection, group: str) -> set[str]:
    return {key for (key,) in connection.execute(CONSUMERS.blocked_keys, (group,))}


def unpark(connection: sqlite3.Connection, group: str, key: str) -> int:
    return connection.execute(CONSUMERS.unpark, (group, key)).rowcount


def release_parked(connection: sqlite3.Connection, group: str) -> int:
    return connection.execute(CONSUMERS.release_parked, (group,)).rowcount


def set_dead_letter_state(connection: sqlite3.Connection, entries: Sequence[int], state: str) -> int:
    return sum(connection.execute(CONSUMERS.set_dead_letter_state, (state, e)).rowcount for e in entries)


def settle_dead_letter(connection: sqlite3.Connection, entry: int, state: str) -> bool:
    return connection.execute(CONSUMERS.settle_dead_letter, (state, entry)).rowcount == 1


def shred_keys(connection: sqlite3.Connection, statement: str, scope: str) -> int:
    """Destroy a scope's wrapped keys; with secure_delete, SQLite overwrites the old bytes in the
    pages it rewrites instead of leaving them in free space."""
    connection.execute("PRAGMA secure_delete=ON")
    try:
        return connection.execute(statement, (scope,)).rowcount
    finally:
        connection.execute("PRAGMA secure_delete=OFF")
