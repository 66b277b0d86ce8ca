"""The App: one service's entry point to its store, codec, aggregates and projections."""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, TypeVar

import msgspec

from tidings.adapters.registry import open_store
from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import DEFAULT_MAX_SIZE, RecordedEvent, Stored
from tidings.domain.events import Event, EventRegistry, default_registry
from tidings.domain.integrity import IntegrityReport
from tidings.errors import ConfigurationError
from tidings.ports import ANY, EventStore, ExpectedVersion
from tidings.runtime.codec import Codec
from tidings.runtime.projection import Projection, reset_projection, run_projection
from tidings.runtime.repository import Repository

A = TypeVar("A", bound=Aggregate)
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
    """

    def __init__(
        self,
        name: str,
        *,
        store: str | None = None,
        registry: EventRegistry = default_registry,
        max_event_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if not name:
            raise ConfigurationError("an App needs a name (it becomes the events' source)")
        self.name = name
        self.store_url = os.environ.get("TIDINGS_STORE") or store or DEFAULT_STORE
        self.codec = Codec(source=name, registry=registry, max_size=max_event_size)
        self.state = AppState.CREATED
        self._store: EventStore | None = None
        self._repository: Repository | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> App:
        if self.state is AppState.OPEN:
            return self
        if self.state is AppState.CLOSED:
            raise ConfigurationError(f"App {self.name!r} is closed; create a new App")
        store = open_store(self.store_url)
        await store.open()
        self._store = store
        self._repository = Repository(store, self.codec)
        self.state = AppState.OPEN
        return self

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        self._store = None
        self.state = AppState.CLOSED

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise ConfigurationError(
                f"App {self.name!r} is {self.state.value}; use `async with app:` or await app.open()"
            )
        return self._store

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
        batch = [events] if isinstance(events, Event) else list(events)
        now = datetime.now(UTC)  # the events of one append happen, and commit, together
        envelopes = [
            self.codec.encode(
                event, subject=stream, time=now, correlation_id=correlation_id, causation_id=causation_id
            )
            for event in batch
        ]
        return await self.store.append(stream, envelopes, expected_version=expected_version)

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
            stream,
            from_version=from_version,
            to_version=to_version,
            at=at,
            backwards=backwards,
            limit=limit,
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
    ) -> A:
        """Rebuild an aggregate, as of now, of a ``version`` or of a time ``at``."""
        return await self.repository.load(cls, id, version=version, at=at)

    async def save(self, aggregate: Aggregate) -> list[RecordedEvent]:
        """Save an aggregate's new events; ``ConcurrencyError`` if someone saved it meanwhile."""
        return await self.repository.save(aggregate)

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

    async def verify(self) -> IntegrityReport:
        return await self.store.verify()
