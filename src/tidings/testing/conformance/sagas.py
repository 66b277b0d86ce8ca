"""Sagas, asserted on every backend: completed or fully compensated, whatever fails."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from tidings.app import App
from tidings.domain.events import Event
from tidings.domain.saga import Saga, SagaData, SagaInstance
from tidings.errors import AggregateNotFound
from tidings.runtime.context import Context
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.events import unique
from tidings.testing.eventually import eventually


class OrderPlaced(Event, topic="conformance.order.placed", type="conformance.OrderPlaced"):
    order_id: str
    amount: int
    #: How the services treat this order (words may combine): "nostock" (stock refuses),
    #: "decline" (payment declines), "slowpay" (payment never answers), "twice" (payment answers
    #: twice), "fail" (shipping fails), "silent" (shipping never answers), "stubborn" (stock is
    #: never confirmed released).
    trouble: str = ""


class Reserve(Event, topic="conformance.stock.reserve", type="conformance.Reserve"):
    order_id: str
    trouble: str = ""


class Reserved(Event, topic="conformance.stock.reserved", type="conformance.Reserved"):
    order_id: str


class OutOfStock(Event, topic="conformance.stock.out", type="conformance.OutOfStock"):
    order_id: str


class Release(Event, topic="conformance.stock.release", type="conformance.Release"):
    order_id: str
    trouble: str = ""


class Released(Event, topic="conformance.stock.released", type="conformance.Released"):
    order_id: str


class Charge(Event, topic="conformance.payment.charge", type="conformance.Charge"):
    order_id: str
    amount: int
    trouble: str = ""


class Charged(Event, topic="conformance.payment.charged", type="conformance.Charged"):
    order_id: str
    amount: int


class Declined(Event, topic="conformance.payment.declined", type="conformance.Declined"):
    order_id: str


class Refund(Event, topic="conformance.payment.refund", type="conformance.Refund"):
    order_id: str
    amount: int


class Refunded(Event, topic="conformance.payment.refunded", type="conformance.Refunded"):
    order_id: str


class Ship(Event, topic="conformance.shipping.ship", type="conformance.Ship"):
    order_id: str
    trouble: str = ""


class Shipped(Event, topic="conformance.shipping.shipped", type="conformance.Shipped"):
    order_id: str


class ShippingFailed(Event, topic="conformance.shipping.failed", type="conformance.ShippingFailed"):
    order_id: str


def start(s: SagaData) -> OrderPlaced:
    order: OrderPlaced = s.start
    return order


def fulfilment(name: str) -> Saga:
    saga = Saga(name, starts_on=OrderPlaced, key=lambda e: e.order_id, compensation_attempts=3)
    saga.step(
        "reserve",
        send=lambda s: Reserve(order_id=s.key, trouble=start(s).trouble),
        success=Reserved,
        failure=OutOfStock,
        compensate=lambda s: Release(order_id=s.key, trouble=start(s).trouble),
        compensated=Released,
        timeout=timedelta(seconds=30),
    )
    saga.step(
        "charge",
        send=lambda s: Charge(order_id=s.key, amount=start(s).amount, trouble=start(s).trouble),
        success=Charged,
        failure=Declined,
        compensate=lambda s: Refund(order_id=s.key, amount=s.replies["charge"].amount),
        compensated=Refunded,
        timeout=timedelta(seconds=30),
    )
    saga.step(
        "ship",
        send=lambda s: Ship(order_id=s.key, trouble=start(s).trouble),
        success=Shipped,
        failure=ShippingFailed,
        timeout=timedelta(seconds=30),
    )
    return saga


class Shop:
    """The three services of the saga's steps, in one App, each a group of its own; ``seen``
    counts the commands each received."""

    def __init__(self, app: App) -> None:
        self.seen: Counter[tuple[str, str]] = Counter()
        self.app = app

        @app.subscribe("conformance.stock.*", group="stock")
        async def stock(event: Event, ctx: Context) -> None:
            if isinstance(event, Reserve):
                self.seen["reserve", event.order_id] += 1
                answer = OutOfStock if "nostock" in event.trouble else Reserved
                await reply(ctx, answer(order_id=event.order_id), key=event.order_id)
            elif isinstance(event, Release):
                self.seen["release", event.order_id] += 1
                if "stubborn" not in event.trouble:
                    await reply(ctx, Released(order_id=event.order_id), key=event.order_id)

        @app.subscribe("conformance.payment.*", group="payment")
        async def payment(event: Event, ctx: Context) -> None:
            if isinstance(event, Charge):
                self.seen["charge", event.order_id] += 1
                if "decline" in event.trouble:
                    await reply(ctx, Declined(order_id=event.order_id), key=event.order_id)
                    return
                if "slowpay" in event.trouble:
                    return
                charged = Charged(order_id=event.order_id, amount=event.amount)
                await reply(ctx, charged, key=event.order_id, times=2 if "twice" in event.trouble else 1)
            elif isinstance(event, Refund):
                self.seen["refund", event.order_id] += 1
                await reply(ctx, Refunded(order_id=event.order_id), key=event.order_id)

        @app.subscribe("conformance.shipping.ship", group="shipping")
        async def shipping(event: Ship, ctx: Context) -> None:
            self.seen["ship", event.order_id] += 1
            if "silent" in event.trouble:
                return
            outcome: Event = (
                ShippingFailed(order_id=event.order_id)
                if "fail" in event.trouble
                else Shipped(order_id=event.order_id)
            )
            await reply(ctx, outcome, key=event.order_id)


async def reply(ctx: Context, event: Event, *, key: str, times: int = 1) -> None:
    """Answer a command (``times`` over: a duplicate) with the handler's unit of work."""
    async with ctx.unit_of_work() as uow:
        for _ in range(times):
            uow.publish(event, key=key)


RUN = {"lease_ttl": 2.0, "poll": 0.2}


async def _status(app: App, name: str, order: str, *wanted: str) -> bool:
    try:
        instance = await app.load(SagaInstance, f"{name}:{order}")
    except AggregateNotFound:
        return False  # not started yet
    return instance.status in wanted


async def _run_order(store_url: str, trouble: str) -> tuple[SagaInstance, Shop, str]:
    name, order = unique("fulfil"), unique("order")
    app = App("shop", store=store_url)
    shop = Shop(app)
    app.add_saga(fulfilment(name))
    async with app, app.running(**RUN):
        await app.publish(OrderPlaced(order_id=order, amount=40, trouble=trouble), key=order)
        await eventually(lambda: _status(app, name, order, "completed", "compensated", "stuck"), within=20)
        await asyncio.sleep(0.3)  # a command sent twice would show by now
        instance = await app.load(SagaInstance, f"{name}:{order}")
    return instance, shop, order


async def test_a_saga_runs_its_steps_to_completion(store_url: str) -> None:
    instance, shop, order = await _run_order(store_url, "")
    assert instance.status == "completed"
    assert instance.done == [0, 1, 2]
    assert shop.seen == Counter({("reserve", order): 1, ("charge", order): 1, ("ship", order): 1})


async def test_a_first_step_that_fails_leaves_nothing_to_undo(store_url: str) -> None:
    instance, shop, order = await _run_order(store_url, "nostock")
    assert instance.status == "compensated"
    assert "step 0 failed: conformance.OutOfStock" in instance.reason
    assert shop.seen == Counter({("reserve", order): 1})


async def test_a_declined_payment_releases_the_stock(store_url: str) -> None:
    instance, shop, order = await _run_order(store_url, "decline")
    assert instance.status == "compensated"
    assert "step 1 failed: conformance.Declined" in instance.reason
    assert shop.seen == Counter({("reserve", order): 1, ("charge", order): 1, ("release", order): 1})


async def test_a_failed_shipment_refunds_then_releases(store_url: str) -> None:
    instance, shop, order = await _run_order(store_url, "fail")
    assert instance.status == "compensated"
    assert shop.seen[("refund", order)] == 1 and shop.seen[("release", order)] == 1
    assert instance.done == []


async def test_a_reply_that_comes_twice_moves_the_saga_once(store_url: str) -> None:
    instance, shop, order = await _run_order(store_url, "twice")
    assert instance.status == "completed"
    assert shop.seen == Counter({("reserve", order): 1, ("charge", order): 1, ("ship", order): 1})


async def test_a_step_that_times_out_is_compensated(store_url: str) -> None:
    clock = ManualClock()
    name, order = unique("fulfil"), unique("order")
    app = App("shop", store=store_url, clock=clock)
    shop = Shop(app)
    app.add_saga(fulfilment(name))
    async with app, app.running(**RUN):
        await app.publish(OrderPlaced(order_id=order, amount=40, trouble="silent"), key=order)
        await eventually(lambda: shop.seen[("ship", order)] == 1)
        await asyncio.sleep(0.5)
        assert await _status(app, name, order, "running"), "no timeout before its time"
        clock.advance(timedelta(seconds=31))  # past the shipping step's timeout
        await eventually(lambda: _status(app, name, order, "compensated"))
        instance = await app.load(SagaInstance, f"{name}:{order}")
    assert instance.reason == "step 2 timed out"
    assert shop.seen[("refund", order)] == 1 and shop.seen[("release", order)] == 1


async def test_a_late_success_of_a_timed_out_step_is_undone_once(store_url: str) -> None:
    clock = ManualClock()
    name, order = unique("fulfil"), unique("order")
    app = App("shop", store=store_url, clock=clock)
    shop = Shop(app)
    app.add_saga(fulfilment(name))
    async with app, app.running(**RUN):
        await app.publish(OrderPlaced(order_id=order, amount=40, trouble="slowpay"), key=order)
        await eventually(lambda: shop.seen[("charge", order)] == 1)
        await asyncio.sleep(0.3)
        clock.advance(timedelta(seconds=31))
        await eventually(lambda: _status(app, name, order, "compensated"))
        # The payment service answers after all, twice: the charge is refunded, once.
        charge_command = f"{name}:{order}/1/do/1"
        for _ in range(2):
            await app.publish(Charged(order_id=order, amount=40), key=order, causation_id=charge_command)
        await eventually(lambda: shop.seen[("refund", order)] == 1)
        await asyncio.sleep(0.5)
        instance = await app.load(SagaInstance, f"{name}:{order}")
    assert shop.seen[("refund", order)] == 1
    assert shop.seen[("release", order)] == 1
    assert instance.status == "compensated" and instance.undone_late == [1]


async def test_a_compensation_never_confirmed_makes_the_saga_stuck(store_url: str) -> None:
    clock = ManualClock()
    name, order = unique("fulfil"), unique("order")
    app = App("shop", store=store_url, clock=clock)
    shop = Shop(app)
    app.add_saga(fulfilment(name))
    async with app, app.running(**RUN):
        await app.publish(OrderPlaced(order_id=order, amount=40, trouble="stubborn decline"), key=order)
        await eventually(lambda: shop.seen[("release", order)] == 1)
        for attempt in range(2, 4):  # timeouts of 30 s, then 60 s, then 120 s
            clock.advance(timedelta(seconds=30 * 2 ** (attempt - 1)))
            await eventually(lambda attempt=attempt: shop.seen[("release", order)] == attempt)
        clock.advance(timedelta(seconds=241))
        await eventually(lambda: _status(app, name, order, "stuck"))
        letters = await app.dead_letters(f"tidings:saga:{name}")
    assert [letter.reason for letter in letters] == ["stuck"]
    assert f"saga {name}:{order} is stuck" in letters[0].error
