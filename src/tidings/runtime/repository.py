"""Loading and saving aggregates: replay from the newest usable snapshot, save with optimistic
concurrency, and take a snapshot every N events."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TypeVar

import msgspec

from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import RecordedEvent
from tidings.domain.events import Erased
from tidings.errors import AggregateNotFound, InvalidArgument
from tidings.ports import EventStore, Snapshot
from tidings.runtime.codec import Codec

A = TypeVar("A", bound=Aggregate)
log = logging.getLogger("tidings.repository")


class Repository:
    def __init__(self, store: EventStore, codec: Codec) -> None:
        self._store = store
        self._codec = codec

    async def load(
        self,
        cls: type[A],
        id: str,
        *,
        version: int | None = None,
        at: datetime | None = None,
        create: bool = False,
    ) -> A:
        """The aggregate as of its newest event, or as of ``version`` or time ``at``. With
        ``create``, an aggregate without events is a new ``cls(id)`` (version 0) instead of an
        ``AggregateNotFound``: its save then requires its stream to be new still."""
        if create and (version is not None or at is not None):
            raise InvalidArgument("load(create=True) loads the newest state; it takes no version= or at=")
        stream = cls.stream_of(id)
        aggregate = cls(id)
        if cls.snapshot_every:
            snapshot, records = await self._store.read_from_snapshot(stream, to_version=version, at=at)
            if snapshot is not None:
                if self._restore(aggregate, snapshot):
                    aggregate.version = snapshot.version
                else:  # not usable: replay the whole stream instead
                    aggregate = cls(id)
                    records = await self._store.read_stream(stream, to_version=version, at=at)
        else:
            records = await self._store.read_stream(stream, to_version=version, at=at)
        for record in records:
            event = self._codec.decode(record.envelope, record.stream, record.version)
            if not isinstance(event, Erased):  # shredded: nothing left to apply
                aggregate.apply(event)
        if records:
            aggregate.version = records[-1].version
        if aggregate.version == 0 and not create:
            when = f" at version {version}" if version else f" as of {at.isoformat()}" if at else ""
            raise AggregateNotFound(f"{cls.__name__} {id!r} has no events in stream {stream!r}{when}")
        return aggregate

    async def save(self, aggregate: Aggregate) -> list[RecordedEvent]:
        """Append the aggregate's new events; ``ConcurrencyError`` if its stream moved meanwhile."""
        if not aggregate.pending:
            return []
        stream = aggregate.stream
        now = datetime.now(UTC)  # the events of one save happen, and commit, together
        envelopes = [self._codec.encode(event, subject=stream, time=now) for event in aggregate.pending]
        for envelope in envelopes:
            self._codec.check_fits(stream, envelope)
        before = aggregate.version
        records = await self._store.append(stream, envelopes, expected_version=before)
        aggregate._saved(records[-1].version)
        every = type(aggregate).snapshot_every
        if every and aggregate.version // every > before // every:
            await self._store.save_snapshot(
                Snapshot(
                    stream=stream,
                    version=aggregate.version,
                    schema=aggregate.snapshot_schema(),
                    time=records[-1].envelope.time,
                    state=aggregate.snapshot_state(),
                )
            )
        return records

    def _restore(self, aggregate: Aggregate, snapshot: Snapshot) -> bool:
        schema = aggregate.snapshot_schema()
        if snapshot.schema != schema:
            log.info(
                "ignoring snapshot of %s at version %d: schema %s, current %s",
                snapshot.stream,
                snapshot.version,
                snapshot.schema,
                schema,
            )
            return False
        try:
            aggregate.restore_state(snapshot.state)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring unreadable snapshot of %s: %s", snapshot.stream, exc)
            return False
        return True
