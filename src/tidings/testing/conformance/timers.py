"""Durable timers, asserted on every backend: an event scheduled in a unit of work is published
when it is due, once, whichever of several Apps fires it, and whatever restarted meanwhile; a
timer that could never fire is refused when it is set, and one that fails when it fires is
dead-lettered without holding up the others."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

from tidings.app import App
from tidings.domain.dead_letters import DeadLetterReason
from tidings.domain.envelope import Envelope, to_structured
from tidings.domain.events import Event
from tidings.domain.ids import publication_id
from tidings.errors import PayloadTooLarge
from tidings.runtime.context import Context
from tidings.runtime.publishing import Lineage, publication_envelope
from tidings.runtime.retries import Retry
from tidings.runtime.timers import REARM_EVERY, TIMERS_GROUP, _letter
from tidings.runtime.unit_of_work import Publication
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.events import Alarm, Ping, unique
from tidings.testing.conformance.sagas import OrderPlaced, Shop, _status, fulfilment
from tidings.testing.eventually import eventually
from tidings.testing.raw import raw_execute

RUN = {"lease_ttl": 2.0, "poll": 0.2}


class Note(Event, topic="conformance.timer.note", type="conformance.TimerNote"):
    text: str


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


async def test_a_handler_run_again_sets_the_same_timer(store_url: str) -> None:
    """A timer scheduled without an id while handling an event gets an id derived from that
    event, the group and its place in the run, like a publication's: a run again (here a retry
    of a run that failed after scheduling) sets the same timer, never a second one. (Its id was
    drawn at random: a handler run again after a crash set the timer twice.)"""
    clock = ManualClock()
    app = App("timers", store=store_url, clock=clock)
    group, key = unique("scheduler"), unique("t")
    runs: list[int] = []
    got: list[str] = []

    @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=2, backoff=0.01))
    async def schedule(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.schedule(Alarm(level=event.n), at=app.clock.now() + timedelta(minutes=1), key=event.key)
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("crashed after scheduling")

    @app.subscribe("conformance.alarm.*", group=unique("alarms"))
    async def ring(event: Alarm, ctx: Context) -> None:
        got.append(ctx.envelope.id)

    async with app, app.running(**RUN):
        ping = await app.publish(Ping(key=key, n=3), key=key)

        async def scheduled() -> bool:
            return await app.store.next_timer_due() is not None

        await eventually(scheduled)
        clock.advance(timedelta(minutes=1))
        await eventually(lambda: len(got) == 1)
    assert runs == [1, 2]
    expected = publication_id(ping.envelope.id, ping.envelope.time, group, 0)
    assert got[0].startswith(f"{expected}@"), got


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


async def test_a_timer_that_could_never_fire_is_refused_when_it_is_set(store_url: str) -> None:
    """The rule of publishing: the encoded event, and with encryption on the sealed one (its
    header, nonce and tag come on top), must fit the limit. ``schedule`` itself refuses."""
    clock = ManualClock()
    app = App("timers", store=store_url, clock=clock)
    limit = app.codec.max_size
    sealed = app.encryption is not None
    refused: dict[str, str] = {}
    got: list[int] = []
    sizes = {"over": limit, "near": limit - 100, "large": 800_000}

    @app.subscribe("conformance.bus.ping", group="scheduler")
    async def schedule(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            for name, size in sizes.items():
                try:
                    uow.schedule(Note(text=name.ljust(size, "x")), at=clock.now() + timedelta(minutes=1))
                except PayloadTooLarge as exc:
                    refused[name] = str(exc)
            uow.schedule(Alarm(level=event.n), at=clock.now() + timedelta(minutes=2), key=event.key)

    @app.subscribe("conformance.timer.note", group="notes")
    async def note(event: Note, ctx: Context) -> None:
        got.append(len(event.text))

    @app.subscribe("conformance.alarm.*", group="alarms")
    async def ring(event: Alarm, ctx: Context) -> None:
        got.append(event.level)

    key = unique("t")
    async with app, app.running(**RUN):
        await app.publish(Ping(key=key, n=7), key=key)

        async def scheduled() -> bool:
            return await app.store.next_timer_due() is not None

        await eventually(scheduled)
        clock.advance(timedelta(minutes=3))
        # An 800 KB event fits, sealed or not: it fires, and so does the alarm behind it.
        fired = [800_000, 7] if sealed else [limit - 100, 800_000, 7]
        await eventually(lambda: sorted(got) == sorted(fired))
    assert sorted(refused) == (["near", "over"] if sealed else ["over"])
    assert f"exceeds the limit of {limit:,} bytes" in refused["over"]
    if sealed:
        assert refused["near"].startswith("sealed payload of conformance.TimerNote of ")
        assert refused["near"].endswith(f"exceeds the limit of {limit:,} bytes")


def _plant(store_url: str, timer_id: str, due: int, document: bytes) -> None:
    """A timer row written behind tidings' back (as an older version, or an attacker, might)."""
    raw_execute(
        store_url,
        "INSERT INTO tidings_timers (id, due_us, stream, envelope) VALUES (?, ?, ?, ?)",
        timer_id,
        due,
        unique("planted"),
        document,
    )


async def test_a_timer_that_cannot_fire_is_dead_lettered_and_the_others_fire(store_url: str) -> None:
    clock = ManualClock()
    app = App("shop", store=store_url, clock=clock)
    shop, name, order = Shop(app), unique("fulfil"), unique("order")
    app.add_saga(fulfilment(name))
    got: list[int] = []
    _scheduler(app, got, delay=timedelta(seconds=10))
    limit = app.codec.max_size
    too_large = Envelope(
        id=unique("big"),
        source="elsewhere",
        type="conformance.TimerNote",
        topic="conformance.timer.note",
        time=clock.now(),
        data=b'"' + b"x" * limit + b'"',
    )
    due = round(clock.now().timestamp() * 1_000_000)  # due first: before every timer set below
    key = unique("t")
    async with app:
        _plant(store_url, unique("garbled"), due, b'{"specversion": "1.0", "id": ')
        _plant(store_url, unique("too-large"), due, to_structured(too_large))
        async with app.running(**RUN):
            await app.publish(OrderPlaced(order_id=order, amount=40, trouble="silent"), key=order)
            await app.publish(Ping(key=key, n=5), key=key)
            await eventually(lambda: shop.seen[("ship", order)] == 1)

            async def set_and_planted_gone() -> bool:
                ids = [row[0] for row in raw_execute(store_url, "SELECT id FROM tidings_timers")]
                kinds = {i.split("-")[0].split(":")[0] for i in ids}
                return kinds == {"alarm", "timeout"}

            await eventually(set_and_planted_gone)
            clock.advance(timedelta(seconds=31))  # past the alarm and the shipping step's timeout
            await eventually(lambda: got == [5])
            await eventually(lambda: _status(app, name, order, "compensated"))
        letters = await app.dead_letters("tidings:timers")
    assert sorted((letter.reason, letter.stream is not None) for letter in letters) == [
        ("malformed", True),
        ("malformed", True),
    ]
    big = next(letter for letter in letters if letter.event_id == too_large.id)
    assert f"exceeds the limit of {limit:,} bytes" in big.error
    garbled = next(letter for letter in letters if letter.event_id is None)
    assert garbled.raw == b'{"specversion": "1.0", "id": '


async def test_a_timer_letter_redriven_is_set_again_and_fires(store_url: str) -> None:
    """A timer that could not fire (dead-lettered as the timer worker does, its event as stored:
    sealed with encryption on) and is queued for redrive is set again, due at once, and fires;
    its letter is ``redriven``. One whose row could not be read has no event to set again: it
    goes back to ``dead``, still on record. (Nothing consumed these letters: queued for
    redrive, they stayed there and the timer never fired.)"""
    clock = ManualClock()
    app = App("timers", store=store_url, clock=clock)
    got: list[int] = []

    @app.subscribe("conformance.alarm.*", group=unique("alarms"))
    async def ring(event: Alarm, ctx: Context) -> None:
        got.append(event.level)

    now = clock.now()
    timer = Publication(Alarm(level=4), unique("t"), id=unique("alarm"), at=now)
    stream, envelope = publication_envelope(app.codec, timer.fired(), now, Lineage())
    async with app:
        async with app.store.transaction() as tx:
            await tx.schedule_timer(unique("timer"), now, stream, envelope)
        async with app.store.transaction() as tx:
            (stored,) = await tx.due_timers(now, 10)
            await tx.groups.dead_letter(
                _letter(stored, DeadLetterReason.FAILED, RuntimeError("refused when it fired"), now)
            )
            await tx.cancel_timer(stored.id)
        _plant(store_url, unique("garbled"), round(now.timestamp() * 1_000_000), b'{"specversion": ')

        async def states() -> dict[str | None, str]:
            return {
                letter.event_id: letter.state for letter in await app.dead_letters(TIMERS_GROUP, state=None)
            }

        async with app.running(**RUN):
            await eventually(lambda: _equal(states(), {envelope.id: "dead", None: "dead"}))
            letters = await app.dead_letters(TIMERS_GROUP)
            assert await app.redrive([letter.id for letter in letters]) == 2
            await eventually(lambda: got == [4])
            await eventually(lambda: _equal(states(), {envelope.id: "redriven", None: "dead"}))
            await asyncio.sleep(2 * REARM_EVERY)  # every worker had its look again
            assert await app.store.next_timer_due() is None
    assert got == [4]


async def _equal(found: Awaitable[object], expected: object) -> bool:
    return await found == expected
