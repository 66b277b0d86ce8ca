"""The unit of work: what a handler changes, committed in one transaction with the group's inbox
record and checkpoint, so that its effects happen exactly once however often the event arrives.

Aggregates saved and events published through it are appended at commit (aggregates by the one
save path of ``runtime/repository.py``, whose snapshots follow the commit); document writes are
buffered (and read back by the same unit of work) and written at commit, after the appends. The transaction is
short: it opens at commit time, not while the handler awaits other things.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec

from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import Envelope
from tidings.domain.events import Event
from tidings.domain.names import check_name
from tidings.errors import AggregateNotFound
from tidings.ports import StoreTransaction
from tidings.runtime.repository import Appended, EnvelopesOf, append_aggregate

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

_DELETED = object()
_ABSENT = object()


@dataclass
class Publication:
    event: Event
    key: str | None = None
    ttl: timedelta | None = None
    expires_at: datetime | None = None
    #: An id of the caller's making (a retry that publishes the same id again is a no-op).
    id: str | None = None
    #: Published at this moment, by a durable timer, instead of at commit.
    at: datetime | None = None

    def fired(self) -> Publication:
        """What a timer publishes when it fires. The timer's id names its row (a later schedule
        of the same id replaces it); its event's id adds the moment, so that a timer set again
        after it fired fires again, while racing workers firing one row still append it once."""
        if self.at is None or self.id is None:
            return self
        moment = round(self.at.timestamp() * 1_000_000)
        return dataclasses.replace(self, id=f"{self.id}@{moment}")


@dataclass
class UnitOfWork:
    """Collects a handler's effects; ``commit`` writes them with the inbox and checkpoint."""

    loader: Callable[[type[Any], str], Awaitable[Any]]
    document_reader: Callable[[str, str], Awaitable[bytes | None]]
    aggregates: list[Aggregate] = field(default_factory=list)
    publications: list[Publication] = field(default_factory=list)
    documents: dict[tuple[str, str], object] = field(default_factory=dict)
    dead_letters: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    #: The App's access check (``runtime/access.py``), applied as each effect is staged, so that
    #: a denied publication fails the handler where it is made. The codec checks again at commit.
    guard: Callable[[str], None] | None = None
    #: Makes a timer's envelope as commit will (``publishing.trial_of``), so that ``schedule``
    #: refuses at once what could never fire (too large, sealed size included).
    trial: Callable[[Publication], object] | None = None
    #: The id of the handler's next publication (``Context``: derived from the handled event,
    #: the group and a count shared with ``ctx.publish``), so that a unit made again by a
    #: handler run again publishes the same ids.
    next_id: Callable[[], str] | None = None

    def _check(self, events: Sequence[Event], key: str | None = None) -> None:
        """Refuse, where it is staged, what the commit would refuse: a denied topic, a bad key."""
        if key is not None:
            check_name("key", key)
        if self.guard is not None:
            for event in events:
                self.guard(event.__event_topic__)

    async def load(self, cls: type[A], id: str, *, create: bool = False) -> A:
        """Load an aggregate; saving it later checks that nobody saved it meanwhile. With
        ``create``, one that has no events yet is a new ``cls(id)``; should another handler
        create it first, the save fails with ``ConcurrencyError`` and the handler is retried."""
        try:
            aggregate: A = await self.loader(cls, id)
        except AggregateNotFound:
            if not create:
                raise
            return cls(id)
        return aggregate

    def save(self, aggregate: Aggregate) -> None:
        """Save the aggregate's new events at commit (with optimistic concurrency)."""
        self._check(aggregate.pending)
        if aggregate not in self.aggregates:
            self.aggregates.append(aggregate)

    def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        ttl: timedelta | None = None,
        expires_at: datetime | None = None,
        id: str | None = None,
    ) -> None:
        """Publish an event at commit; it inherits the handled event's correlation. Its id is
        the caller's ``id``, else derived from the handled event (``Context.publish``): either
        way, publishing it again is a no-op."""
        self._check([event], key)
        if id is None and self.next_id is not None:
            id = self.next_id()
        self.publications.append(Publication(event, key, ttl, expires_at, id))

    def dead_letter(self, error: str) -> None:
        """Put the handled event in the group's dead letter queue at commit (reason ``stuck``),
        for an operator, while the rest of the unit commits as usual."""
        self.dead_letters.append(error)

    def schedule(self, event: Event, *, at: datetime, key: str | None = None, id: str | None = None) -> None:
        """Publish an event at ``at``, by a durable timer set at commit (it survives restarts and
        fires once); a timer with the same ``id`` is replaced. Without an ``id``, a handler's
        timer gets one derived like its publications' (``next_id``), so that a handler run
        again sets the same timer instead of a second one. An event that could not be
        published when it fires (``PayloadTooLarge``, its sealed size included) is refused here."""
        self._check([event], key)
        if id is None and self.next_id is not None:
            id = self.next_id()
        publication = Publication(event, key, id=id, at=at)
        if self.trial is not None:
            self.trial(publication.fired())
        self.publications.append(publication)

    async def get(self, collection: str, key: str, type: type[T]) -> T | None:
        value = self.documents.get((collection, key))
        if value is _DELETED:
            return None
        if value is not None:
            return msgspec.convert(value, type)
        raw = await self.document_reader(collection, key)
        return None if raw is None else msgspec.json.decode(raw, type=type)

    def streams(self) -> set[str]:
        """The streams this unit appends to at commit (that a later load must see)."""
        found = {aggregate.stream for aggregate in self.aggregates}
        found.update(p.key or p.id or "" for p in self.publications if p.at is None)
        return found

    def cancel(self, timer_id: str) -> None:
        """Cancel a durable timer at commit (a timer that fired already is gone anyway)."""
        self.cancelled.append(timer_id)

    def staged(self, collection: str, key: str) -> tuple[bool, bytes | None]:
        """Whether this unit writes the document, and what (``None``: deletes it)."""
        value = self.documents.get((collection, key), _ABSENT)
        if value is _ABSENT:
            return False, None
        return True, None if value is _DELETED else msgspec.json.encode(value)

    def put(self, collection: str, key: str, value: object) -> None:
        self.documents[(collection, key)] = msgspec.to_builtins(value)

    def delete(self, collection: str, key: str) -> None:
        self.documents[(collection, key)] = _DELETED

    async def append_events(
        self,
        tx: StoreTransaction,
        envelopes_of: EnvelopesOf,
        publish: Callable[[Publication], tuple[str, Envelope]],
    ) -> list[Appended]:
        """Append the saved aggregates' new events (by the one save path, snapshots included)
        and the publications (not the scheduled ones) inside ``tx``; returns the aggregates'
        appends, for ``complete_saves`` once ``tx`` committed."""
        appended: list[Appended] = []
        for aggregate in self.aggregates:
            if aggregate.pending:
                appended.append(await append_aggregate(tx, aggregate, envelopes_of(aggregate)))
        for publication in self.publications:
            if publication.at is None:
                stream, envelope = publish(publication)
                await tx.append(stream, [envelope])
        return appended

    async def write_timers(
        self, tx: StoreTransaction, publish: Callable[[Publication], tuple[str, Envelope]]
    ) -> None:
        """Cancel and set this unit's timers inside ``tx``. A transaction does this before any
        append: a timer worker locks due timers and then appends, so the same order here keeps
        the two from waiting on each other in a cycle (a deadlock on PostgreSQL)."""
        for timer_id in self.cancelled:
            await tx.cancel_timer(timer_id)
        for publication in self.publications:
            if publication.at is not None:
                stream, envelope = publish(publication.fired())
                await tx.schedule_timer(publication.id or envelope.id, publication.at, stream, envelope)


async def write_documents(tx: StoreTransaction, units: list[UnitOfWork]) -> None:
    """The units' document writes inside ``tx``, a later unit's over an earlier one's, in key
    order: transactions that write documents in one order cannot deadlock one another."""
    merged: dict[tuple[str, str], object] = {}
    for unit in units:
        merged.update(unit.documents)
    for collection, key in sorted(merged):
        value = merged[(collection, key)]
        if value is _DELETED:
            await tx.delete_document(collection, key)
        else:
            await tx.put_document(collection, key, msgspec.json.encode(value))
