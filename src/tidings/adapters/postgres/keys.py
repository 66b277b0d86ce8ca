"""The keyring's part of the PostgreSQL store (``tidings_keys``, see ``adapters/sql/keys.py``).

The keyring's writes within a transaction commit at once on a connection of their own: a key row
locked until the transaction ends, while it waits for the append lock that another transaction
holds and that one waits for the key row, would deadlock. A key that outlives a rolled-back
transaction is harmless (the runtime adopts keys only once their transaction committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from tidings.adapters.sql.keys import KeySql, key_row, keys_of
from tidings.adapters.sql.rows import to_micros
from tidings.errors import TidingsError
from tidings.ports import DataKeyRecord

if TYPE_CHECKING:
    from tidings.adapters.postgres.store import PostgresSettings

KEYS = KeySql.dialect("%s", "= ANY(%s)")


class PostgresKeyring:
    """The store's keyring methods (a part of ``PostgresStore``)."""

    if TYPE_CHECKING:
        settings: PostgresSettings
        _keys: psycopg.AsyncConnection[Any] | None
        _keys_lock: asyncio.Lock

        def _connection(self) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]: ...

        def _translate(self, exc: psycopg.Error) -> TidingsError: ...

    @asynccontextmanager
    async def _keys_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One autocommit connection for the keyring's writes, outside every pool transaction."""
        async with self._keys_lock:
            try:
                if self._keys is None or self._keys.closed:
                    self._keys = await psycopg.AsyncConnection.connect(
                        self.settings.conninfo,
                        connect_timeout=max(1, round(self.settings.connect_timeout)),
                        autocommit=True,
                    )
                yield self._keys
            except psycopg.Error as exc:
                raise self._translate(exc) from None

    async def data_keys(self, scopes: Sequence[str]) -> list[DataKeyRecord]:
        async with self._connection() as connection:
            cursor = await connection.execute(KEYS.of_scopes, (list(scopes),))
            return keys_of(await cursor.fetchall())

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        async with self._connection() as connection:
            cursor = await connection.execute(KEYS.page, (*after, limit))
            return keys_of(await cursor.fetchall())

    async def rewrap_data_key(self, record: DataKeyRecord, master_version: int, wrapped: bytes) -> bool:
        row = (master_version, wrapped, record.scope, record.version, record.master_version)
        async with self._connection() as connection:
            cursor = await connection.execute(KEYS.rewrap, row)
            return cursor.rowcount > 0

    async def retire_data_keys(self) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(KEYS.retire)
            return cursor.rowcount

    async def shred_data_keys(self, scope: str) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(KEYS.shred, (scope,))
            # Dead row versions still hold the wrapped keys: vacuum lets their space be reused.
            # Copies in WAL segments and backups remain until recycled (docs/security.md).
            await connection.execute("VACUUM tidings_keys")
            return cursor.rowcount


class PostgresTransactionKeys:
    """A transaction's keyring methods (a part of ``PostgresTransaction``)."""

    if TYPE_CHECKING:
        _store: PostgresKeyring

    async def newest_data_key(self, scope: str) -> DataKeyRecord | None:
        async with self._store._keys_connection() as connection:
            cursor = await connection.execute(KEYS.newest, (scope,))
            rows = await cursor.fetchall()
        return keys_of(rows)[0] if rows else None

    async def add_data_key(self, record: DataKeyRecord) -> DataKeyRecord:
        async with self._store._keys_connection() as connection:
            await connection.execute(KEYS.add, key_row(record, to_micros(record.created)))
            cursor = await connection.execute(KEYS.exact, (record.scope, record.version))
            return keys_of(await cursor.fetchall())[0]

    async def reserve_data_key_uses(self, scope: str, version: int, count: int, limit: int) -> int | None:
        async with self._store._keys_connection() as connection:
            cursor = await connection.execute(KEYS.reserve, (count, scope, version, count, limit))
            row = await cursor.fetchone()
        return None if row is None else int(row[0])
