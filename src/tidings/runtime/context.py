"""What a handler gets beside its event: the ``Context`` (envelope, attempt, log, publish, and
the one unit of work whose effects commit with the event's inbox record)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from tidings.domain.envelope import RecordedEvent
from tidings.domain.events import Event
from tidings.domain.ids import publication_id
from tidings.runtime.publishing import Lineage, trial_of
from tidings.runtime.services import Services
from tidings.runtime.telemetry import NO_TRACE, TraceFields
from tidings.runtime.unit_of_work import UnitOfWork

log = logging.getLogger("tidings.consumer")

#: A group's handler: called with the decoded event and its ``Context``.
Handler = Callable[[Any, "Context"], Awaitable[None]]


class Context:
    """What a handler knows: the envelope, where it is stored, the attempt, and its unit of work."""

    def __init__(
        self,
        services: Services,
        group: str,
        record: RecordedEvent,
        attempt: int,
        new_unit: Callable[[], UnitOfWork] | None = None,
        trace: TraceFields = NO_TRACE,
    ) -> None:
        self._services = services
        self.group = group
        self.record = record
        self.envelope = record.envelope
        self.attempt = attempt
        self.correlation_id = record.envelope.correlationid or record.envelope.id
        #: The trace context of the handler's ``process`` span (``runtime/telemetry.py``): the
        #: parent of the ``send`` span of the events it makes, which are made at commit.
        self.trace = trace
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self._unit: UnitOfWork | None = None
        self._publications = 0  # ids drawn by this run's publications (see ``publication_id``)
        self._new_unit = new_unit or (
            lambda: UnitOfWork(
                loader=services.load,
                document_reader=services.store.get_document,
                guard=services.codec.guard,
                trial=trial_of(services.codec, services.clock),
            )
        )

    @property
    def unit(self) -> UnitOfWork | None:
        """The unit of work the handler opened, if it opened one: what the settling commits
        with the event's inbox record (``runtime/settling.py``)."""
        return self._unit

    @property
    def lineage(self) -> Lineage:
        """Where the events a handler makes come from: the handled event, in its correlation."""
        return Lineage(self.correlation_id, self.envelope.id, self.trace)

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the fields of runtime/log_context.py, whoever formats
        them (made on first use: most handlers never log, and every event makes a context)."""
        if self._log is None:
            fields = {"app": self._services.name, "group": self.group, "event_id": self.envelope.id}
            self._log = logging.LoggerAdapter(log, {**fields, "correlation_id": self.correlation_id})
        return self._log

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """Effects made through it commit once, with the inbox record and the checkpoint."""
        if self._unit is not None:
            raise RuntimeError("a handler has one unit of work")
        self._unit = self._new_unit()
        self._unit.next_id = self._publication_id
        yield self._unit

    def _publication_id(self) -> str:
        """The id of this run's next publication without an id of the caller's making.

        Derived from the handled event, the group and a count of the run's publications
        (``ctx.publish`` and the unit of work's ``publish`` count together), never drawn at
        random: a handler run again (a retry, a redelivery after a crash before the commit, a
        redrive) makes the same publications in the same order with the same ids, and the
        store keeps the first of each. Without that, ``ctx.publish`` (which appends at once)
        published again on every run. A handler whose publications depend on what changes
        between runs (the clock, a random draw, a read) may make other ones the next time:
        their ids follow the order the run makes them in, whatever they hold.
        """
        sequence = self._publications
        self._publications += 1
        return publication_id(self.envelope.id, self.envelope.time, self.group, sequence)

    async def publish(
        self,
        event: Event,
        *,
        key: str | None = None,
        ttl: timedelta | None = None,
        expires_at: datetime | None = None,
        id: str | None = None,
    ) -> None:
        """Publish now (outside any unit of work), carrying this event's correlation. Its id is
        ``id``, else derived from the handled event (``_publication_id``), so that a handler run
        again publishes it once."""
        await self._services.publish(
            event,
            key=key,
            ttl=ttl,
            expires_at=expires_at,
            correlation_id=self.correlation_id,
            causation_id=self.envelope.id,
            id=self._publication_id() if id is None else id,
        )
