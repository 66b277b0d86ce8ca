"""The SQLite schema and statements. The same tables as PostgreSQL, in SQLite's dialect."""

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

# AUTOINCREMENT keeps positions from ever being reused, even after the newest row is deleted.
# The write connection takes the database lock with BEGIN IMMEDIATE before reading a stream's
# head, so one writer at a time numbers positions and commits in position order: a reader never
# sees a position before a lower one that is still to commit.
CREATE: Final = (
    """CREATE TABLE IF NOT EXISTS tidings_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        partition INTEGER NOT NULL,
        id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        correlation_id TEXT,
        time_us INTEGER NOT NULL,
        meta BLOB NOT NULL,
        data BLOB NOT NULL,
        hash BLOB NOT NULL,
        UNIQUE (stream, version)
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_streams (
        stream TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        hash BLOB NOT NULL,
        first_us INTEGER NOT NULL,
        last_us INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tidings_snapshots (
        stream TEXT NOT NULL,
        version INTEGER NOT NULL,
        schema TEXT NOT NULL,
        time_us INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (stream, version)
    )""",
    *document_tables(bigint="INTEGER", blob="BLOB"),
)
CREATE_CONSUMERS: Final = (
    *consumer_tables(bigint="INTEGER", blob="BLOB", auto_id="INTEGER PRIMARY KEY AUTOINCREMENT"),
    *timer_tables(bigint="INTEGER", blob="BLOB"),
    *key_tables(bigint="INTEGER", blob="BLOB"),
)

HANDLED: Final = "SELECT event_id FROM tidings_inbox WHERE group_name = ? AND event_id IN ({marks})"
PUT_META: Final = "INSERT OR IGNORE INTO tidings_meta (key, value) VALUES (?, ?)"

EXISTING_IDS: Final = f"SELECT {SELECT_COLUMNS} FROM tidings_events WHERE id IN ({{marks}})"
INSERT_EVENT: Final = (
    f"INSERT INTO tidings_events ({INSERT_COLUMNS})"
    f" VALUES ({', '.join('?' * (INSERT_COLUMNS.count(',') + 1))})"
)
LOG_BATCH_PREFIX: Final = (
    f"SELECT {LOG_COLUMNS} FROM tidings_events WHERE position > ?"
    " AND substr(topic, 1, ?) = ? ORDER BY position LIMIT ?"
)
LIST_STREAMS: Final = (
    "SELECT stream, version, first_us, last_us FROM tidings_streams"
    " WHERE substr(stream, 1, ?) = ? ORDER BY stream LIMIT ?"
)

PUT_SNAPSHOT: Final = (
    "INSERT OR REPLACE INTO tidings_snapshots (stream, version, schema, time_us, state)"
    " VALUES (?, ?, ?, ?, ?)"
)

DOCUMENTS: Final = DocumentSql.dialect("?")
STORE: Final = StoreSql.dialect("?")
