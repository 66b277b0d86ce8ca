"""Telemetry: OpenTelemetry spans and metrics at each step of an event's path, after the current
messaging semantic conventions, and the W3C trace context that envelopes carry between them.

- ``send <topic>`` (PRODUCER) where events are made (``App.publish``/``append``/``save``, a
  handler's unit of work at commit), into tidings' log (``messaging.system`` "tidings"); its
  context goes into each envelope's ``traceparent`` and ``tracestate``. The relay's publish to a
  bus is a ``send`` span of its own (``messaging.system`` "nats"), linked to each event's.
- ``process <topic>`` (CONSUMER) around each event a group handles: its parent is the producer's
  context (``trace_parent="producer"``, the default) or none (``"link"``: a trace of its own);
  either way it links to the producer's context.
- ``settle <topic>`` (CLIENT) for the commit of a batch, a retry and a dead letter.

Only the OpenTelemetry API is imported: without an SDK (no provider set) each step costs a check
of the global providers and nothing more. Trace context read back from the store or a bus may be
anyone's writing: a malformed one is dropped and counted (``tidings.trace_context.dropped``),
never followed nor stored again; the event itself is handled as ever.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Final, Generic, Literal, TypeVar

import msgspec
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.domain.trace_context import checked

#: What a consumer's ``process`` span descends from: the producer's span (its parent), or
#: nothing (a new trace, linked to the producer's span).
TraceParent = Literal["producer", "link"]
T = TypeVar("T")
#: ``messaging.system`` of tidings' embedded log (the store is the bus).
EMBEDDED: Final = "tidings"
#: The ``traceparent`` and ``tracestate`` to write into an envelope (``None`` for none).
TraceFields = tuple[str | None, str | None]
NO_TRACE: Final[TraceFields] = (None, None)

_NAME: Final = "tidings"
_tracer = trace.get_tracer(_NAME)
_meter = metrics.get_meter(_NAME)
# The conventions' advice for messaging durations, in seconds.
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_sent = _meter.create_counter(
    "messaging.client.sent.messages", "{message}", "Number of messages producer attempted to send"
)
_consumed = _meter.create_counter(
    "messaging.client.consumed.messages", "{message}", "Number of messages delivered to the handler"
)
_process_duration = _meter.create_histogram(
    "messaging.process.duration", "s", "Duration of processing operation",
    explicit_bucket_boundaries_advisory=_BUCKETS,
)  # fmt: skip
_operation_duration = _meter.create_histogram(
    "messaging.client.operation.duration", "s", "Duration of messaging operation (send, settle)",
    explicit_bucket_boundaries_advisory=_BUCKETS,
)  # fmt: skip
_dropped = _meter.create_counter(
    "tidings.trace_context.dropped", "{message}", "Malformed traceparent/tracestate dropped on reading"
)

# The API's stand-ins until an SDK sets a provider (and its explicit no-op ones). The API's
# proxy meter provider has no public name: every provider the API package itself defines is one
# of these (a provider of the SDK's, or anyone's, set before tidings was imported is not).
_NO_TRACER: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_API_METRICS: Final = "opentelemetry.metrics"


def bus_system(url: str) -> str:
    """``messaging.system`` of a bus by its URL: ``nats`` (``tls://`` is NATS too), ``kafka``."""
    scheme = url.partition("://")[0].lower()
    return "nats" if scheme in ("nats", "tls") else scheme


# Whether an SDK's provider is set, as last seen. The API's getters read the environment on every
# call (a few microseconds each): without an SDK, the check is made again at most once a
# second; once a provider is set, it stays (OpenTelemetry sets its global providers once).
_on = False
_checked_at = -1.0


def enabled() -> bool:
    """Whether anything records spans or metrics (an SDK's provider is set): if not, tidings
    skips its telemetry altogether. A provider set later is seen within a second (``refresh``)."""
    global _on, _checked_at
    if _on:
        return True
    now = time.monotonic()
    if now - _checked_at < 1.0:
        return False
    _checked_at = now
    _on = tracing() or metering()
    return _on


def refresh() -> None:
    """Look for providers again at the next step (one was set just now: a test's)."""
    global _checked_at
    _checked_at = -1.0


def tracing() -> bool:
    """Whether spans are recorded by anything: an SDK's provider is set."""
    return not isinstance(trace.get_tracer_provider(), _NO_TRACER)


def metering() -> bool:
    """Whether measurements go anywhere: an SDK's meter provider is set."""
    module = type(metrics.get_meter_provider()).__module__
    return module != _API_METRICS and not module.startswith(_API_METRICS + ".")


def fields_of(context: SpanContext) -> TraceFields:
    """W3C ``traceparent`` (version 00) and ``tracestate`` of a span context, if it is valid."""
    if not context.is_valid:
        return NO_TRACE
    parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    return parent, (context.trace_state.to_header() or None)


def current_fields() -> TraceFields:
    """The trace context of the current span, to carry in the events made in it."""
    return fields_of(trace.get_current_span().get_span_context())


def incoming(envelope: Envelope) -> TraceFields:
    """The trace context of an envelope read back, if well formed; a malformed one is dropped
    and counted (``domain/trace_context.py`` says what is well formed)."""
    if envelope.traceparent is None and envelope.tracestate is None:
        return NO_TRACE
    traceparent, tracestate, dropped = checked(envelope.traceparent, envelope.tracestate)
    if dropped:
        _dropped.add(1, {"messaging.destination.name": envelope.topic})
    return traceparent, tracestate


def scrubbed(record: RecordedEvent) -> RecordedEvent:
    """The record with a malformed trace context dropped (and counted), so that tidings never
    passes one on; the record itself when there is nothing to drop."""
    envelope = record.envelope
    fields = incoming(envelope)
    if fields == (envelope.traceparent, envelope.tracestate):
        return record
    traceparent, tracestate = fields
    clean = msgspec.structs.replace(envelope, traceparent=traceparent, tracestate=tracestate)
    return msgspec.structs.replace(record, envelope=clean)


def span_context_of(fields: TraceFields) -> SpanContext | None:
    """The remote span context that well-formed trace fields name."""
    traceparent, tracestate = fields
    if traceparent is None:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
        trace_state=state,
    )


def _context_of(parent: SpanContext | None) -> Context:
    """A context whose span is ``parent``, or none at all (a new trace): never whatever span a
    worker's task inherited when it was started."""
    return trace.set_span_in_context(trace.NonRecordingSpan(parent) if parent else trace.INVALID_SPAN)


def _name(operation: str, topics: Iterable[str]) -> tuple[str, str | None]:
    """The conventions' span name, ``{operation} {destination}``, and the destination: the topic
    when there is one, else the operation alone (a batch of several topics)."""
    distinct = set(topics)
    if len(distinct) == 1:
        (topic,) = distinct
        return f"{operation} {topic}", topic
    return operation, None


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: its class, qualified by its module unless a builtin."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class _Nothing(Generic[T]):
    """What a span's context manager is without an SDK: a block that gives ``value``. A class,
    not a generator: the consumer enters a few per event, and a generator costs ten calls."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, *exc_info: object) -> None:
        return None


_NOTHING: Final = _Nothing(None)
_NO_TRACE: Final = _Nothing(NO_TRACE)


def sending(
    topics: Sequence[str],
    *,
    parent: TraceFields | None = None,
    system: str = EMBEDDED,
    attributes: dict[str, AttributeValue] | None = None,
    links: Sequence[TraceFields] = (),
) -> contextlib.AbstractContextManager[TraceFields]:
    """A ``send`` span (PRODUCER) for events of ``topics`` made in it, as the current span; gives
    the trace context to write into their envelopes. ``parent``: the context they are made in
    (a handler's ``process`` span), else the current one. Without an SDK: no span; the envelopes
    carry the parent's context, if any (a caller's span context extracted from an HTTP request
    by a propagator alone, say). A handler's events carry none then: its event was not traced."""
    if enabled():
        return _sending(topics, parent, system, attributes, links)
    return _Nothing(parent if parent is not None else current_fields())


@contextlib.contextmanager
def _sending(
    topics: Sequence[str],
    parent: TraceFields | None,
    system: str,
    attributes: dict[str, AttributeValue] | None,
    links: Sequence[TraceFields],
) -> Iterator[TraceFields]:
    if not tracing():
        yield parent if parent is not None else current_fields()
        if metering():
            _sent.add(len(topics), _metric_attributes("send", system, _name("send", topics)[1]))
        return
    name, destination = _name("send", topics)
    attrs = _metric_attributes("send", system, destination)
    attrs["messaging.operation.type"] = "send"
    if len(topics) > 1:
        attrs["messaging.batch.message_count"] = len(topics)
    if attributes:
        attrs.update(attributes)
    context = None if parent is None else _context_of(span_context_of(parent))
    started = time.perf_counter()
    error: str | None = None
    linked = links_to(links) if links else None
    with _tracer.start_as_current_span(name, context, SpanKind.PRODUCER, attrs, linked) as span:
        try:
            yield fields_of(span.get_span_context())
        except BaseException as exc:
            error = error_type(exc)
            span.set_attribute("error.type", error)
            raise
        finally:
            _measure_operation("send", system, destination, started, error, len(topics))


def _metric_attributes(
    operation: str, system: str, destination: str | None, group: str | None = None, pattern: str | None = None
) -> dict[str, AttributeValue]:
    """Metric attributes of bounded cardinality: topics are declared event types, patterns and
    groups are the App's; never an id."""
    attrs: dict[str, AttributeValue] = {"messaging.operation.name": operation, "messaging.system": system}
    if destination is not None:
        attrs["messaging.destination.name"] = destination
    if group is not None:
        attrs["messaging.consumer.group.name"] = group
    if pattern is not None:
        attrs["messaging.destination.template"] = pattern
    return attrs


def _measure_operation(
    operation: str, system: str, destination: str | None, started: float, error: str | None, sent: int = 0
) -> None:
    if not metering():
        return
    attrs = _metric_attributes(operation, system, destination)
    if error is not None:
        attrs["error.type"] = error
    _operation_duration.record(time.perf_counter() - started, attrs)
    if sent:
        _sent.add(sent, attrs)


def links_to(contexts: Iterable[TraceFields]) -> list[Link]:
    """Links to the spans that well-formed trace fields name."""
    return [Link(found) for fields in contexts if (found := span_context_of(fields)) is not None]


def record_error(error: str) -> None:
    """Mark the current span failed, of ``error.type`` ``error`` (a dead letter's reason)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("error.type", error)
        span.set_status(trace.StatusCode.ERROR)


def recording_span_ids() -> tuple[str, str] | None:
    """Trace id and span id (hex, as W3C writes them) of the current span, if it is recorded."""
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def set_attributes(attributes: dict[str, AttributeValue]) -> None:
    """Add attributes to the current span (a saga's name and step), if it is recorded."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def processing(
    record: RecordedEvent,
    *,
    group: str,
    pattern: str,
    system: str,
    parent: TraceParent,
    partition: int | None,
    redriven: bool = False,
) -> contextlib.AbstractContextManager[TraceFields]:
    """A ``process`` span (CONSUMER) around one event's way through a group, as the current span;
    gives the trace context of the events its handler makes. Its parent is the producer's
    context (``parent="producer"``) or none (``"link"``), and it always links to it."""
    if enabled():
        return _processing(record, group, pattern, system, parent, partition, redriven)
    return _NO_TRACE


@contextlib.contextmanager
def _processing(
    record: RecordedEvent,
    group: str,
    pattern: str,
    system: str,
    parent: TraceParent,
    partition: int | None,
    redriven: bool,
) -> Iterator[TraceFields]:
    metered = metering()
    if not tracing():
        if not metered:
            yield NO_TRACE
            return
        started = time.perf_counter()
        error: str | None = None
        try:
            yield NO_TRACE
        except BaseException as exc:
            error = error_type(exc)
            raise
        finally:
            _measure_process(system, group, pattern, started, error)
        return
    envelope = record.envelope
    producer = span_context_of(incoming(envelope))
    links = [Link(producer)] if producer is not None else None
    context = _context_of(producer if parent == "producer" else None)
    attrs = _metric_attributes("process", system, envelope.topic, group, pattern)
    attrs["messaging.operation.type"] = "process"
    attrs["messaging.message.id"] = envelope.id
    attrs["messaging.message.conversation_id"] = envelope.correlationid or envelope.id
    attrs["tidings.stream"] = record.stream
    attrs["tidings.version"] = record.version
    attrs["tidings.position"] = record.position
    if partition is not None:
        attrs["tidings.partition"] = partition
    if redriven:
        attrs["tidings.redrive"] = True
    started = time.perf_counter()
    error = None
    with _tracer.start_as_current_span(
        f"process {envelope.topic}", context, SpanKind.CONSUMER, attrs, links
    ) as span:
        try:
            yield fields_of(span.get_span_context())
        except BaseException as exc:
            error = error_type(exc)
            span.set_attribute("error.type", error)
            raise
        finally:
            if metered:
                _measure_process(system, group, pattern, started, error)


def consumed(count: int, *, group: str, pattern: str, system: str) -> None:
    """Count the events a group's member read and hands to its handler: once per batch, not
    per event (each measurement costs the SDK an attribute hash and a lookup)."""
    if count and enabled() and metering():
        _consumed.add(count, _metric_attributes("process", system, None, group, pattern))


def _measure_process(system: str, group: str, pattern: str, started: float, error: str | None) -> None:
    attrs = _metric_attributes("process", system, None, group, pattern)
    if error is not None:
        attrs["error.type"] = error
    _process_duration.record(time.perf_counter() - started, attrs)


Settlement = Literal["commit", "retry", "dead_letter"]


def settling(
    topics: Sequence[str],
    *,
    group: str,
    system: str,
    settlement: Settlement,
    links: Sequence[TraceFields] = (),
    error: str | None = None,
    attributes: dict[str, AttributeValue] | None = None,
    root: bool = False,
) -> contextlib.AbstractContextManager[None]:
    """A ``settle`` span (CLIENT) for a group's commit of a batch, a retry (``error``: the
    failure's type) or a dead letter (``error``: its reason), as a child of the current span,
    linked to the events' ``process`` spans (``links``); ``root``: a trace of its own."""
    if not enabled():
        return _NOTHING
    traced, metered = tracing(), metering()
    return _settling(topics, group, system, settlement, links, error, attributes, root, traced, metered)


@contextlib.contextmanager
def _settling(
    topics: Sequence[str],
    group: str,
    system: str,
    settlement: Settlement,
    links: Sequence[TraceFields],
    error: str | None,
    attributes: dict[str, AttributeValue] | None,
    root: bool,
    traced: bool,
    metered: bool,
) -> Iterator[None]:
    name, destination = _name("settle", topics)
    started = time.perf_counter()
    failure = error
    try:
        if not traced:
            yield
            return
        attrs = _metric_attributes("settle", system, destination, group)
        attrs["messaging.operation.type"] = "settle"
        attrs["tidings.settlement"] = settlement
        if len(topics) > 1:
            attrs["messaging.batch.message_count"] = len(topics)
        if error is not None:
            attrs["error.type"] = error
        if attributes:
            attrs.update(attributes)
        context = _context_of(None) if root else None
        with _tracer.start_as_current_span(name, context, SpanKind.CLIENT, attrs, links_to(links)) as span:
            if error is not None:
                span.set_status(trace.StatusCode.ERROR)
            try:
                yield
            except BaseException as exc:
                failure = error_type(exc)
                span.set_attribute("error.type", failure)
                raise
    finally:
        if metered:
            _measure_operation("settle", system, destination, started, failure)
