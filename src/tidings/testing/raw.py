"""Raw SQL on a store's database, behind tidings' back: how the tests tamper with stored data."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import urlsplit

import msgspec

from tidings.domain.integrity import GENESIS, chain_hash


def raw_execute(store_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` placeholders) directly on the store's database; return its rows."""
    scheme = urlsplit(store_url).scheme
    if scheme == "sqlite":
        with closing(sqlite3.connect(urlsplit(store_url).path[1:])) as lite, lite:
            return list(lite.execute(sql, params).fetchall())
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as connection:
        cursor = connection.execute(sql.replace("?", "%s"), params)
        return list(cursor.fetchall()) if cursor.description else []


def rechain(store_url: str, stream: str) -> None:
    """What an attacker with SQL access does after an edit: recompute every link and the head."""
    rows = raw_execute(
        store_url,
        "SELECT version, stream, version, id, topic, meta, data FROM tidings_events"
        " WHERE stream = ? ORDER BY version",
        stream,
    )
    previous = GENESIS
    for row in rows:
        content = (row[1], row[2], row[3], row[4], bytes(row[5]), bytes(row[6]))
        previous = chain_hash(previous, msgspec.msgpack.encode(content))
        raw_execute(
            store_url,
            "UPDATE tidings_events SET hash = ? WHERE stream = ? AND version = ?",
            previous,
            stream,
            row[0],
        )
    raw_execute(
        store_url,
        "UPDATE tidings_streams SET version = ?, hash = ? WHERE stream = ?",
        rows[-1][0],
        previous,
        stream,
    )
