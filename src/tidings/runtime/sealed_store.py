"""The store and logs as an App with encryption sees them: data sealed on the way in, keys
loaded on the way out.

Writes: every append (alone or in a transaction) first makes sure the transaction holds a data
key with room for its events, then hands the store a sealer that encrypts each event once the
store has given it its stream version. Timers' events and snapshots are sealed too. The relay and
the dead letter queue pass sealed envelopes on as they are, so neither NATS nor a dead letter
ever holds event data in the clear.

Reads: records come back sealed, exactly as stored; the keys they name are loaded here, so that
the codec can open them (synchronously) where the event is decoded. Whatever cannot be opened
fails there, with the event named, and a consumer dead-letters it as ``undecryptable``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import msgspec

from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.errors import Undecryptable
from tidings.ports import (
    ANY,
    EventStore,
    ExpectedVersion,
    Feed,
    GroupState,
    Sealer,
    Snapshot,
    StoreTransaction,
    Trace,
)
from tidings.runtime.crypto import SEALED
from tidings.runtime.keyring import KeyRing, Reserved

log = logging.getLogger("tidings.encryption")

#: The schema a snapshot reports when its scope was shredded: no aggregate has it, so the
#: repository ignores the snapshot and replays the stream.
ERASED_SNAPSHOT = "tidings:erased"


async def load_keys(keys: KeyRing, records: Sequence[RecordedEvent]) -> None:
    await keys.load(r.envelope.data for r in records if r.envelope.datacontenttype == SEALED)


class SealedFeed:
    """A feed (the store's, or the bus's in distributed mode) whose records' keys are loaded as
    read."""

    def __init__(self, inner: Feed, keys: KeyRing) -> None:
        self._inner = inner
        self._keys = keys
        self.checkpoint_name = inner.checkpoint_name
        self.partition_of = inner.partition_of
        self.watch = inner.watch

    @property
    def partitions(self) -> int:
        return self._inner.partitions

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        records = await self._inner.read_partition(partition, after=after, limit=limit)
        await load_keys(self._keys, records)
        return records

    async def head(self, partition: int) -> int:
        return await self._inner.head(partition)


class SealedGroups:
    """Group state whose traces' events have their keys loaded as read (the rest holds no event
    data that is decoded: a dead letter's envelope is opened where it is redriven)."""

    def __init__(self, inner: GroupState, keys: KeyRing) -> None:
        self._inner = inner
        self._keys = keys
        self.lease = inner.lease
        self.release = inner.release
        self.handled = inner.handled
        self.dead_letters = inner.dead_letters
        self.dead_letter_counts = inner.dead_letter_counts
        self.set_dead_letter_state = inner.set_dead_letter_state
        self.blocked_keys = inner.blocked_keys
        self.unpark = inner.unpark
        self.release_parked = inner.release_parked

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        found = await self._inner.trace(correlation_id, limit=limit)
        await load_keys(self._keys, found.events)
        return found


class SealedStore:
    """The event store with sealing on the way in and key loading on the way out, its feed and
    its traces too. The stored data keys (``key_store``) are the keyring's to use."""

    def __init__(self, inner: EventStore, keys: KeyRing) -> None:
        self._inner = inner
        self._keys = keys
        self.feed = SealedFeed(inner.feed, keys)
        self.groups = SealedGroups(inner.groups, keys)
        self.key_store = inner.key_store
        self.url = inner.url
        self.open = inner.open
        self.close = inner.close
        self.head_position = inner.head_position
        self.stream_version = inner.stream_version
        self.list_streams = inner.list_streams
        self.get_document = inner.get_document
        self.get_checkpoint = inner.get_checkpoint
        self.next_timer_due = inner.next_timer_due
        self.verify = inner.verify

    @property
    def log_id(self) -> str:
        return self._inner.log_id

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        staged: dict[str, Reserved] = {}
        if self._keys.room_in_memory(stream, envelopes, staged):  # the common case: one trip
            sealer = self._keys.sealer(staged)
            return await self._inner.append(stream, envelopes, expected_version=expected_version, seal=sealer)
        async with self.transaction() as tx:
            return await tx.append(stream, envelopes, expected_version=expected_version)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[StoreTransaction]:
        staged: dict[str, Reserved] = {}
        async with self._inner.transaction() as tx:
            yield SealingTransaction(tx, self._keys, staged)
        self._keys.adopt(staged)

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
        records = await self._inner.read_stream(
            stream, from_version=from_version, to_version=to_version, at=at, backwards=backwards, limit=limit
        )
        await load_keys(self._keys, records)
        return records

    async def read_from_snapshot(
        self, stream: str, *, to_version: int | None = None, at: datetime | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]]:
        snapshot, records = await self._inner.read_from_snapshot(stream, to_version=to_version, at=at)
        await load_keys(self._keys, records)
        return await self._opened(snapshot), records

    async def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        batch: list[RecordedEvent] = []
        async for record in self._inner.read_log(
            after=after, pattern=pattern, batch_size=batch_size, limit=limit
        ):
            batch.append(record)
            if len(batch) >= batch_size:
                await load_keys(self._keys, batch)
                for ready in batch:
                    yield ready
                batch = []
        await load_keys(self._keys, batch)
        for ready in batch:
            yield ready

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        staged: dict[str, Reserved] = {}
        async with self._inner.transaction() as tx:
            key = await self._keys.make_room(tx, self._keys.stream_scope(snapshot.stream), 1, staged)
        self._keys.adopt(staged)
        state = self._keys.seal_snapshot(
            snapshot.stream, snapshot.version, snapshot.schema, snapshot.state, key
        )
        await self._inner.save_snapshot(msgspec.structs.replace(snapshot, state=state))

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None:
        return await self._opened(await self._inner.load_snapshot(stream, max_version=max_version, at=at))

    async def _opened(self, snapshot: Snapshot | None) -> Snapshot | None:
        if snapshot is None:
            return None
        await self._keys.load([snapshot.state])
        try:
            state = self._keys.open_snapshot(
                snapshot.stream, snapshot.version, snapshot.schema, snapshot.state
            )
        except Undecryptable as exc:
            # An altered snapshot is no reason to fail a load: the stream is replayed instead.
            log.warning(
                "ignoring the snapshot of %s at version %d: %s", snapshot.stream, snapshot.version, exc
            )
            state = None
        if state is None:
            return msgspec.structs.replace(snapshot, schema=ERASED_SNAPSHOT, state=b"")
        return msgspec.structs.replace(snapshot, state=state)


class SealingTransaction:
    """A store transaction whose appends and timers seal their events."""

    def __init__(self, inner: StoreTransaction, keys: KeyRing, staged: dict[str, Reserved]) -> None:
        self._inner = inner
        self._keys = keys
        self._staged = staged
        self.groups = inner.groups
        self.key_store = inner.key_store
        self.get_document = inner.get_document
        self.put_document = inner.put_document
        self.delete_document = inner.delete_document
        self.clear_collection = inner.clear_collection
        self.get_checkpoint = inner.get_checkpoint
        self.set_checkpoint = inner.set_checkpoint
        self.cancel_timer = inner.cancel_timer
        self.due_timers = inner.due_timers

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        await self._keys.prepare(self._inner, stream, envelopes, self._staged)
        return await self._inner.append(
            stream, envelopes, expected_version=expected_version, seal=self._keys.sealer(self._staged)
        )

    async def schedule_timer(self, timer_id: str, due: datetime, stream: str, envelope: Envelope) -> None:
        await self._keys.prepare(self._inner, stream, [envelope], self._staged)
        sealed = self._keys.seal_pending(stream, envelope, self._staged)
        await self._inner.schedule_timer(timer_id, due, stream, sealed)
