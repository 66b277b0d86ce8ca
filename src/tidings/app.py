"""The App: one service's entry point to its store, codec, aggregates and projections.

The composition root, with ``wiring.py`` (opening the store and the bus) and ``workers.py`` (what
``running`` starts): it wires the runtime and hands its workers ``Services``, never itself.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from tidings.domain.aggregate import Aggregate
from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import DEFAULT_MAX_SIZE, RecordedEvent, Stored
from tidings.domain.events import Event, EventRegistry, default_registry
from tidings.domain.integrity import IntegrityReport
from tidings.domain.names import check_stream_name
from tidings.domain.policy import Policy
from tidings.domain.saga import Saga
from tidings.errors import AccessDenied, ConfigurationError
from tidings.ports import ANY, Bus, DeadLetter, EventStore, ExpectedVersion, Feed, GroupState
from tidings.runtime.access import Guard, load_policy
from tidings.runtime.codec import Codec
from tidings.runtime.deadlines import Clock, SystemClock
from tidings.runtime.encryption import Encryption
from tidings.runtime.key_admin import Rotation, rotate_keys, shred_keys
from tidings.runtime.keyring import KeyRing, stored_scope
from tidings.runtime.leasing import PartitionMember
from tidings.runtime.log_context import log_fields
from tidings.runtime.monitoring import Monitor
from tidings.runtime.projection import Projection, reset_projection, run_projection
from tidings.runtime.publishing import (
    Lineage,
    aggregate_envelopes,
    append_publications,
    publication_envelope,
    publications_of,
    stream_envelopes,
)
from tidings.runtime.repository import Repository
from tidings.runtime.retries import Retry
from tidings.runtime.services import Services
from tidings.runtime.subscriptions import Subscriptions
from tidings.runtime.telemetry import EMBEDDED, TraceParent, bus_system, sending
from tidings.runtime.unit_of_work import Publication
from tidings.runtime.verified_record import verify_store
from tidings.runtime.wakeups import Wakeups
from tidings.wiring import connect
from tidings.workers import until_signalled, workers_running

A = TypeVar("A", bound=Aggregate)
H = TypeVar("H", bound=Callable[..., Any])
T = TypeVar("T")

DEFAULT_STORE: Final = "sqlite:///.tidings/tidings.db"


class AppState(enum.Enum):
    CREATED = "created"  # configured; nothing opened yet
    OPEN = "open"  # the store is connected and its schema exists
    CLOSED = "closed"  # released; an App is not reopened


class App:
    """A service: ``App("billing", store="sqlite:///shop.db")``.

    ``TIDINGS_STORE``, when set, overrides the ``store`` given in code: the same service code runs
    embedded on a laptop and on PostgreSQL in production, switched by its environment alone.
    ``use_urls`` replaces both before the App opens (``tidings run --store URL --bus URL``).

    With an access ``policy`` (a TOML file or a ``Policy``; ``TIDINGS_POLICY`` overrides), the App
    runs as ``principal`` (``TIDINGS_PRINCIPAL`` overrides; default: its name) and may publish and
    subscribe only as the policy allows that principal (``runtime/access.py``).
    """

    def __init__(
        self,
        name: str,
        *,
        store: str | None = None,
        bus: str | None = None,
        registry: EventRegistry = default_registry,
        max_event_size: int = DEFAULT_MAX_SIZE,
        clock: Clock | None = None,
        encryption: Encryption | bool | None = None,
        policy: str | os.PathLike[str] | Policy | None = None,
        principal: str | None = None,
        trace_parent: TraceParent = "producer",
    ) -> None:
        if not name:
            raise ConfigurationError("an App needs a name (it becomes the events' source)")
        self.name = name
        self.store_url = os.environ.get("TIDINGS_STORE") or store or DEFAULT_STORE
        #: Distributed mode: the relay publishes the store's log to this bus (``TIDINGS_BUS``).
        self.bus_url = os.environ.get("TIDINGS_BUS") or bus
        self.trace_parent: TraceParent = trace_parent
        #: Event data sealed at rest and on the bus; by default on when the environment holds a
        #: master key (``TIDINGS_MASTER_KEY`` or ``TIDINGS_MASTER_KEY_FILE``).
        self.encryption = Encryption.configured(encryption)
        self.keys: KeyRing | None = None
        self.clock: Clock = clock or SystemClock()
        self.principal = os.environ.get("TIDINGS_PRINCIPAL") or principal or name
        policy = os.environ.get("TIDINGS_POLICY") or policy
        #: With a policy: the check of what this App's principal may do (deny by default).
        self.guard = None if policy is None else Guard(load_policy(policy), self.principal, self.clock.now)
        check = None if self.guard is None else self.guard.check_publish
        self.codec = Codec(
            source=name, registry=registry, max_size=max_event_size, guard=check, now=self.clock.now
        )
        # Encodes tidings' own audit events (security.denied), which pass no guard.
        self._audit_codec = Codec(source=name, registry=registry, max_size=max_event_size, now=self.clock.now)
        self.state = AppState.CREATED
        self._subscriptions = Subscriptions(name, registry, self.clock.now, self.guard)
        #: What this App's consumer groups run, by group (sagas included), and its sagas by name.
        self.subscriptions = self._subscriptions.by_group
        self.sagas = self._subscriptions.sagas
        self._store: EventStore | None = None
        #: What the relay reads: the store as stored (it passes sealed data on without opening it).
        self._raw: EventStore | None = None
        self._bus: Bus | None = None
        self._feed: Feed | None = None  # what consumer groups read: the bus's feed, else the store's
        self._repository: Repository | None = None
        self._services: Services | None = None  # what workers use, once open (``services``)
        self._members: list[PartitionMember] = []  # the workers running now (``running``)
        self.monitor: Monitor | None = None  # samples what metrics report: running(monitoring=seconds)
        #: Appends seen in this process, and the idle readers (consumers, relay) that wait for them.
        self.wakeups = Wakeups()

    # -- lifecycle -------------------------------------------------------------------------

    def use_urls(self, *, store: str | None = None, bus: str | None = None) -> None:
        """Point the App, before it opens, at another store or bus than its code and environment
        name (``tidings run --store URL --bus URL``); ``None`` keeps the one it has."""
        if self.state is not AppState.CREATED:
            raise ConfigurationError(f"App {self.name!r} is {self.state.value}; its URLs are set before open")
        self.store_url = store or self.store_url
        self.bus_url = bus or self.bus_url

    async def open(self) -> App:
        if self.state is AppState.OPEN:
            return self
        if self.state is AppState.CLOSED:
            raise ConfigurationError(f"App {self.name!r} is closed; create a new App")
        wired = await connect(
            self.store_url,
            self.bus_url,
            name=self.name,
            codec=self.codec,
            encryption=self.encryption,
            guard=self.guard,
            principal=self.principal,
        )
        self.keys = wired.keys
        self._store, self._bus, self._feed = wired.store, wired.bus, wired.feed
        self._raw = wired.raw
        self._repository = Repository(
            wired.store,
            self.codec,
            lambda aggregate: aggregate_envelopes(self.codec, aggregate, self.clock.now(), Lineage()),
        )
        self.state = AppState.OPEN
        self._services = Services(
            name=self.name,
            store=wired.store,
            groups=wired.store.groups,
            feed=self.feed,
            codec=self.codec,
            clock=self.clock,
            wakeups=self.wakeups,
            keys=self.keys,
            record_denials=self.record_denials,
            load=self.repository.load,
            publish=self.publish,
            messaging_system=bus_system(self.bus_url) if self.bus_url else EMBEDDED,
            trace_parent=self.trace_parent,
        )
        await self.record_denials()  # those made before the App opened (at subscribe)
        return self

    async def close(self) -> None:
        await self.record_denials()  # any still waiting (a handler that caught its own)
        if self._bus is not None:
            await self._bus.close()
        if self._store is not None:
            await self._store.close()
        self._store = self._raw = self._bus = self._feed = self._services = self._repository = None
        self.codec.bus_room = None
        self.state = AppState.CLOSED

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise ConfigurationError(
                f"App {self.name!r} is {self.state.value}; use `async with app:` or await app.open()"
            )
        return self._store

    @property
    def feed(self) -> Feed:
        """What this App's consumer groups read: in distributed mode the bus's feed, whose
        partitions the relay fills from the store's; else the store's feed itself."""
        return self._feed or self.store.feed

    @property
    def groups(self) -> GroupState:
        """What the store keeps of consumer groups: leases, inbox, dead letters, parking."""
        return self.store.groups

    @property
    def services(self) -> Services:
        """What this App's workers use (consumer groups, the timer worker), handed to them
        instead of the App itself."""
        if self._services is None:
            raise ConfigurationError(f"App {self.name!r} is not open")
        return self._services

    @property
    def repository(self) -> Repository:
        if self._repository is None:
            self.store  # noqa: B018 - raises the error that explains why
            raise ConfigurationError(f"App {self.name!r} is not open")
        return self._repository

    # -- events ----------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: Event | Sequence[Event],
        *,
        expected_version: ExpectedVersion = ANY,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> list[RecordedEvent]:
        """Append events to a stream, atomically, with optimistic concurrency if asked."""
        check_stream_name(stream)
        batch = [events] if isinstance(events, Event) else list(events)
        lineage = Lineage(correlation_id, causation_id)  # sent in the current span: sending's
        with sending([e.__event_topic__ for e in batch]):
            async with self._audited():
                envelopes = stream_envelopes(self.codec, stream, batch, self.clock.now(), lineage)
            records = await self.store.append(stream, envelopes, expected_version=expected_version)
        self.notify()
        return records

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        at: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[Stored[Event]]:
        records = await self.store.read_stream(
            stream, from_version=from_version, to_version=to_version, at=at, backwards=backwards, limit=limit
        )
        return [self.codec.stored(record) for record in records]

    async def read_log(
        self, *, after: int = 0, pattern: str | None = None, batch_size: int = 1000
    ) -> AsyncIterator[Stored[Event]]:
        async for record in self.store.read_log(after=after, pattern=pattern, batch_size=batch_size):
            yield self.codec.stored(record)

    # -- aggregates ------------------------------------------------------------------------

    async def load(
        self,
        cls: type[A],
        id: str,
        *,
        version: int | None = None,
        at: datetime | None = None,
        create: bool = False,
    ) -> A:
        """Rebuild an aggregate, as of now, of a ``version`` or of a time ``at``; with ``create``,
        one that has no events yet is a new ``cls(id)``."""
        return await self.repository.load(cls, id, version=version, at=at, create=create)

    async def save(self, aggregate: Aggregate) -> list[RecordedEvent]:
        """Save an aggregate's new events; ``ConcurrencyError`` if someone saved it meanwhile."""
        with sending([e.__event_topic__ for e in aggregate.pending]):
            async with self._audited():
                records = await self.repository.save(aggregate)
        self.notify()
        return records

    # -- projections -----------------------------------------------------------------------

    async def project(self, projection: Projection, *, batch_size: int = 500) -> int:
        """Bring a projection up to date with the log; returns how many events it handled."""
        return await run_projection(self.store, self.codec, projection, batch_size=batch_size)

    async def rebuild(self, projection: Projection) -> int:
        """Clear a projection and replay it from position 0."""
        await reset_projection(self.store, projection)
        return await self.project(projection)

    async def read_model(self, projection: Projection, key: str, type: type[T]) -> T | None:
        """One document of a projection, as last committed."""
        value = await self.store.get_document(projection.name, key)
        return None if value is None else msgspec.json.decode(value, type=type)

    async def verify(self, *, against: Path | None = None, record: Path | None = None) -> IntegrityReport:
        """Check every stream's hash chain and the storage itself; with ``against``, also that
        each stream head recorded in that file is still in its chain, unchanged; with
        ``record``, write what this verify saw to that file when it found nothing (see
        docs/security.md: keep the file where the database's writers cannot reach it)."""
        return await verify_store(self.store, against=against, record=record)

    # -- keys ----------------------------------------------------------------------------------

    async def rotate_keys(self) -> Rotation:
        """Rewrap every data key with the master key's current version (event data untouched)."""
        return await rotate_keys(self.store, self._keyring())

    async def shred_keys(self, scope: str | None = None, *, topic: str | None = None) -> int:
        """Destroy a scope's data keys (by default a scope is a stream), or with ``topic`` those
        of the topic's unkeyed publications: their events read as ``Erased`` from now on, here
        at once and in other processes within a minute."""
        return await shred_keys(self.store, self._keyring(), stored_scope(scope, topic))

    def _keyring(self) -> KeyRing:
        self.store  # noqa: B018 - raises the error that explains why
        if self.keys is None:
            raise ConfigurationError(f"App {self.name!r} has no encryption (no master key is configured)")
        return self.keys

    # -- publish and subscribe ---------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        ttl: timedelta | None = None,
        expires_at: datetime | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id: str | None = None,
    ) -> RecordedEvent:
        """Publish an event to every group whose pattern matches its topic.

        ``key`` orders it after earlier events of the same key (it is also the partition key and
        the stream); ``ttl`` or ``expires_at`` set its deadline, past which no handler gets it.
        An ``id`` of the caller's making makes publishing it again a no-op that returns the
        event first recorded.
        """
        lineage = Lineage(correlation_id, causation_id)
        publication = Publication(event, key, ttl, expires_at, id)
        with sending([event.__event_topic__]):
            async with self._audited():
                stream, envelope = publication_envelope(self.codec, publication, self.clock.now(), lineage)
            (record,) = await self.store.append(stream, [envelope])
        self.notify()
        return record

    async def publish_all(self, events: Sequence[tuple[Event, str | None]]) -> list[RecordedEvent]:
        """Publish several ``(event, key)`` at once, in one transaction (all or none)."""
        with sending([e.__event_topic__ for e, _ in events]):
            async with self._audited():
                prepared = publications_of(self.codec, events, self.clock.now())
            records = await append_publications(self.store, prepared)
        self.notify()
        return records

    def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        retry: Retry | None = None,
        max_age: timedelta | None = None,
        batch_size: int = 100,
        ordered: bool = False,
    ) -> Callable[[H], H]:
        """Register the decorated ``async def handler(event, ctx)`` for a consumer group.

        With a policy, ``AccessDenied`` unless the principal may subscribe to all of ``pattern``
        (the denial is recorded when the App opens)."""
        compiled = self._subscriptions.check(pattern, group)

        def register(handler: H) -> H:
            self._subscriptions.add(
                compiled, group, handler, retry=retry, max_age=max_age, batch_size=batch_size, ordered=ordered
            )
            return handler

        return register

    def add_saga(self, saga: Saga) -> None:
        """Run the saga's instances in this App: a consumer group of its own reads its starting
        events, the replies of its steps and its timeouts (see ``runtime/saga_engine.py``)."""
        self._subscriptions.add_saga(saga)

    async def record_denials(self) -> int:
        """Append the access denials not recorded yet as ``security.denied`` events (stream
        ``security-denied-<principal>``); returns how many. Until the App is open they wait."""
        if self.guard is None or self._store is None or not self.guard.pending:
            return 0
        recorded = await self.guard.record(self._store, self._audit_codec)
        if recorded:
            self.notify()
        return recorded

    @contextlib.asynccontextmanager
    async def _audited(self) -> AsyncIterator[None]:
        """Where the guard may deny: the denial is recorded before it reaches the caller."""
        try:
            yield
        except AccessDenied:
            await self.record_denials()
            raise

    @property
    def runs_relay(self) -> bool:
        """Whether ``running`` runs the relay that feeds the bus: in distributed mode, unless a
        policy is on and this App's principal is not marked ``relay = true``."""
        return self._bus is not None and (self.guard is None or self.guard.relay)

    def notify(self) -> None:
        """Wake this process's consumers: new events are in the log."""
        self.wakeups.notify()

    # -- running consumers -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(
        self, *, lease_ttl: float = 10.0, poll: float = 1.0, monitoring: float = 0
    ) -> AsyncIterator[App]:
        """Run every group's consumer in the background for the duration of the block; appends
        wake them at once (``poll``: an idle partition's fallback); ``monitoring``: ``monitor``."""
        await self.open()
        self.monitor = Monitor(self.services, bus=self._bus is not None, interval=monitoring)
        if not self.subscriptions and self._bus is None:  # nothing to run
            yield self
            return
        relay_from = self._raw.feed if self._raw is not None and self.runs_relay else None
        async with workers_running(
            self.services,
            list(self.subscriptions.values()),
            bus=self._bus,
            relay_from=relay_from,
            lease_ttl=lease_ttl,
            poll=poll,
            monitor=self.monitor if monitoring else None,
        ) as members:
            self._members += members  # nested blocks each add, and take away, their own
            try:
                yield self
            finally:
                self._members = [m for m in self._members if m not in members]

    async def run(self, *, lease_ttl: float = 10.0, poll: float = 1.0) -> None:
        """Run the consumers until SIGTERM or SIGINT; then finish the events in hand, release
        the leases and close."""
        with log_fields(app=self.name):
            async with self, self.running(lease_ttl=lease_ttl, poll=poll):
                await until_signalled()

    # -- dead letters --------------------------------------------------------------------------

    async def dead_letters(
        self,
        group: str | None = None,
        *,
        state: DeadLetterState | None = DeadLetterState.DEAD,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """The dead letters of a group (or of all groups) in ``state`` (None: every state), oldest
        first."""
        chosen = None if state is None else DeadLetterState.named(state)  # a plain string too
        return await self.groups.dead_letters(group, state=chosen, limit=limit)

    async def redrive(self, entries: Sequence[int]) -> int:
        """Hand dead letters back to the group that dead-lettered them (and to no other)."""
        changed = await self.groups.set_dead_letter_state(entries, DeadLetterState.REDRIVE)
        self.notify()
        return changed

    async def purge(self, entries: Sequence[int]) -> int:
        """Mark dead letters as dealt with; they stay on record, out of the queue."""
        return await self.groups.set_dead_letter_state(entries, DeadLetterState.PURGED)
