"""Durable timers, asserted on every backend: an event scheduled in a unit of work is published
when it is due, once, whichever of several Apps fires it, and whatever restarted meanwhile."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tidings.runtime.app import App
from tidings.runtime.consuming import Context
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.events import Alarm, Ping, unique
from tidings.testing.eventually import eventually

RUN = {"lease_ttl": 2.0, "poll": 0.2}


def _scheduler(app: App, got: list[int], *, delay: timedelta) -> None:
    @app.subscribe("conformance.bus.ping", group="scheduler")
    async def schedule(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.schedule(
                Alarm(level=event.n), at=app.clock.now() + delay, id=f"alarm-{event.key}", key=event.key
            )

    @app.subscribe("conformance.alarm.*", group="alarms")
    async def ring(event: Alarm, ctx: Context) -> None:
        got.append(event.level)


async def test_a_scheduled_event_is_published_when_due_and_once(store_url: str) -> None:
    clock = ManualClock()
    apps = [App(f"timers{i}", store=store_url, clock=clock) for i in range(2)]
    got: list[int] = []
    for app in apps:
        _scheduler(app, got, delay=timedelta(minutes=5))
    key = unique("t")
    async with apps[0], apps[1], apps[0].running(**RUN), apps[1].running(**RUN):
        await apps[0].publish(Ping(key=key, n=7), key=key)

        async def scheduled() -> bool:
            return await apps[0].store.next_timer_due() == clock.now() + timedelta(minutes=5)

        await eventually(scheduled)
        await asyncio.sleep(0.5)
        assert got == [], "not before it is due"
        clock.advance(timedelta(minutes=5))
        await eventually(lambda: got == [7])
        await asyncio.sleep(0.6)  # both Apps' timer workers had their chance
        alarms = [s async for s in apps[0].read_log(pattern="conformance.alarm.*")]
        due = await apps[0].store.next_timer_due()
    assert got == [7]
    assert len(alarms) == 1 and alarms[0].envelope.id.startswith(f"alarm-{key}@")
    assert due is None, "a fired timer is gone"


async def test_a_timer_set_again_after_it_fired_fires_again(store_url: str) -> None:
    clock = ManualClock()
    app = App("timers", store=store_url, clock=clock)
    got: list[int] = []
    _scheduler(app, got, delay=timedelta(seconds=10))
    key = unique("t")

    async def scheduled() -> bool:
        return await app.store.next_timer_due() is not None

    async with app, app.running(**RUN):
        for n in (1, 2):  # the same timer id both times
            await app.publish(Ping(key=key, n=n), key=key)
            await eventually(scheduled)
            clock.advance(timedelta(seconds=11))
            await eventually(lambda n=n: got == [1, 2][:n])


async def test_a_timer_survives_a_restart(store_url: str) -> None:
    clock = ManualClock()
    got: list[int] = []
    first = App("before", store=store_url, clock=clock)
    _scheduler(first, got, delay=timedelta(seconds=30))
    key = unique("t")
    async with first, first.running(**RUN):
        await first.publish(Ping(key=key, n=3), key=key)

        async def scheduled() -> bool:
            return await first.store.next_timer_due() is not None

        await eventually(scheduled)
    clock.advance(timedelta(seconds=31))
    second = App("after", store=store_url, clock=clock)
    _scheduler(second, got, delay=timedelta(seconds=30))
    async with second, second.running(**RUN):
        await eventually(lambda: got == [3])
