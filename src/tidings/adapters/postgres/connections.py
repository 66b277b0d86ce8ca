"""The PostgreSQL store's connections: a pool for its work, and direct connections for what must
stay outside the pool. Each driver error leaves here as a tidings error naming the URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg_pool

from tidings.adapters.postgres import tls
from tidings.adapters.postgres.settings import PostgresSettings
from tidings.errors import BackendUnavailable, InvalidArgument, StoreFull, TidingsError

Connection = psycopg.AsyncConnection[Any]


class PostgresConnections:
    """A pool of autocommit connections to one database, opened once; ``url`` is the one shown."""

    def __init__(self, settings: PostgresSettings, url: str) -> None:
        self.settings = settings
        self.url = url
        self._pool: psycopg_pool.AsyncConnectionPool[Connection] | None = None

    async def open(self, prepare: Callable[[Connection], Awaitable[None]]) -> None:
        """Connect, let ``prepare`` ready the database on the first connection, then fill the pool."""
        if self._pool is not None:
            return
        # One direct connection first: its error says precisely what is wrong (refused, bad
        # password, no such database), where a pool would only time out.
        try:
            async with await self.connect() as connection:
                await prepare(connection)
        except psycopg.Error as exc:
            # libpq does not say why a certificate was refused: the TLS module asks once more.
            message = await asyncio.to_thread(tls.explain_refusal, self.settings.conninfo, self.message(exc))
            raise BackendUnavailable(f"PostgreSQL at {self.url}: {message}") from None
        pool: psycopg_pool.AsyncConnectionPool[Connection] = psycopg_pool.AsyncConnectionPool(
            self.settings.conninfo,
            min_size=1,
            max_size=self.settings.pool_size,
            open=False,
            timeout=self.settings.connect_timeout,
            kwargs={"autocommit": True},
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

    async def connect(self) -> Connection:
        """A new autocommit connection of the caller's own, outside the pool (driver errors raise
        as they are: the caller says what failed)."""
        return await psycopg.AsyncConnection.connect(
            self.settings.conninfo,
            connect_timeout=max(1, round(self.settings.connect_timeout)),
            autocommit=True,
        )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for the length of the block."""
        if self._pool is None:
            raise BackendUnavailable(f"store {self.url} is not open (call open() first)")
        try:
            async with self._pool.connection() as connection:
                yield connection
        except psycopg_pool.PoolTimeout as exc:
            raise BackendUnavailable(f"no connection to {self.url} became free: {exc}") from None
        except (psycopg.OperationalError, psycopg.DataError) as exc:
            raise self.translate(exc) from None

    def message(self, exc: psycopg.Error) -> str:
        """The driver's first line, with the URL shown instead of the connection string."""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return message.replace(self.settings.conninfo, self.url)

    def translate(self, exc: psycopg.Error) -> TidingsError:
        if isinstance(exc, psycopg.DataError):
            # A value that no attempt can store (a NUL in text, say) is the caller's argument,
            # dead-lettered in a handler, not an outage that is retried for ever.
            return InvalidArgument(f"PostgreSQL at {self.url} cannot store a value: {self.message(exc)}")
        if isinstance(exc, psycopg.errors.DiskFull):
            return StoreFull(f"PostgreSQL at {self.url} is out of disk space: {self.message(exc)}")
        return BackendUnavailable(f"PostgreSQL at {self.url}: {self.message(exc)}")
