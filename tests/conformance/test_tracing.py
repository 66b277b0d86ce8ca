"""Trace context and spans end to end, recorded by the OpenTelemetry SDK's in-memory exporter:
on the SQLite log and on PostgreSQL + JetStream (the relay between them)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from tidings.app import App
from tidings.domain.envelope import from_structured
from tidings.runtime.context import Context
from tidings.runtime.retries import Retry
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.sagas import OrderPlaced, Shop, fulfilment
from tidings.testing.eventually import eventually
from tidings.testing.telemetry import Recording, TracedA, TracedB, TracedC, recording

RUN = {"lease_ttl": 2.0, "poll": 0.2}
FAST = Retry(attempts=2, backoff=0.01, max_backoff=0.02)


@pytest.fixture(params=("sqlite", "nats"))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def recorded() -> Iterator[Recording]:
    found = recording()
    found.spans.clear()
    found.on(True)
    yield found
    found.on(False)
    found.spans.clear()


def _system(backend: str) -> str:
    return "nats" if backend == "nats" else "tidings"


def _in_trace(spans: list[ReadableSpan], trace_id: int) -> dict[str, ReadableSpan]:
    """The spans of a trace by name (each name once in these tests)."""
    found = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
    return {span.name: span for span in found}


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def _linked(span: ReadableSpan) -> set[int]:
    return {link.context.span_id for link in span.links}


def _named(recorded: Recording, name: str) -> list[ReadableSpan]:
    """The spans named ``name``, but the relay's (its publish to NATS)."""
    spans = recorded.spans.get_finished_spans()
    return [s for s in spans if s.name == name and not _relayed(s)]


def _relayed(span: ReadableSpan) -> bool:
    return span.kind is SpanKind.PRODUCER and (span.attributes or {})["messaging.system"] == "nats"


async def test_a_chain_of_handlers_is_one_trace(store_url: str, recorded: Recording, backend: str) -> None:
    """A -> B (published through the unit of work) -> C (published at once): one trace whose
    send and process spans alternate, each process a child of its send and linked to it."""
    app = App("tracing", store=store_url)

    @app.subscribe("tracing.chain.a", group="on-a")
    async def on_a(event: TracedA, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.publish(TracedB(n=event.n))

    @app.subscribe("tracing.chain.b", group="on-b")
    async def on_b(event: TracedB, ctx: Context) -> None:
        await ctx.publish(TracedC(n=event.n))

    @app.subscribe("tracing.chain.c", group="on-c")
    async def on_c(event: TracedC, ctx: Context) -> None:
        pass

    tracer = trace.get_tracer("test")
    async with app, app.running(**RUN):
        with tracer.start_as_current_span("caller") as caller:
            published = await app.publish(TracedA(n=1))
        await eventually(lambda: bool(_named(recorded, "process tracing.chain.c")), within=20)
    trace_id = caller.get_span_context().trace_id
    spans = _in_trace(list(recorded.spans.get_finished_spans()), trace_id)
    chain = ["send tracing.chain.a", "process tracing.chain.a", "send tracing.chain.b"]
    chain += ["process tracing.chain.b", "send tracing.chain.c", "process tracing.chain.c"]
    assert set(chain) <= set(spans), sorted(spans)
    parent = spans["caller"]
    for name in chain:
        span = spans[name]
        assert _parent(span) == _id(parent), name
        if name.startswith("process"):
            assert span.kind is SpanKind.CONSUMER
            assert _linked(span) == {_id(parent)}  # and linked to the producer
        else:
            assert span.kind is SpanKind.PRODUCER
        parent = span
    process_a = spans["process tracing.chain.a"].attributes or {}
    assert process_a["messaging.system"] == _system(backend)
    assert process_a["messaging.operation.type"] == "process"
    assert process_a["messaging.destination.name"] == "tracing.chain.a"
    assert process_a["messaging.destination.template"] == "tracing.chain.a"
    assert process_a["messaging.consumer.group.name"] == "on-a"
    assert process_a["messaging.message.id"] == published.envelope.id
    assert process_a["messaging.message.conversation_id"] == published.envelope.id
    send_a = spans["send tracing.chain.a"]
    assert (send_a.attributes or {})["messaging.operation.type"] == "send"
    # The envelope carries the send span's context, as W3C traceparent.
    flags = send_a.context.trace_flags if send_a.context is not None else None
    assert published.envelope.traceparent == f"00-{trace_id:032x}-{_id(send_a):016x}-{flags:02x}"
    # Each group's commit is a settle span (a trace of its own), linked to the process span.
    settles = _named(recorded, "settle tracing.chain.a")
    assert any(_id(spans["process tracing.chain.a"]) in _linked(s) for s in settles)
    assert all(s.kind is SpanKind.CLIENT for s in settles)
    if backend == "nats":
        # The relay's publish: a send span of its own, on NATS, linked to each event it carried.
        relay = [s for s in recorded.spans.get_finished_spans() if _relayed(s)]
        assert any(_id(send_a) in _linked(s) and s.parent is None for s in relay)
        assert (send_a.attributes or {})["messaging.system"] == "tidings"  # into the store's log
    sent = recorded.points("messaging.client.sent.messages")
    assert any(a.get("messaging.destination.name") == "tracing.chain.b" for a, _ in sent)
    consumed = recorded.points("messaging.client.consumed.messages")
    assert any(a.get("messaging.consumer.group.name") == "on-c" for a, _ in consumed)
    durations = recorded.points("messaging.process.duration")
    assert any(a.get("messaging.destination.template") == "tracing.chain.b" and n >= 1 for a, n in durations)
    assert recorded.points("messaging.client.operation.duration")


async def test_link_mode_starts_a_trace_of_its_own(store_url: str, recorded: Recording) -> None:
    app = App("tracing", store=store_url, trace_parent="link")
    handled = asyncio.Event()

    @app.subscribe("tracing.chain.a", group="linked")
    async def on_a(event: TracedA, ctx: Context) -> None:
        handled.set()

    async with app, app.running(**RUN):
        published = await app.publish(TracedA(n=2))
        await eventually(lambda: bool(_named(recorded, "process tracing.chain.a")), within=20)
    (send,) = _named(recorded, "send tracing.chain.a")
    (process,) = _named(recorded, "process tracing.chain.a")
    assert process.parent is None and send.context is not None and process.context is not None
    assert process.context.trace_id != send.context.trace_id
    assert _linked(process) == {_id(send)}
    assert published.envelope.traceparent is not None


async def test_retries_and_dead_letters_are_settle_spans_and_a_redrive_links_back(
    store_url: str, recorded: Recording
) -> None:
    app = App("tracing", store=store_url)
    failing = {"times": 3}  # the first two runs fail, of a budget of two: a dead letter

    @app.subscribe("tracing.chain.a", group="flaky", retry=FAST)
    async def flaky(event: TracedA, ctx: Context) -> None:
        if failing["times"] > 0:
            failing["times"] -= 1
            raise RuntimeError("not yet")

    async with app, app.running(**RUN):
        published = await app.publish(TracedA(n=3))

        async def dead_lettered() -> bool:
            return bool(await app.dead_letters("flaky"))

        await eventually(dead_lettered, within=20)
        (letter,) = await app.dead_letters("flaky")
        failing["times"] = 0
        await app.redrive([letter.id])
        await eventually(lambda: len(_named(recorded, "process tracing.chain.a")) == 2, within=20)
    (send,) = _named(recorded, "send tracing.chain.a")
    first, redriven = sorted(_named(recorded, "process tracing.chain.a"), key=lambda s: s.start_time or 0)
    settles = {
        (s.attributes or {})["tidings.settlement"]: s for s in _named(recorded, "settle tracing.chain.a")
    }
    retry, dead = settles["retry"], settles["dead_letter"]
    assert (retry.attributes or {})["error.type"] == "RuntimeError"
    assert (dead.attributes or {})["error.type"] == "failed"
    assert (dead.attributes or {})["tidings.dead_letter.reason"] == "failed"
    assert _parent(retry) == _parent(dead) == _id(first)  # inside the event's process span
    assert (first.attributes or {})["error.type"] == "failed"
    # The redrive runs in the original event's trace, linked to its send span.
    assert (redriven.attributes or {})["tidings.redrive"] is True
    assert _linked(redriven) == {_id(send)} and _parent(redriven) == _id(send)
    assert published.envelope.traceparent is not None


async def test_a_sagas_commands_and_compensations_are_in_its_trace(
    store_url: str, recorded: Recording
) -> None:
    name, order = f"fulfil-{uuid.uuid4().hex[:8]}", f"order-{uuid.uuid4().hex[:8]}"
    app = App("shop", store=store_url)
    Shop(app)
    app.add_saga(fulfilment(name))
    tracer = trace.get_tracer("test")
    async with app, app.running(**RUN):
        with tracer.start_as_current_span("order") as root:
            await app.publish(OrderPlaced(order_id=order, amount=40, trouble="decline"), key=order)
        await eventually(lambda: bool(_named(recorded, "process conformance.stock.release")), within=20)
    trace_id = root.get_span_context().trace_id
    names = set(_in_trace(list(recorded.spans.get_finished_spans()), trace_id))
    # The command of each step, its reply, and the compensation of the step that succeeded, each
    # sent (a saga's command goes with its instance's events: a batch, a span named ``send``).
    assert {"send conformance.order.placed", "send"} <= names
    for topic in ("stock.reserve", "stock.reserved", "payment.charge", "payment.declined", "stock.release"):
        assert f"process conformance.{topic}" in names, topic
    sagas = [
        s.attributes or {}
        for s in recorded.spans.get_finished_spans()
        if (s.attributes or {}).get("tidings.saga.name") == name
    ]
    assert {a["tidings.saga.step"] for a in sagas} >= {"reserve", "charge"}


async def test_a_malformed_traceparent_is_dropped_and_counted(
    store_url: str, recorded: Recording, backend: str
) -> None:
    """Written raw into the store (behind tidings' back): the event is handled all the same, in
    a trace of its own, and the drop is counted; a dead letter of it keeps none."""
    app = App("tracing", store=store_url)
    seen: list[str | None] = []

    @app.subscribe("tracing.chain.a", group="tolerant")
    async def tolerant(event: TracedA, ctx: Context) -> None:
        seen.append(ctx.envelope.traceparent)

    @app.subscribe("tracing.chain.a", group="refusing", retry=Retry(attempts=1))
    async def refusing(event: TracedA, ctx: Context) -> None:
        raise RuntimeError("refused")

    def dropped() -> float:
        return sum(v for _, v in recorded.points("tidings.trace_context.dropped"))

    before = dropped()
    async with app, app.running(**RUN):
        bad = "00-0af7651916cd43dd8448eb211c80319c-00000000000000000-01"  # a parent-id too long
        envelope = app.codec.encode(TracedA(n=4), subject="raw", traceparent=bad, tracestate="k=v")
        await app.store.append(f"raw-{uuid.uuid4().hex[:8]}", [envelope])
        app.notify()
        await eventually(lambda: bool(seen), within=20)

        async def dead_lettered() -> bool:
            return bool(await app.dead_letters("refusing"))

        await eventually(dead_lettered, within=20)
        await eventually(lambda: len(_named(recorded, "process tracing.chain.a")) == 2, within=20)
        (letter,) = await app.dead_letters("refusing")
    assert letter.envelope is not None
    assert from_structured(letter.envelope).traceparent is None
    for process in _named(recorded, "process tracing.chain.a"):
        assert process.parent is None and not process.links
    assert dropped() >= before + 1
    if backend == "nats":
        assert seen == [None]  # the relay did not pass it on


async def test_a_timer_fires_in_the_trace_of_the_handler_that_set_it(
    store_url: str, recorded: Recording
) -> None:
    """A timer's envelope is made where it is set: the event it fires is processed as a child
    of the send span of the handler that scheduled it."""
    clock = ManualClock()
    app = App("tracing", store=store_url, clock=clock)
    fired: list[int] = []

    @app.subscribe("tracing.chain.a", group="scheduler")
    async def schedule(event: TracedA, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.schedule(TracedB(n=event.n), at=clock.now() + timedelta(minutes=5), id=f"t-{uuid.uuid4()}")

    @app.subscribe("tracing.chain.b", group="alarm")
    async def ring(event: TracedB, ctx: Context) -> None:
        fired.append(event.n)

    async with app, app.running(**RUN):
        with trace.get_tracer("test").start_as_current_span("caller") as root:
            await app.publish(TracedA(n=5))

        async def scheduled() -> bool:
            return await app.store.next_timer_due() is not None

        await eventually(scheduled, within=20)
        clock.advance(timedelta(minutes=5))
        await eventually(lambda: bool(_named(recorded, "process tracing.chain.b")), within=20)
    spans = _in_trace(list(recorded.spans.get_finished_spans()), root.get_span_context().trace_id)
    assert fired == [5]
    assert _parent(spans["send tracing.chain.b"]) == _id(spans["process tracing.chain.a"])
    assert _parent(spans["process tracing.chain.b"]) == _id(spans["send tracing.chain.b"])
