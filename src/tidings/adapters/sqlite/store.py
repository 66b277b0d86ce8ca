"""The event store on one SQLite file.

sqlite3 calls block, so each store owns two connections, each driven by its own thread: a writer
(every append and transaction, one at a time, serialised by the database lock) and a reader
(stream and log reads, which WAL lets run beside a writer). The event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

from tidings.adapters.sql.common import (
    DEFAULT_PARTITIONS,
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
from tidings.adapters.sqlite.keys import SqliteKeyring, SqliteTransactionKeys
from tidings.adapters.urls import redact_url
from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent, to_structured
from tidings.domain.integrity import IntegrityReport, VerifiedState
from tidings.errors import BackendUnavailable, ConfigurationError, IntegrityError, StoreFull
from tidings.ports import (
    ANY,
    DeadLetter,
    ExpectedVersion,
    Sealer,
    Snapshot,
    StreamInfo,
    Timer,
    Trace,
)

T = TypeVar("T")
WATCH_INTERVAL = 0.005  # seconds between looks at the file's change counter


TIMERS = TimerSql.dialect("?")


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """How to open the file. ``synchronous="FULL"`` survives power loss; ``"NORMAL"`` may lose the
    newest commits on power loss (never on a process crash) and is faster."""

    path: Path
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    busy_timeout: float = 10.0
    partitions: int = DEFAULT_PARTITIONS
    create: bool = True
    max_size: int = DEFAULT_MAX_SIZE

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SqliteSettings:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``, options as query parameters:
        ``synchronous`` (FULL or NORMAL), ``busy_timeout`` (seconds), ``partitions``."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.lstrip("/"):
            raise ConfigurationError(
                f"not a SQLite URL: {redact_url(url)!r} (expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db)"
            )
        path = Path(parts.path[1:])
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        unknown = set(options) - {"synchronous", "busy_timeout", "partitions"}
        if unknown:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(sorted(unknown))}")
        synchronous = options.get("synchronous", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        try:
            busy_timeout = float(options.get("busy_timeout", "10"))
            partitions = int(options.get("partitions", str(DEFAULT_PARTITIONS)))
        except ValueError as exc:
            raise ConfigurationError(f"bad SQLite URL option in {redact_url(url)!r}: {exc}") from None
        if partitions < 1 or busy_timeout < 0:
            raise ConfigurationError("partitions must be >= 1 and busy_timeout >= 0")
        return cls(
            path=path,
            synchronous=synchronous,  # type: ignore[arg-type]
            busy_timeout=busy_timeout,
            partitions=partitions,
            create=create,
        )


class SqliteStore(SqliteKeyring):
    """``EventStore`` on one SQLite file in WAL mode; several processes may share the file."""

    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self.url = f"sqlite:///{settings.path}"
        self._partition_of = Partitioner(settings.partitions)
        self.log_id = ""
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-write")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-read")
        self._write_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        try:
            self._writer = await self._on(self._write_thread, self._connect, True)
            self._reader = await self._on(self._read_thread, self._connect, False)
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
                meta = dict(connection.execute(schema.ALL_META).fetchall())
            except sqlite3.OperationalError:  # no tables at all
                meta = {}
        return identity_of_store(self.url, meta)

    def _append_step(
        self,
        connection: sqlite3.Connection,
        stream: str,
        envelopes: Sequence[Envelope],
        expected: ExpectedVersion,
    ) -> list[RecordedEvent]:
        return steps.append(
            connection, stream, envelopes, expected, self._partition_of, self.settings.max_size
        )

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
                f"{self.settings.busy_timeout:g} s (busy_timeout): {text}"
            )
        if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return StoreFull(f"{self.url} is full (its disk, or max_page_count): {text}; nothing was written")
        if "malformed" in text or "not a database" in text or "disk image" in text:
            return IntegrityError(f"{self.url} is damaged ({text}); run `tidings verify`")
        if "unable to open" in text or "readonly" in text:
            return BackendUnavailable(f"cannot open {self.url}: {text}")
        return BackendUnavailable(f"SQLite error on {self.url}: {text}")

    async def _write(self, function: Callable[..., T], *args: Any) -> T:
        return await self._on(self._write_thread, function, self._require(self._writer), *args)

    async def _read(self, function: Callable[..., T], *args: Any) -> T:
        return await self._on(self._read_thread, function, self._require(self._reader), *args)

    def _require(self, connection: sqlite3.Connection | None) -> sqlite3.Connection:
        if connection is None:
            raise BackendUnavailable(f"store {self.url} is not open (call open() first)")
        return connection

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
        async with self._write_lock:
            return await self._write(
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
        return await self._read(steps.read_stream, query)

    async def read_from_snapshot(
        self, stream: str, *, to_version: int | None = None, at: datetime | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]]:
        return await self._read(steps.read_from_snapshot, stream, to_version, at)

    def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        async def fetch(after: int, prefix: str, size: int) -> tuple[int, list[RecordedEvent]]:
            return await self._read(steps.log_batch, after, prefix, size)

        return follow_log(fetch, after=after, pattern=pattern, batch_size=batch_size, limit=limit)

    async def head_position(self) -> int:
        return await self._read(lambda c: int(c.execute(schema.HEAD_POSITION).fetchone()[0]))

    async def stream_version(self, stream: str) -> int:
        head = await self._read(steps.read_head, stream)
        return head.version if head else 0

    async def list_streams(self, *, prefix: str = "", limit: int | None = None) -> list[StreamInfo]:
        rows = await self._read(
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
        async with self._write_lock:
            await self._write(steps.in_transaction, lambda c: c.execute(schema.PUT_SNAPSHOT, row))

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        return await self._read(steps.load_snapshot, stream, max_version, at)

    async def get_document(self, collection: str, key: str) -> bytes | None:
        return await self._read(steps.get_document, collection, key)

    async def get_checkpoint(self, name: str) -> int:
        return await self._read(steps.get_checkpoint, name)

    # -- the log, as consumer groups read it --------------------------------------------------

    @property
    def partitions(self) -> int:
        return self._partition_of.partitions

    def partition_of(self, key: str) -> int:
        return self._partition_of(key)

    def checkpoint_name(self, group: str, partition: int) -> str:
        return group_checkpoint(group, partition)

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        return await self._read(steps.read_partition, partition, after, limit)

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        async with self._write_lock:
            return await self._write(
                steps.in_transaction, steps.lease, group, member, int(ttl * 1e6), self.partitions
            )

    async def release(self, group: str, member: str) -> None:
        async with self._write_lock:
            await self._write(steps.in_transaction, steps.release, group, member)

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        return await self._read(steps.handled, group, event_ids)

    async def watch(self, wake: Callable[[], None]) -> None:
        # PRAGMA data_version changes whenever another connection (in this process or another)
        # commits to the file; reading it costs no table access, so it can be polled often.
        last = await self._read(steps.data_version)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            version = await self._read(steps.data_version)
            if version != last:
                last = version
                wake()

    async def blocked_keys(self, group: str) -> set[str]:
        return await self._read(steps.blocked_keys, group)

    async def unpark(self, group: str, key: str) -> int:
        async with self._write_lock:
            return await self._write(steps.in_transaction, steps.unpark, group, key)

    async def release_parked(self, group: str) -> int:
        async with self._write_lock:
            return await self._write(steps.in_transaction, steps.release_parked, group)

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        return await self._read(steps.trace, correlation_id, limit)

    async def dead_letters(
        self, group: str | None = None, *, state: DeadLetterState | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        return await self._read(steps.dead_letters, group, state, limit)

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        check_dead_letter_state(state)
        async with self._write_lock:
            return await self._write(steps.in_transaction, steps.set_dead_letter_state, list(entries), state)

    async def next_timer_due(self) -> datetime | None:
        (due,) = await self._read(lambda c: c.execute(TIMERS.next_due).fetchone())
        return None if due is None else from_micros(due)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self._write_lock:
            try:
                await self._write(steps.begin)
                yield SqliteTransaction(self)
                await self._write(steps.commit)
            except BaseException:
                # Also when cancelled while BEGIN or COMMIT was running on the writer thread:
                # the connection must never be handed on inside a transaction (it would hold
                # the database's write lock). The thread runs the rollback even if we are
                # cancelled again while waiting for it; it is a no-op outside a transaction.
                await asyncio.shield(self._write(steps.rollback))
                raise

    # -- integrity -------------------------------------------------------------------------

    async def verify(self, against: VerifiedState | None = None) -> IntegrityReport:
        return await self._read(steps.verify, self._partition_of, self.log_id, against)


class SqliteTransaction(SqliteTransactionKeys):
    """A transaction on the write connection; the store's write lock is held while it is open."""

    _store: SqliteStore

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        validate_stream_name(stream)
        return await self._store._write(
            steps.append,
            stream,
            envelopes,
            expected_version,
            self._store._partition_of,
            self._store.settings.max_size,
            seal,
        )

    async def get_document(self, collection: str, key: str) -> bytes | None:
        return await self._store._write(steps.get_document, collection, key)

    async def put_document(self, collection: str, key: str, value: bytes) -> None:
        await self._store._write(lambda c: c.execute(schema.PUT_DOCUMENT, (collection, key, value)))

    async def delete_document(self, collection: str, key: str) -> None:
        await self._store._write(lambda c: c.execute(schema.DELETE_DOCUMENT, (collection, key)))

    async def clear_collection(self, collection: str) -> None:
        await self._store._write(lambda c: c.execute(schema.CLEAR_COLLECTION, (collection,)))

    async def get_checkpoint(self, name: str) -> int:
        return await self._store._write(steps.get_checkpoint, name)

    async def set_checkpoint(self, name: str, position: int) -> None:
        await self._store._write(lambda c: c.execute(schema.PUT_CHECKPOINT, (name, position)))

    async def schedule_timer(self, timer_id: str, due: datetime, stream: str, envelope: Envelope) -> None:
        row = (timer_id, to_micros(due), stream, to_structured(envelope))
        await self._store._write(lambda c: c.execute(TIMERS.schedule, row))

    async def cancel_timer(self, timer_id: str) -> None:
        await self._store._write(lambda c: c.execute(TIMERS.cancel, (timer_id,)))

    async def due_timers(self, now: datetime, limit: int) -> list[Timer]:
        rows = await self._store._write(lambda c: c.execute(TIMERS.due, (to_micros(now), limit)).fetchall())
        return timers_of(rows, self._store.settings.max_size)

    async def holds_lease(self, group: str, partition: int, member: str) -> bool:
        return await self._store._write(steps.holds_lease, group, partition, member)

    async def mark_handled(self, group: str, event_id: str, attempts: int = 1) -> bool:
        return await self._store._write(steps.mark_handled, group, event_id, attempts)

    async def dead_letter(self, letter: DeadLetter) -> int:
        return await self._store._write(steps.dead_letter, letter)

    async def settle_dead_letter(self, entry: int, state: DeadLetterState) -> bool:
        check_dead_letter_state(state)
        return await self._store._write(steps.settle_dead_letter, entry, state)
