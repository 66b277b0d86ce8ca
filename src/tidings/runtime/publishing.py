"""Publishing: events become envelopes with their routing (key, deadline) and their lineage
(correlation and causation), and are appended to the log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.domain.events import Event
from tidings.domain.ids import uuid7
from tidings.domain.names import check_name
from tidings.errors import InvalidArgument
from tidings.ports import Bus, EventStore
from tidings.runtime.codec import Codec
from tidings.runtime.deadlines import Clock
from tidings.runtime.telemetry import TraceFields, current_fields
from tidings.runtime.unit_of_work import Publication

log = logging.getLogger("tidings.app")


@dataclass(frozen=True, slots=True)
class Lineage:
    """Where new events come from: the correlation they join, the event that caused them, and
    the trace context of the span they are sent in (``None``: the current span's, read when
    they are made; a handler's events are made at commit, after its span, so it carries its own)."""

    correlation_id: str | None = None
    causation_id: str | None = None
    trace: TraceFields | None = None

    def trace_fields(self) -> TraceFields:
        return self.trace if self.trace is not None else current_fields()


def deadline(now: datetime, ttl: timedelta | None, expires_at: datetime | None) -> datetime | None:
    if ttl is not None and expires_at is not None:
        raise InvalidArgument("give ttl or expires_at, not both")
    if ttl is not None:
        if ttl <= timedelta(0):
            raise InvalidArgument(f"ttl must be positive, got {ttl}")
        return now + ttl
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidArgument("expires_at needs a time zone")
    return expires_at


def publication_envelope(
    codec: Codec, publication: Publication, now: datetime, lineage: Lineage
) -> tuple[str, Envelope]:
    """The stream and envelope of a published event.

    With a key, the event joins the key's stream, so events of one key keep their order; without
    one, it is a stream of its own (its id), spread over the partitions. An event too large to be
    published whole (sealed, with encryption on) is refused here, for publications and timers alike.
    """
    event_id = publication.id or uuid7()
    if publication.key is not None:
        check_name("key", publication.key)
    stream = publication.key or event_id
    traceparent, tracestate = lineage.trace_fields()
    envelope = codec.encode(
        publication.event,
        event_id=event_id,
        subject=stream,
        time=now,
        correlation_id=lineage.correlation_id,
        causation_id=lineage.causation_id,
        expires_at=deadline(now, publication.ttl, publication.expires_at),
        partition_key=publication.key,
        traceparent=traceparent,
        tracestate=tracestate,
    )
    codec.check_fits(stream, envelope)
    return stream, envelope


def publications_of(
    codec: Codec, events: Sequence[tuple[Event, str | None]], now: datetime
) -> list[tuple[str, Envelope]]:
    """The streams and envelopes of ``(event, key)`` published together (``App.publish_all``)."""
    return [publication_envelope(codec, Publication(event, key), now, Lineage()) for event, key in events]


async def append_publications(store: EventStore, prepared: list[tuple[str, Envelope]]) -> list[RecordedEvent]:
    """Append publications (``publications_of``) in one transaction: all or none."""
    records: list[RecordedEvent] = []
    async with store.transaction() as tx:
        for stream, envelope in prepared:
            records += await tx.append(stream, [envelope])
    return records


def stream_envelopes(
    codec: Codec, stream: str, events: Sequence[Event], now: datetime, lineage: Lineage
) -> list[Envelope]:
    """The envelopes of events appended together to one stream: one time (they happen, and
    commit, together), one lineage, each refused here if it could not be published whole."""
    traceparent, tracestate = lineage.trace_fields()
    envelopes = [
        codec.encode(
            event,
            subject=stream,
            time=now,
            correlation_id=lineage.correlation_id,
            causation_id=lineage.causation_id,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        for event in events
    ]
    for envelope in envelopes:
        codec.check_fits(stream, envelope)
    return envelopes


def aggregate_envelopes(
    codec: Codec, aggregate: Aggregate, now: datetime, lineage: Lineage
) -> list[Envelope]:
    """The envelopes of an aggregate's new events, however it is saved (``App.save`` or a
    handler's unit of work): the one place they are made."""
    return stream_envelopes(codec, aggregate.stream, aggregate.pending, now, lineage)


def publisher_of(
    codec: Codec, clock: Clock, lineage: Lineage
) -> Callable[[Publication], tuple[str, Envelope]]:
    """How a handler's publications become envelopes: in its ``lineage`` (caused by the event in
    hand, in its correlation), all at one time."""
    now = clock.now()
    return lambda publication: publication_envelope(codec, publication, now, lineage)


def trial_of(codec: Codec, clock: Clock) -> Callable[[Publication], object]:
    """How a unit of work checks a timer where it is set: its envelope is made as at commit (the
    lineage, which changes no size, aside), so that one that could never fire is refused at once."""
    return lambda publication: publication_envelope(codec, publication, clock.now(), Lineage())


def aggregate_envelopes_of(
    codec: Codec, clock: Clock, lineage: Lineage
) -> Callable[[Aggregate], list[Envelope]]:
    """How the new events of aggregates that a handler saves become envelopes: in its
    ``lineage``, all at one time."""
    now = clock.now()
    return lambda aggregate: aggregate_envelopes(codec, aggregate, now, lineage)


def say_bus_limit(app: str, codec: Codec, bus: Bus) -> None:
    """Say when an App opens if its bus, not ``max_event_size``, limits what it may publish: the
    server's largest message less an event's headers (measured on a small event; one with longer
    names has a little less room). Each event is measured where it is made (``check_fits``)."""
    sample = Envelope(uuid7(), app, "event", "event", datetime.now(UTC), b"", "stream")
    room = bus.room_for("stream", sample)
    if room < codec.max_size:
        log.warning(
            "App %s: the bus at %s carries about %s bytes of event data (its max_payload less "
            "the headers), less than max_event_size (%s bytes): larger events are refused at publish",
            app,
            bus.url,
            f"{room:,}",
            f"{codec.max_size:,}",
            extra={"app": app},
        )
