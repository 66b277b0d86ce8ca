"""The SQLite store's two connections, each driven by a thread of its own.

sqlite3 calls block, so a writer (every append and transaction, one at a time) and a reader
(stream and log reads, which WAL lets run beside a writer) each run on their own thread: the
event loop never waits on disk. Each driver error leaves here as a tidings error naming the URL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tidings.errors import BackendUnavailable, IntegrityError, StoreFull

T = TypeVar("T")


class SqliteConnections:
    """The writer and the reader of one file; ``write_lock`` lets one write through at a time."""

    def __init__(self, url: str, busy_timeout: float) -> None:
        self.url = url
        self._busy_timeout = busy_timeout  # seconds, for the error that says it ran out
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-read")
        #: Held by each write, and by a transaction for its whole length: the writer connection
        #: serves one of them at a time.
        self.write_lock = asyncio.Lock()

    async def open(self, connect: Callable[[bool], sqlite3.Connection]) -> None:
        """Open the writer, then the reader, each with ``connect(writer)`` on its own thread."""
        if self._writer is not None:
            return
        try:
            self._writer = await self._on(self._write_thread, connect, True)
            self._reader = await self._on(self._read_thread, connect, False)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for connection, thread in (
            (self._writer, self._write_thread),
            (self._reader, self._read_thread),
        ):
            if connection is not None:
                await self._on(thread, connection.close)
        self._writer = self._reader = None
        self._write_thread.shutdown(wait=False)
        self._read_thread.shutdown(wait=False)

    async def write(self, function: Callable[..., T], *args: Any) -> T:
        """``function(writer, *args)`` on the writer's thread (the caller holds ``write_lock``)."""
        return await self._on(self._write_thread, function, self._require(self._writer), *args)

    async def read(self, function: Callable[..., T], *args: Any) -> T:
        """``function(reader, *args)`` on the reader's thread."""
        return await self._on(self._read_thread, function, self._require(self._reader), *args)

    async def _on(self, thread: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(thread, function, *args)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> Exception:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return BackendUnavailable(
                f"{self.url} stayed locked by another writer for over "
                f"{self._busy_timeout:g} s (busy_timeout): {text}"
            )
        if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return StoreFull(f"{self.url} is full (its disk, or max_page_count): {text}; nothing was written")
        if "malformed" in text or "not a database" in text or "disk image" in text:
            return IntegrityError(f"{self.url} is damaged ({text}); run `tidings verify`")
        if "unable to open" in text or "readonly" in text:
            return BackendUnavailable(f"cannot open {self.url}: {text}")
        return BackendUnavailable(f"SQLite error on {self.url}: {text}")

    def _require(self, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        if connection is None:
            raise BackendUnavailable(f"store {self.url} is not open (call open() first)")
        return connection
