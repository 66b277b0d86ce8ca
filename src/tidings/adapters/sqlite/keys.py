"""The SQLite store's keyring (``tidings_keys``, see ``adapters/sql/keys.py``).

Within a transaction the keyring's writes join it, on the one writer connection: a second
transaction there would wait for the first. A key made in a transaction that rolls back goes
with it (the runtime adopts keys only once their transaction committed).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from tidings.adapters.sql.keys import KeySql, key_row, keys_of
from tidings.adapters.sql.rows import to_micros
from tidings.adapters.sqlite import steps
from tidings.adapters.sqlite.connections import SqliteConnections
from tidings.ports import DataKeyRecord

KEYS = KeySql.dialect("?", "IN ({marks})")
log = logging.getLogger("tidings.sqlite")


class SqliteKeys:
    """``KeyStore``: the store's data keys outside transactions (each write under the lock)."""

    def __init__(self, connections: SqliteConnections) -> None:
        self._connections = connections

    async def data_keys(self, scopes: Sequence[str]) -> list[DataKeyRecord]:
        found: list[Any] = []
        for start in range(0, len(scopes), 500):  # below SQLite's bound-parameter limit
            chunk = list(scopes[start : start + 500])
            query = KEYS.of_scopes.format(marks=",".join("?" * len(chunk)))
            found += await self._connections.read(lambda c, q=query, p=chunk: c.execute(q, p).fetchall())
        return keys_of(found)

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        rows = await self._connections.read(lambda c: c.execute(KEYS.page, (*after, limit)).fetchall())
        return keys_of(rows)

    async def rewrap_data_key(self, record: DataKeyRecord, master_version: int, wrapped: bytes) -> bool:
        row = (master_version, wrapped, record.scope, record.version, record.master_version)
        async with self._connections.write_lock:
            changed = await self._connections.write(
                steps.in_transaction, lambda c: c.execute(KEYS.rewrap, row).rowcount
            )
        return bool(changed)

    async def retire_data_keys(self) -> int:
        async with self._connections.write_lock:
            retired = await self._connections.write(
                steps.in_transaction, lambda c: c.execute(KEYS.retire).rowcount
            )
        return int(retired)

    async def shred_data_keys(self, scope: str) -> int:
        async with self._connections.write_lock:
            shredded = await self._connections.write(
                steps.in_transaction, steps.shred_keys, KEYS.shred, scope
            )
            # The wrapped keys also sit in the write-ahead log until it is checkpointed: fold it into
            # the file (where secure_delete overwrote them) and cut it to nothing.
            for _ in range(100):
                (busy, _, _), *_ = await self._connections.write(
                    lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                )
                if not busy:
                    break
                await asyncio.sleep(0.05)  # a reader holds an old snapshot: let it finish
            else:
                log.warning(
                    "%s: readers kept the write-ahead log from being truncated; the shredded keys "
                    "stay in it until the next checkpoint",
                    self._connections.url,
                )
        return int(shredded)


class SqliteKeyWrites:
    """``KeyWrites``: within a transaction, on the writer that the transaction holds (no lock of
    its own: it would wait for the transaction itself)."""

    def __init__(self, connections: SqliteConnections) -> None:
        self._connections = connections

    async def newest_data_key(self, scope: str) -> DataKeyRecord | None:
        rows = await self._connections.write(lambda c: c.execute(KEYS.newest, (scope,)).fetchall())
        return keys_of(rows)[0] if rows else None

    async def add_data_key(self, record: DataKeyRecord) -> DataKeyRecord:
        row = key_row(record, to_micros(record.created))

        def add(connection: sqlite3.Connection) -> list[Any]:
            connection.execute(KEYS.add, row)
            return connection.execute(KEYS.exact, (record.scope, record.version)).fetchall()

        return keys_of(await self._connections.write(add))[0]

    async def reserve_data_key_uses(self, scope: str, version: int, count: int, limit: int) -> int | None:
        rows = await self._connections.write(
            lambda c: c.execute(KEYS.reserve, (count, scope, version, count, limit)).fetchall()
        )
        return int(rows[0][0]) if rows else None
