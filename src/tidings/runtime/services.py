"""What the App's workers use, and nothing else: a small frozen set of services.

The App builds one when it opens and hands it to its consumer groups and its timer worker (a
relay needs only the wake-ups). No worker receives or imports the App: handing it over made the
App a service locator, and tied every runtime module to every other in one import circle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import RecordedEvent
from tidings.domain.events import Event
from tidings.ports import EventStore, Feed, GroupState
from tidings.runtime.codec import Codec
from tidings.runtime.deadlines import Clock
from tidings.runtime.keyring import KeyRing
from tidings.runtime.telemetry import EMBEDDED, TraceParent
from tidings.runtime.wakeups import Wakeups

A = TypeVar("A", bound=Aggregate)


class LoadAggregate(Protocol):
    """Rebuild an aggregate as of its newest event (``AggregateNotFound`` if it has none)."""

    async def __call__(self, cls: type[A], id: str, /) -> A: ...


class PublishEvent(Protocol):
    """Publish an event at once, in its own transaction (``App.publish``)."""

    async def __call__(
        self,
        event: Event,
        *,
        key: str | None = None,
        ttl: timedelta | None = None,
        expires_at: datetime | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id: str | None = None,
    ) -> RecordedEvent: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What workers use of an open App."""

    #: The App's name: the source of its events, and a field of what its workers log.
    name: str
    store: EventStore
    #: Consumer groups' state, the store's: leases, inbox, dead letters, parking.
    groups: GroupState
    #: What consumer groups read: the bus's feed in distributed mode, else the store's.
    feed: Feed
    codec: Codec
    clock: Clock
    #: Appends seen in this process (``wakeups.notify()`` after a worker appends), and the idle
    #: readers that wait for them.
    wakeups: Wakeups
    #: The data keys, with encryption on; else ``None``.
    keys: KeyRing | None
    #: Append the access denials not recorded yet (``App.record_denials``).
    record_denials: Callable[[], Awaitable[int]]
    load: LoadAggregate
    publish: PublishEvent
    #: ``messaging.system`` of the feed that groups read (``telemetry.EMBEDDED``: the store's).
    messaging_system: str = EMBEDDED
    #: What a handler's ``process`` span descends from (``App(trace_parent=...)``): the
    #: producer's ``send`` span, or none ("link": a trace of its own, linked to it).
    trace_parent: TraceParent = "producer"
