"""The event store on one SQLite file in WAL mode.

The file's two connections (a writer and a reader, each on a thread of its own, so that the event
loop never waits on disk) are in ``connections.py``; the keyring, which the store forwards to, in
``keys.py``; the blocking steps that run on those threads in ``steps.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from urllib.parse import quote

from tidings.adapters.sql.common import (
    Partitioner,
    StoreIdentity,
    identity_of_store,
    new_meta,
    validate_stream_name,
)
from tidings.adapters.sql.reads import StreamQuery, follow_log
from tidings.adapters.sql.rows import from_micros, to_micros
from tidings.adapters.sql.timers import TimerSql, timers_of
from tidings.adapters.sqlite import schema, steps, wal
from tidings.adapters.sqlite.connections import SqliteConnections
from tidings.adapters.sqlite.groups import SqliteFeed, SqliteGroups, SqliteGroupWrites
from tidings.adapters.sqlite.keys import SqliteKeys, SqliteKeyWrites
from tidings.adapters.sqlite.settings import SqliteSettings
from tidings.domain.envelope import Envelope, RecordedEvent, to_structured
from tidings.domain.integrity import IntegrityReport, VerifiedState
from tidings.errors import BackendUnavailable, IntegrityError
from tidings.ports import (
    ANY,
    ExpectedVersion,
    Sealer,
    Snapshot,
    StreamInfo,
    Timer,
)

TIMERS = TimerSql.dialect("?")


class SqliteStore:
    """``EventStore`` on one SQLite file in WAL mode; several processes may share the file."""

    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self.url = f"sqlite:///{settings.path}"
        self._connections = SqliteConnections(self.url, settings.busy_timeout)
        # The partitions are the file's: set when it opens, and shared with the parts below.
        self._partition_of = Partitioner(settings.partitions)
        self._feed = SqliteFeed(self._connections, self._partition_of)
        self._groups = SqliteGroups(self._connections, self._partition_of)
        self._keys = SqliteKeys(self._connections)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        await self._connections.open(self._connect)

    async def close(self) -> None:
        await self._connections.close()

    def _connect(self, writer: bool) -> sqlite3.Connection:
        path = self.settings.path
        inspecting = not self.settings.create
        if not path.exists():
            if inspecting:
                raise BackendUnavailable(f"no tidings store at {self.url}: the file does not exist")
            if writer:
                path.parent.mkdir(parents=True, exist_ok=True)
                # Event data is the most valuable data a company has: owner-only from the start.
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        if writer:
            wal.refuse_set_aside(path, self.url)
        # Inspecting (create=False) opens read-only: looking at a file must never change it.
        target = f"file:{quote(str(path))}?mode=ro" if inspecting else str(path)
        connection = sqlite3.connect(
            target,
            timeout=self.settings.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=inspecting,
            factory=steps.WriterConnection if writer else sqlite3.Connection,
        )
        try:
            if not inspecting:
                connection.execute("PRAGMA journal_mode=WAL")
            if writer:
                wal.check(connection, path, self.url, inspecting=inspecting)
            connection.execute(f"PRAGMA synchronous={self.settings.synchronous}")
            connection.execute(f"PRAGMA busy_timeout={int(self.settings.busy_timeout * 1000)}")
            if writer and not inspecting:
                self._create_schema(connection)
                # From here on the writer waits for the write lock in ``steps.begin``.
                if isinstance(connection, steps.WriterConnection):
                    connection.execute("PRAGMA busy_timeout=0")
                    connection.patience = self.settings.busy_timeout
            identity = self._check_schema(connection)
            self._partition_of.partitions = identity.partitions
            self._feed.log_id = identity.log_id
        except BaseException:
            connection.close()
            raise
        return connection

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            if self._is_foreign(connection):
                raise IntegrityError(
                    f"{self.url} is an SQLite database of something else; tidings will not write into it"
                )
            for statement in (*schema.CREATE, *schema.CREATE_CONSUMERS):
                connection.execute(statement)
            connection.executemany(schema.PUT_META, new_meta(self.settings.partitions))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    @staticmethod
    def _is_foreign(connection: sqlite3.Connection) -> bool:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
        return bool(tables) and "tidings_meta" not in tables

    def _check_schema(self, connection: sqlite3.Connection) -> StoreIdentity:
        meta: dict[str, str] = {}
        if not self._is_foreign(connection):
            try:
                meta = dict(connection.execute(schema.STORE.all_meta).fetchall())
            except sqlite3.OperationalError:  # no tables at all
                meta = {}
        return identity_of_store(self.url, meta)

    # -- appending -------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        async with self._connections.write_lock:
            return await self._connections.write(
                steps.in_transaction,
                steps.append,
                stream,
                envelopes,
                expected_version,
                self._partition_of,
                self.settings.max_size,
                seal,
            )

    # -- reading ---------------------------------------------------------------------------

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        at: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        query = StreamQuery.build("?", stream, from_version, to_version, at, backwards, limit)
        return await self._connections.read(steps.read_stream, query)

    async def read_from_snapshot(
        self, stream: str, *, to_version: int | None = None, at: datetime | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]]:
        return await self._connections.read(steps.read_from_snapshot, stream, to_version, at)

    def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        async def fetch(after: int, prefix: str, size: int) -> tuple[int, list[RecordedEvent]]:
            return await self._connections.read(steps.log_batch, after, prefix, size)

        return follow_log(fetch, after=after, pattern=pattern, batch_size=batch_size, limit=limit)

    async def head_position(self) -> int:
        return await self._connections.read(
            lambda c: int(c.execute(schema.STORE.head_position).fetchone()[0])
        )

    async def stream_version(self, stream: str) -> int:
        head = await self._connections.read(steps.read_head, stream)
        return head.version if head else 0

    async def list_streams(self, *, prefix: str = "", limit: int | None = None) -> list[StreamInfo]:
        rows = await self._connections.read(
            lambda c: c.execute(schema.LIST_STREAMS, (len(prefix), prefix, limit or -1)).fetchall()
        )
        return [StreamInfo(s, v, from_micros(f), from_micros(last)) for s, v, f, last in rows]

    # -- snapshots, documents, checkpoints -------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        row = (
            snapshot.stream,
            snapshot.version,
            snapshot.schema,
            to_micros(snapshot.time),
            snapshot.state,
        )
        async with self._connections.write_lock:
            await self._connections.write(steps.in_transaction, lambda c: c.execute(schema.PUT_SNAPSHOT, row))

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        return await self._connections.read(steps.load_snapshot, stream, max_version, at)

    async def get_document(self, collection: str, key: str) -> bytes | None:
        return await self._connections.read(steps.get_document, collection, key)

    async def get_checkpoint(self, name: str) -> int:
        return await self._connections.read(steps.get_checkpoint, name)

    # -- its parts: the feed, group state and the keyring ------------------------------------

    @property
    def feed(self) -> SqliteFeed:
        return self._feed

    @property
    def groups(self) -> SqliteGroups:
        return self._groups

    @property
    def key_store(self) -> SqliteKeys:
        return self._keys

    # -- timers ----------------------------------------------------------------------------

    async def next_timer_due(self) -> datetime | None:
        (due,) = await self._connections.read(lambda c: c.execute(TIMERS.next_due).fetchone())
        return None if due is None else from_micros(due)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self._connections.write_lock:
            try:
                await self._connections.write(steps.begin)
                yield SqliteTransaction(self)
                await self._connections.write(steps.commit)
            except BaseException:
                # Also when cancelled while BEGIN or COMMIT was running on the writer thread:
                # the connection must never be handed on inside a transaction (it would hold
                # the database's write lock). The thread runs the rollback even if we are
                # cancelled again while waiting for it; it is a no-op outside a transaction.
                await asyncio.shield(self._connections.write(steps.rollback))
                raise

    # -- integrity -------------------------------------------------------------------------

    async def verify(self, against: VerifiedState | None = None) -> IntegrityReport:
        return await self._connections.read(steps.verify, self._partition_of, self._feed.log_id, against)


class SqliteTransaction:
    """A transaction on the write connection; the store's write lock is held while it is open."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._write = store._connections.write  # inside the transaction that the store began
        self.groups = SqliteGroupWrites(store._connections)
        self.key_store = SqliteKeyWrites(store._connections)

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        return await self._write(
            steps.append,
            stream,
            envelopes,
            expected_version,
            self._store._partition_of,
            self._store.settings.max_size,
            seal,
        )

    async def get_document(self, collection: str, key: str) -> bytes | None:
        return await self._write(steps.get_document, collection, key)

    async def put_document(self, collection: str, key: str, value: bytes) -> None:
        await self._write(lambda c: c.execute(schema.DOCUMENTS.put_document, (collection, key, value)))

    async def delete_document(self, collection: str, key: str) -> None:
        await self._write(lambda c: c.execute(schema.DOCUMENTS.delete_document, (collection, key)))

    async def clear_collection(self, collection: str) -> None:
        await self._write(lambda c: c.execute(schema.DOCUMENTS.clear_collection, (collection,)))

    async def get_checkpoint(self, name: str) -> int:
        return await self._write(steps.get_checkpoint, name)

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._write(lambda c: c.execute(schema.DOCUMENTS.put_checkpoint, (name, position)))

    async def schedule_timer(self, timer_id: str, due: datetime, stream: str, envelope: Envelope) -> None:
        row = (timer_id, to_micros(due), stream, to_structured(envelope))
        await self._write(lambda c: c.execute(TIMERS.schedule, row))

    async def cancel_timer(self, timer_id: str) -> None:
        await self._write(lambda c: c.execute(TIMERS.cancel, (timer_id,)))

    async def due_timers(self, now: datetime, limit: int) -> list[Timer]:
        rows = await self._write(lambda c: c.execute(TIMERS.due, (to_micros(now), limit)).fetchall())
        return timers_of(rows, self._store.settings.max_size)
