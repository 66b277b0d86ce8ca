"""The PostgreSQL store's keyring (``tidings_keys``, see ``adapters/sql/keys.py``).

The keyring's writes within a transaction commit at once on a connection of their own: a key row
locked until the transaction ends, while it waits for the append lock that another transaction
holds and that one waits for the key row, would deadlock. A key that outlives a rolled-back
transaction is harmless (the runtime adopts keys only once their transaction committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg

from tidings.adapters.postgres.connections import Connection, PostgresConnections
from tidings.adapters.sql.keys import KeySql, key_row, keys_of
from tidings.adapters.sql.rows import to_micros
from tidings.ports import DataKeyRecord

KEYS = KeySql.dialect("%s", "= ANY(%s)")


class PostgresKeys:
    """``KeyStore``: the store's data keys outside transactions, on the pool."""

    def __init__(self, connections: PostgresConnections) -> None:
        self._connections = connections

    async def data_keys(self, scopes: Sequence[str]) -> list[DataKeyRecord]:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(KEYS.of_scopes, (list(scopes),))
            return keys_of(await cursor.fetchall())

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(KEYS.page, (*after, limit))
            return keys_of(await cursor.fetchall())

    async def rewrap_data_key(self, record: DataKeyRecord, master_version: int, wrapped: bytes) -> bool:
        row = (master_version, wrapped, record.scope, record.version, record.master_version)
        async with self._connections.connection() as connection:
            cursor = await connection.execute(KEYS.rewrap, row)
            return cursor.rowcount > 0

    async def retire_data_keys(self) -> int:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(KEYS.retire)
            return cursor.rowcount

    async def shred_data_keys(self, scope: str) -> int:
        async with self._connections.connection() as connection:
            cursor = await connection.execute(KEYS.shred, (scope,))
            # Dead row versions still hold the wrapped keys: vacuum lets their space be reused.
            # Copies in WAL segments and backups remain until recycled (docs/security.md).
            await connection.execute("VACUUM tidings_keys")
            return cursor.rowcount


class PostgresKeyWrites:
    """``KeyWrites``: the keyring's writes within a transaction, each committed at once on a
    connection of its own (see above); one for the store, shared by its transactions."""

    def __init__(self, connections: PostgresConnections) -> None:
        self._connections = connections
        self._own: Connection | None = None  # for the writes within a transaction, see above
        self._own_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()
            self._own = None

    @asynccontextmanager
    async def _own_connection(self) -> AsyncIterator[Connection]:
        """One autocommit connection for the keyring's writes, outside every pool transaction."""
        async with self._own_lock:
            try:
                if self._own is None or self._own.closed:
                    self._own = await self._connections.connect()
                yield self._own
            except psycopg.Error as exc:
                raise self._connections.translate(exc) from None

    async def newest_data_key(self, scope: str) -> DataKeyRecord | None:
        async with self._own_connection() as connection:
            cursor = await connection.execute(KEYS.newest, (scope,))
            rows = await cursor.fetchall()
        return keys_of(rows)[0] if rows else None

    async def add_data_key(self, record: DataKeyRecord) -> DataKeyRecord:
        async with self._own_connection() as connection:
            await connection.execute(KEYS.add, key_row(record, to_micros(record.created)))
            cursor = await connection.execute(KEYS.exact, (record.scope, record.version))
            return keys_of(await cursor.fetchall())[0]

    async def reserve_data_key_uses(self, scope: str, version: int, count: int, limit: int) -> int | None:
        async with self._own_connection() as connection:
            cursor = await connection.execute(KEYS.reserve, (count, scope, version, count, limit))
            row = await cursor.fetchone()
        return None if row is None else int(row[0])
