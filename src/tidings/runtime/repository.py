"""Loading and saving aggregates: replay from the newest usable snapshot; save with optimistic
concurrency, and take a snapshot every N events.

One save path serves ``App.save`` and handlers alike: ``append_aggregate`` appends an aggregate's
new events where it is told (the store, or a handler's transaction), and ``complete_saves`` runs
once that append committed: the aggregate takes its new version, and the snapshot the save made
due is written. The snapshot follows the commit instead of joining it, because a store
transaction has no snapshot write, and because a snapshot is a cache of what the stream holds:
if it cannot be written, loads replay a little further until the next one, which is no reason to
report a committed save as failed (a handler's would be run again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import msgspec

from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.domain.events import Erased
from tidings.errors import AggregateNotFound, InvalidArgument
from tidings.ports import EventStore, Snapshot, StoreTransaction
from tidings.runtime.codec import Codec

A = TypeVar("A", bound=Aggregate)
log = logging.getLogger("tidings.repository")

#: How an aggregate's new events become envelopes (``publishing.aggregate_envelopes``): stamped
#: by the App's clock, in the lineage of whoever saves it.
EnvelopesOf = Callable[[Aggregate], list[Envelope]]


@dataclass(frozen=True, slots=True)
class Appended:
    """An aggregate's new events, appended where the commit is still to come, and the version
    it was loaded at: what ``complete_saves`` finishes."""

    aggregate: Aggregate
    records: list[RecordedEvent]
    before: int


async def append_aggregate(
    target: EventStore | StoreTransaction, aggregate: Aggregate, envelopes: Sequence[Envelope]
) -> Appended:
    """Append the envelopes of the aggregate's new events (at least one) to its stream,
    expecting the version it was loaded at: ``ConcurrencyError`` if the stream moved meanwhile.
    The aggregate is left as it is: a transaction may still fail to commit, and be retried.
    Nothing of the snapshot is made here: the aggregate's own code (its state's encoding) must
    not be able to fail a commit."""
    records = await target.append(aggregate.stream, envelopes, expected_version=aggregate.version)
    return Appended(aggregate, records, aggregate.version)


async def complete_saves(store: EventStore, saves: Sequence[Appended]) -> None:
    """What follows the commit of ``saves``: each aggregate takes its new version, then the
    snapshots they made due are taken and written (each alone: see the module's docstring). The
    aggregates are untouched between the commit and here, so each snapshot is of the state as
    appended."""
    for save in saves:
        save.aggregate._saved(save.records[-1].version)
    for save in saves:
        aggregate, after = save.aggregate, save.records[-1].version
        if not aggregate.snapshot_due(save.before, after):
            continue
        try:
            await store.save_snapshot(
                Snapshot(
                    stream=aggregate.stream,
                    version=after,
                    schema=aggregate.snapshot_schema(),
                    time=save.records[-1].envelope.time,
                    state=aggregate.snapshot_state(),
                )
            )
        except Exception:  # the aggregate's encoding or the store: the save stands regardless
            log.exception(
                "no snapshot of %s at version %d (its events are saved; loads replay them)",
                aggregate.stream,
                after,
            )


class Repository:
    """Aggregates on one store, as ``App.load`` and ``App.save`` reach them; ``envelopes_of``
    makes the envelopes of what ``save`` appends (the App's: on its clock, in no lineage)."""

    def __init__(self, store: EventStore, codec: Codec, envelopes_of: EnvelopesOf) -> None:
        self._store = store
        self._codec = codec
        self._envelopes_of = envelopes_of

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
        """Append the aggregate's new events, alone (the append commits as it returns);
        ``ConcurrencyError`` if its stream moved meanwhile."""
        if not aggregate.pending:
            return []
        appended = await append_aggregate(self._store, aggregate, self._envelopes_of(aggregate))
        await complete_saves(self._store, [appended])
        return appended.records

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
