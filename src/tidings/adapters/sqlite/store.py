"""The event store on one SQLite file in WAL mode.

The file's two connections (a writer and a reader, each on a thread of its own, so that the event
loop never waits on disk) are in ``connections.py``; the keyring, which the store forwards to, in
``keys.py``; the blocking steps that run on those threads in ``steps.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
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
from tidings.adapters.sql.consumers import check_dead_letter_state, group_checkpoint
from tidings.adapters.sql.reads import StreamQuery, follow_log
from tidings.adapters.sql.rows import from_micros, to_micros
from tidings.adapters.sql.timers import TimerSql, timers_of
from tidings.adapters.sqlite import schema, steps, wal
from tidings.adapters.sqlite.connections import SqliteConnections
from tidings.adapters.sqlite.keys import SqliteKeyring
from tidings.adapters.sqlite.settings import SqliteSettings
from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import Envelope, RecordedEvent, to_structured
from tidings.domain.integrity import IntegrityReport, VerifiedState
from tidings.errors import BackendUnavailable, IntegrityError
from tidings.ports import (
    ANY,
    DataKeyRecord,
    DeadLetter,
    ExpectedVersion,
    Sealer,
    Snapshot,
    StreamInfo,
    Timer,
    Trace,
)

WATCH_INTERVAL = 0.005  # seconds between looks at the file's change counter


TIMERS = TimerSql.dialect("?")


class SqliteStore:
    """``EventStore`` on one SQLite file in WAL mode; several processes may share the file."""

    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self.url = f"sqlite:///{settings.path}"
        self._connections = SqliteConnections(self.url, settings.busy_timeout)
        self._keys = SqliteKeyring(self._connections)
        self._partition_of = Partitioner(settings.partitions)
        self.log_id = ""

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
            self._partition_of = Partitioner(identity.partitions)
            self.log_id = identity.log_id
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

    # -- the log, as consumer groups read it --------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partition_of.partitions

    def partition_of(self, key: str) -> int:
        return self._partition_of(key)

    def checkpoint_name(self, group: str, partition: int) -> str:
        return group_checkpoint(group, partition)

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        return await self._connections.read(steps.read_partition, partition, after, limit)

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        async with self._connections.write_lock:
            return await self._connections.write(
                steps.in_transaction, steps.lease, group, member, int(ttl * 1e6), self.partitions
            )

    async def release(self, group: str, member: str) -> None:
        async with self._connections.write_lock:
            await self._connections.write(steps.in_transaction, steps.release, group, member)

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        return await self._connections.read(steps.handled, group, event_ids)

    async def watch(self, wake: Callable[[], None]) -> None:
        # PRAGMA data_version changes whenever another connection (in this process or another)
        # commits to the file; reading it costs no table access, so it can be polled often.
        last = await self._connections.read(steps.data_version)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            version = await self._connections.read(steps.data_version)
            if version != last:
                last = version
                wake()

    async def blocked_keys(self, group: str) -> set[str]:
        return await self._connections.read(steps.blocked_keys, group)

    async def unpark(self, group: str, key: str) -> int:
        async with self._connections.write_lock:
            return await self._connections.write(steps.in_transaction, steps.unpark, group, key)

    async def release_parked(self, group: str) -> int:
        async with self._connections.write_lock:
            return await self._connections.write(steps.in_transaction, steps.release_parked, group)

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        return await self._connections.read(steps.trace, correlation_id, limit)

    async def dead_letters(
        self, group: str | None = None, *, state: DeadLetterState | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return await self._connections.read(steps.dead_letters, group, state, limit)

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        check_dead_letter_state(state)
        async with self._connections.write_lock:
            return await self._connections.write(
                steps.in_transaction, steps.set_dead_letter_state, list(entries), state
            )

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

    # -- data keys: the keyring's -----------------------------------------------------------

    async def data_keys(self, scopes: Sequence[str]) -> list[DataKeyRecord]:
        return await self._keys.data_keys(scopes)

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        return await self._keys.data_key_page(after, limit)

    async def rewrap_data_key(self, record: DataKeyRecord, master_version: int, wrapped: bytes) -> bool:
        return await self._keys.rewrap_data_key(record, master_version, wrapped)

    async def retire_data_keys(self) -> int:
        return await self._keys.retire_data_keys()

    async def shred_data_keys(self, scope: str) -> int:
        return await self._keys.shred_data_keys(scope)

    # -- integrity -------------------------------------------------------------------------

    async def verify(self, against: VerifiedState | None = None) -> IntegrityReport:
        return await self._connections.read(steps.verify, self._partition_of, self.log_id, against)


class SqliteTransaction:
    """A transaction on the write connection; the store's write lock is held while it is open."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self._write = store._connections.write  # inside the transaction that the store began

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

    async def newest_data_key(self, scope: str) -> DataKeyRecord | None:
        return await self._store._keys.newest_data_key(scope)

    async def add_data_key(self, record: DataKeyRecord) -> DataKeyRecord:
        return await self._store._keys.add_data_key(record)

    async def reserve_data_key_uses(self, scope: str, version: int, count: int, limit: int) -> int | None:
        return await self._store._keys.reserve_data_key_uses(scope, version, count, limit)

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

    async def holds_lease(self, group: str, partition: int, member: str) -> bool:
        return await self._write(steps.holds_lease, group, partition, member)

    async def mark_handled(self, group: str, event_id: str, attempts: int = 1) -> bool:
        return await self._write(steps.mark_handled, group, event_id, attempts)

    async def dead_letter(self, letter: DeadLetter) -> int:
        return await self._write(steps.dead_letter, letter)

    async def settle_dead_letter(self, entry: int, state: DeadLetterState) -> bool:
        check_dead_letter_state(state)
        return await self._write(steps.settle_dead_letter, entry, state)
