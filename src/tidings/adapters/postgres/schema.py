"""The PostgreSQL schema and statements. The same tables as SQLite, in PostgreSQL's dialect."""

from __future__ import annotations

from typing import Final

from tidings.adapters.sql.consumers import consumer_tables
from tidings.adapters.sql.documents import DocumentSql, document_tables
from tidings.adapters.sql.keys import key_tables
from tidings.adapters.sql.rows import (
    INSERT_COLUMNS,
    LOG_COLUMNS,
    SELECT_COLUMNS,
)
from tidings.adapters.sql.statements import StoreSql
from tidings.adapters.sql.timers import timer_tables

# Advisory lock keys (arbitrary constants, "tidings" in ASCII plus a suffix).
SCHEMA_LOCK: Final = 0x7469_6469_6E67_7301
APPEND_LOCK: Final = 0x7469_6469_6E67_7302

CREATE: Final = (
    """CREATE TABLE IF NOT EXISTS tidings_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_events (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream TEXT NOT NULL,
        version BIGINT NOT NULL,
        partition INTEGER NOT NULL,
        id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        correlation_id TEXT,
        time_us BIGINT NOT NULL,
        meta BYTEA NOT NULL,
        data BYTEA NOT NULL,
        hash BYTEA NOT NULL,
        UNIQUE (stream, version)
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_streams (
        stream TEXT PRIMARY KEY,
        version BIGINT NOT NULL,
        hash BYTEA NOT NULL,
        first_us BIGINT NOT NULL,
        last_us BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_snapshots (
        stream TEXT NOT NULL,
        version BIGINT NOT NULL,
        schema TEXT NOT NULL,
        time_us BIGINT NOT NULL,
        state BYTEA NOT NULL,
        PRIMARY KEY (stream, version)
    )""",
    *document_tables(bigint="BIGINT", blob="BYTEA"),
)
CREATE_CONSUMERS: Final = (
    *consumer_tables(
        bigint="BIGINT", blob="BYTEA", auto_id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    ),
    *timer_tables(bigint="BIGINT", blob="BYTEA"),
    *key_tables(bigint="BIGINT", blob="BYTEA"),
)

HANDLED: Final = "SELECT event_id FROM tidings_inbox WHERE group_name = %s AND event_id = ANY(%s)"
TABLES_EXIST: Final = "SELECT to_regclass('tidings_meta') IS NOT NULL"
#: The newest table exists (all are created in one transaction) and the store has its meta.
SCHEMA_READY: Final = (
    "SELECT to_regclass('tidings_keys') IS NOT NULL"
    " AND EXISTS (SELECT 1 FROM tidings_meta WHERE key = 'log_id')"
)
PUT_META: Final = "INSERT INTO tidings_meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING"

# Concurrent transactions can commit in another order than the one in which they drew their
# identity values: T1 draws position 10, T2 draws 11 and commits first, and a reader that has
# seen 11 moves its checkpoint past 10 before T1 commits, skipping it for ever. Every append
# therefore takes one transaction-scoped advisory lock before it draws positions and holds it
# until its commit, so transactions that append commit in position order. PostgreSQL marks a
# transaction committed (visible) before it releases its locks, so when the next appender gets
# the lock, every lower position is already visible or rolled back. The cost is that appends
# serialise, which batched appends amortise.
CHANNEL: Final = "tidings_log"
NOTIFY: Final = f"SELECT pg_notify('{CHANNEL}', '')"
LOCK_APPENDS: Final = f"SELECT pg_advisory_xact_lock({APPEND_LOCK})"

EXISTING_IDS: Final = f"SELECT {SELECT_COLUMNS} FROM tidings_events WHERE id = ANY(%s)"
# One statement for a whole batch: each column travels as one array, in binary.
INSERT_EVENTS: Final = (
    f"INSERT INTO tidings_events ({INSERT_COLUMNS})"
    " SELECT * FROM unnest(%b::text[], %b::bigint[], %b::int[], %b::text[], %b::text[], %b::text[],"
    " %b::bigint[], %b::bytea[], %b::bytea[], %b::bytea[])"
    " RETURNING version, position"
)
LOG_BATCH_PREFIX: Final = (
    f"SELECT {LOG_COLUMNS} FROM tidings_events WHERE position > %s"
    " AND left(topic, %s) = %s ORDER BY position LIMIT %s"
)
LIST_STREAMS: Final = (
    "SELECT stream, version, first_us, last_us FROM tidings_streams"
    " WHERE left(stream, %s) = %s ORDER BY stream LIMIT %s"
)

PUT_SNAPSHOT: Final = (
    "INSERT INTO tidings_snapshots (stream, version, schema, time_us, state)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (stream, version) DO UPDATE SET schema = excluded.schema,"
    " time_us = excluded.time_us, state = excluded.state"
)

DOCUMENTS: Final = DocumentSql.dialect("%s")
STORE: Final = StoreSql.dialect("%s")
