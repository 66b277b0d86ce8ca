"""Raw SQL on a store's database, behind tidings' back: how the tests tamper with stored data."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import urlsplit


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
