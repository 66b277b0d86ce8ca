"""Access control, asserted on every backend through the App API: a permission matrix of
principals x topics x publish and subscribe (patterns with ``*`` and ``>``). Allowed cells work
(events are stored, groups receive them); denied cells raise ``AccessDenied``, and each denial is
on record as a ``security.denied`` event. Every other way into the log is checked too: appends,
aggregate saves, publish_all, handlers' units of work, timers and saga commands.

The matrix helpers take ``bus_of(principal)``, the bus URL an App of that principal connects with
(``None``: the store's own log), so that the same cells run over NATS with each principal's
credentials (``tests/conformance/test_access_nats.py``).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta

import pytest

from tidings.app import App
from tidings.domain.aggregate import Aggregate
from tidings.domain.events import Event
from tidings.domain.policy import Policy, SecurityDenied
from tidings.domain.saga import Saga
from tidings.domain.topics import compile_pattern
from tidings.errors import AccessDenied
from tidings.runtime.access import AUDIT_STREAM_PREFIX
from tidings.runtime.context import Context
from tidings.runtime.retries import Retry
from tidings.testing.eventually import eventually


class OrderPlaced(Event, topic="acl.order.placed", type="acl.OrderPlaced"):
    key: str


class OrderCancelled(Event, topic="acl.order.eu.cancelled", type="acl.OrderCancelled"):
    key: str


class PaymentCharged(Event, topic="acl.payment.charged", type="acl.PaymentCharged"):
    key: str


class CardDeclined(Event, topic="acl.payment.card.declined", type="acl.CardDeclined"):
    key: str


class StockReserved(Event, topic="acl.inventory.reserved", type="acl.StockReserved"):
    key: str


class StockReleased(Event, topic="acl.inventory.released", type="acl.StockReleased"):
    key: str


EVENTS: tuple[type[Event], ...] = (
    OrderPlaced,
    OrderCancelled,
    PaymentCharged,
    CardDeclined,
    StockReserved,
    StockReleased,
)
TOPICS = tuple(cls.__event_topic__ for cls in EVENTS)
PRINCIPALS = ("orders", "payments", "fulfilment", "auditor")
PASSWORDS = {name: f"{name}-Pw-7" for name in PRINCIPALS}

POLICY = f"""
[principals.orders]
publish = ["acl.order.>"]
subscribe = ["acl.payment.*", "acl.inventory.reserved"]
password = "{PASSWORDS["orders"]}"
relay = true

[principals.payments]
publish = ["acl.payment.*"]
subscribe = ["acl.order.placed", "acl.order.*.cancelled"]
password = "{PASSWORDS["payments"]}"

# Runs sagas: their instances' events and timeouts are events under tidings.saga.
[principals.fulfilment]
publish = ["tidings.saga.>", "acl.inventory.reserved"]
subscribe = ["acl.order.>", "acl.payment.*", "tidings.saga.timeout"]
password = "{PASSWORDS["fulfilment"]}"

[principals.auditor]
subscribe = ["acl.>"]
password = "{PASSWORDS["auditor"]}"
"""

#: The allowed cells, written out by hand (not computed by the code under test).
MAY_PUBLISH = {
    ("orders", "acl.order.placed"),
    ("orders", "acl.order.eu.cancelled"),
    ("payments", "acl.payment.charged"),
    ("fulfilment", "acl.inventory.reserved"),
}
PATTERNS = (
    "acl.order.placed",
    "acl.order.*",
    "acl.order.>",
    "acl.order.*.cancelled",
    "acl.payment.charged",
    "acl.payment.*",
    "acl.payment.>",
    "acl.inventory.reserved",
    "acl.inventory.*",
    "acl.>",
    ">",
)
MAY_SUBSCRIBE = {
    ("orders", "acl.payment.charged"),
    ("orders", "acl.payment.*"),
    ("orders", "acl.inventory.reserved"),
    ("payments", "acl.order.placed"),
    ("payments", "acl.order.*.cancelled"),
    ("fulfilment", "acl.order.placed"),
    ("fulfilment", "acl.order.*"),
    ("fulfilment", "acl.order.>"),
    ("fulfilment", "acl.order.*.cancelled"),
    ("fulfilment", "acl.payment.charged"),
    ("fulfilment", "acl.payment.*"),
    *(("auditor", pattern) for pattern in PATTERNS if pattern != ">"),
}

FAST = Retry(attempts=2, backoff=0.01, max_backoff=0.02)
RUN = {"lease_ttl": 2.0, "poll": 0.5}
BusOf = Callable[[str], str | None]


def policy() -> Policy:
    return Policy.from_toml(POLICY, source="acl-policy.toml")


def no_bus(principal: str) -> str | None:
    return None


async def denials(reader: App) -> list[tuple[str, SecurityDenied]]:
    """Every denial on record, oldest first, with the stream it is on."""
    found: list[tuple[str, SecurityDenied]] = []
    async for stored in reader.read_log(pattern="security.denied"):
        assert isinstance(stored.event, SecurityDenied)
        found.append((stored.stream, stored.event))
    return found


def cells(found: list[tuple[str, SecurityDenied]]) -> list[tuple[str, str, str]]:
    """The denials as (principal, operation, topic), each checked to be on its principal's stream."""
    for stream, denial in found:
        assert stream == AUDIT_STREAM_PREFIX + denial.principal
        assert denial.time.tzinfo is not None
    return [(denial.principal, denial.operation, denial.topic) for _, denial in found]


# -- the matrix, as helpers (over any bus) -----------------------------------------------------------


async def publish_matrix(store_url: str, bus_of: BusOf) -> None:
    for principal in PRINCIPALS:
        async with App(principal, store=store_url, bus=bus_of(principal), policy=policy()) as app:
            for cls in EVENTS:
                topic = cls.__event_topic__
                event = cls(key=f"secret-{principal}-{topic}")
                if (principal, topic) in MAY_PUBLISH:
                    record = await app.publish(event, key=event.key)  # type: ignore[attr-defined]
                    assert record.envelope.topic == topic
                    continue
                with pytest.raises(AccessDenied) as caught:
                    await app.publish(event)
                assert (caught.value.principal, caught.value.operation, caught.value.topic) == (
                    principal,
                    "publish",
                    topic,
                )
                assert principal in str(caught.value) and topic in str(caught.value)
    async with App("reader", store=store_url) as reader:
        stored = {(s.envelope.source, s.envelope.topic) async for s in reader.read_log(pattern="acl.>")}
        assert stored == MAY_PUBLISH
        found = await denials(reader)
        expected = [(p, "publish", t) for p in PRINCIPALS for t in TOPICS if (p, t) not in MAY_PUBLISH]
        assert cells(found) == expected
        # A denial names who, what and where; nothing of the refused event's data.
        async for audit in reader.read_log(pattern="security.denied"):
            assert b"secret" not in audit.envelope.data


async def subscribe_matrix(store_url: str, bus_of: BusOf) -> None:
    """Allowed patterns register and their groups get exactly the events they match; denied
    ones raise at once, and are on record once their App opens."""
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    apps: list[App] = []
    for principal in PRINCIPALS:  # the relay's principal first: it makes the bus's streams
        app = App(principal, store=store_url, bus=bus_of(principal), policy=policy())
        for index, pattern in enumerate(PATTERNS):
            cell, group = (principal, pattern), f"acl-{principal}-{index}"  # a group is store-wide

            async def handle(event: Event, ctx: Context, cell: tuple[str, str] = cell) -> None:
                seen[cell].append(ctx.envelope.topic)

            if cell in MAY_SUBSCRIBE:
                app.subscribe(pattern, group=group)(handle)
                continue
            with pytest.raises(AccessDenied) as caught:
                app.subscribe(pattern, group=group)
            assert (caught.value.operation, caught.value.topic) == ("subscribe", pattern)
        apps.append(app)
    expected = {
        cell: sorted(t for t in TOPICS if compile_pattern(cell[1]).matches(t)) for cell in MAY_SUBSCRIBE
    }
    assert all(expected.values())  # every allowed group has something to receive
    async with App("reader", store=store_url) as reader:
        assert await denials(reader) == []  # the Apps have not opened yet
        for cls in EVENTS:
            await reader.publish(cls(key="k"), key="k")
        async with contextlib.AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app)
                await stack.enter_async_context(app.running(**RUN))
            await eventually(lambda: {cell: sorted(topics) for cell, topics in seen.items()} == expected)
        found = cells(await denials(reader))
    denied = [
        (p, "subscribe", pattern)
        for p in PRINCIPALS
        for pattern in PATTERNS
        if (p, pattern) not in MAY_SUBSCRIBE
    ]
    assert found == denied


# -- the tests --------------------------------------------------------------------------------------


async def test_publish_matrix(store_url: str) -> None:
    await publish_matrix(store_url, no_bus)


async def test_subscribe_matrix(store_url: str) -> None:
    await subscribe_matrix(store_url, no_bus)


class Order(Aggregate, category="acl-order"):
    def apply(self, event: Event) -> None:
        pass


async def test_every_way_into_the_log_is_checked(store_url: str) -> None:
    placed = OrderPlaced(key="secret-1")
    allowed = PaymentCharged(key="fine")
    async with App("payments", store=store_url, policy=policy()) as app:
        with pytest.raises(AccessDenied):
            await app.append("acl-1", placed)
        with pytest.raises(AccessDenied):
            await app.append("acl-1", [allowed, placed])  # atomic: neither is stored
        order = Order("1")
        order.record(placed)
        with pytest.raises(AccessDenied):
            await app.save(order)
        with pytest.raises(AccessDenied):
            await app.publish(placed, key="1")
        with pytest.raises(AccessDenied):
            await app.publish_all([(allowed, "a"), (placed, "b")])  # all or none
        await app.append("acl-2", allowed)
        assert [s.event async for s in app.read_log(pattern="acl.>")] == [allowed]
        assert len(await denials(app)) == 5  # recorded before each error reached the caller
    async with App("reader", store=store_url) as reader:
        assert cells(await denials(reader)) == [("payments", "publish", "acl.order.placed")] * 5


async def test_a_denial_in_a_handler_fails_it_and_is_audited(store_url: str) -> None:
    """Each way a handler publishes: the handler fails where it publishes, is retried, and its
    event is dead-lettered; each attempt's denial is on record. A unit of work whose denied
    event slipped in after it was staged (recorded on a saved aggregate) fails at commit."""
    app = App("payments", store=store_url, policy=policy())
    placed = "acl.order.placed"

    @app.subscribe(placed, group="uow-publish", retry=FAST)
    async def uow_publish(event: OrderPlaced, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.publish(StockReserved(key="secret"), key="k")

    @app.subscribe(placed, group="uow-schedule", retry=FAST)
    async def uow_schedule(event: OrderPlaced, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.schedule(StockReleased(key="secret"), at=app.clock.now() + timedelta(hours=1))

    @app.subscribe(placed, group="ctx-publish", retry=FAST)
    async def ctx_publish(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(CardDeclined(key="secret"))

    @app.subscribe(placed, group="uow-save", retry=FAST)
    async def uow_save(event: OrderPlaced, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            order = Order(f"save-{ctx.attempt}")
            order.record(OrderCancelled(key="secret"))
            uow.save(order)

    @app.subscribe(placed, group="late-record", retry=FAST)
    async def late_record(event: OrderPlaced, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            order = Order(f"late-{ctx.attempt}")
            uow.save(order)  # nothing to check yet
            order.record(OrderPlaced(key="secret"))  # checked by the codec, at commit

    @app.subscribe(placed, group="allowed", retry=FAST)
    async def allowed(event: OrderPlaced, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.publish(PaymentCharged(key=event.key), key=event.key)

    failing = {"uow-publish", "uow-schedule", "ctx-publish", "uow-save", "late-record"}
    async with App("producer", store=store_url) as producer, app, app.running(**RUN):
        await producer.publish(OrderPlaced(key="o-1"), key="o-1")

        async def all_dead() -> bool:
            return {letter.group for letter in await app.dead_letters()} == failing

        await eventually(all_dead)
        charged = [s.event async for s in app.read_log(pattern="acl.payment.charged")]
        assert charged == [PaymentCharged(key="o-1")]
        for letter in await app.dead_letters():
            assert letter.reason == "denied" and letter.attempts == 1  # no retry: it would be denied again
            assert letter.error.startswith(
                "AccessDenied: principal 'payments' may not publish to topic 'acl."
            )
    async with App("reader", store=store_url) as reader:
        found = cells(await denials(reader))
    by_topic: dict[str, int] = defaultdict(int)
    for principal, operation, topic in found:
        assert (principal, operation) == ("payments", "publish")
        by_topic[topic] += 1
    for topic in (
        "acl.inventory.reserved",
        "acl.inventory.released",
        "acl.payment.card.declined",
        "acl.order.eu.cancelled",
    ):
        assert by_topic.pop(topic) == 1, topic
    # At commit: the batch's shared commit may fail first, then the event alone is denied.
    assert by_topic.pop("acl.order.placed") in (1, 2)
    assert not by_topic


async def test_sagas_are_checked(store_url: str) -> None:
    """A saga's group must be allowed all it reads; its commands must be allowed to publish."""
    app = App("fulfilment", store=store_url, policy=policy())
    fine = Saga("acl-fine", starts_on=OrderPlaced, key=lambda e: e.key)
    fine.step(
        "reserve", send=lambda s: StockReserved(key=s.key), success=PaymentCharged, timeout=timedelta(hours=1)
    )
    refused = Saga("acl-refused", starts_on=OrderCancelled, key=lambda e: e.key)
    refused.step("decline", send=lambda s: CardDeclined(key=s.key), success=PaymentCharged)
    unheard = Saga("acl-unheard", starts_on=StockReleased, key=lambda e: e.key)
    unheard.step("reserve", send=lambda s: StockReserved(key=s.key), success=PaymentCharged)
    app.add_saga(fine)
    app.add_saga(refused)
    with pytest.raises(AccessDenied, match=r"may not subscribe to pattern 'acl\.inventory\.released'"):
        app.add_saga(unheard)
    service = App("service", store=store_url)  # no policy: answers every reservation

    @service.subscribe("acl.inventory.reserved", group="stock")
    async def reserve(event: StockReserved, ctx: Context) -> None:
        await ctx.publish(PaymentCharged(key=event.key), key=event.key)

    async with service, app, service.running(**RUN), app.running(**RUN):
        await service.publish(OrderPlaced(key="o-1"), key="o-1")
        await service.publish(OrderCancelled(key="o-2"), key="o-2")

        async def settled() -> bool:
            ended = [s.event async for s in app.read_log(pattern="tidings.saga.ended")]
            return bool(ended) and bool(await app.dead_letters("tidings:saga:acl-refused"))

        await eventually(settled)
        (letter,) = await app.dead_letters("tidings:saga:acl-refused")
        assert "may not publish to topic 'acl.payment.card.declined'" in letter.error
    async with App("reader", store=store_url) as reader:
        found = cells(await denials(reader))
        assert not [s async for s in reader.read_log(pattern="acl.payment.card.declined")]
    assert found[0] == ("fulfilment", "subscribe", "acl.inventory.released")
    # The saga's group has the default retry budget: each attempt was denied and is on record.
    assert found[1:] == [("fulfilment", "publish", "acl.payment.card.declined")]


async def test_a_redrive_hands_a_group_only_what_its_pattern_matches(store_url: str) -> None:
    """Two Apps (two principals) with groups of one name: one dead-letters an event that the
    other's pattern does not match; a redrive by the other must not hand it that event."""
    wide, narrow = App("wide", store=store_url), App("narrow", store=store_url)
    got: list[str] = []

    @wide.subscribe("acl.>", group="shared", retry=Retry(attempts=1))
    async def refuse(event: Event, ctx: Context) -> None:
        raise RuntimeError("not now")

    @narrow.subscribe("acl.order.placed", group="shared")
    async def take(event: Event, ctx: Context) -> None:
        got.append(ctx.envelope.topic)

    async with wide, narrow:
        await wide.publish(CardDeclined(key="secret-card"), key="k1")
        async with wide.running(lease_ttl=2.0, poll=0.1):
            await eventually(lambda: _dead_in(wide, "shared"))
        (letter,) = await narrow.dead_letters("shared")
        async with narrow.running(lease_ttl=2.0, poll=0.1):
            await narrow.redrive([letter.id])

            async def back_to_dead() -> bool:
                return [entry.id for entry in await narrow.dead_letters("shared")] == [letter.id]

            await eventually(back_to_dead)
    assert got == []


async def _dead_in(app: App, group: str) -> bool:
    return len(await app.dead_letters(group)) == 1
