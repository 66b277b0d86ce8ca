"""Consumers whose clock jumps forward and backward (the App's injectable clock, shared by two
members of a group): an event past its deadline when a member looks at it is dead-lettered as
``expired`` once, with the lateness that clock says (tolerance: 1 ms, the letter's precision),
never handled; every other event is handled once, and not after its deadline. Durable timers
fire once each, never before they are due, however the clock went back in between.

Leases are not on this clock: each member dates its leases by its process's wall clock
(``time.time``), so jumps of the App's clock cannot make two members hold one partition.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from tests.faults.tally import Tally
from tidings import Context, Event
from tidings.app import App
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually
from tidings.testing.raw import raw_execute

SEEDS = [1, 2, 3]
RUN = {"lease_ttl": 2.0, "poll": 0.1}
MAX_AGE = timedelta(minutes=5)
TTLS: list[timedelta | None] = [None, *(timedelta(seconds=s) for s in (10, 60, 240, 1200, 7200))]
ROUNDS = 6
PER_ROUND = 16
TOLERANCE = timedelta(milliseconds=1)
TIMERS = 40
JUMPS = 8
_LATENESS = re.compile(r"expired (\d+\.\d{3}) s")


class Rang(Event, topic="faults.clock.rang", type="faults.ClockRang"):
    n: int
    due: datetime


def _deadline(published: datetime, ttl: timedelta | None) -> datetime:
    return min(published + MAX_AGE, published + ttl) if ttl is not None else published + MAX_AGE


def _members(store: str, clock: ManualClock, ran: set[str]) -> list[App]:
    apps = [App(f"clock{i}", store=store, clock=clock) for i in range(2)]
    for app in apps:

        @app.subscribe("conformance.bus.ping", group="timely", max_age=MAX_AGE)
        async def timely(event: Ping, ctx: Context) -> None:
            ran.add(ctx.envelope.id)
            async with ctx.unit_of_work() as uow:  # what commits counts: delivery is at least once
                seen = await uow.get("timely", ctx.envelope.id, list[datetime]) or []
                uow.put("timely", ctx.envelope.id, [*seen, clock.now()])

    return apps


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
async def test_deadlines_expire_once_whichever_way_the_clock_jumps(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    ran: set[str] = set()  # the events a handler ran for (committed or not)
    first, second = _members(f"sqlite:///{tmp_path / 'store.db'}", clock, ran)
    deadlines: dict[str, datetime] = {}
    late_by: dict[str, timedelta] = {}  # the events that are late when the group looks at them
    async with first, second:
        for _ in range(ROUNDS):
            # With the group stopped: publish, then jump; the group looks at them after the jump.
            this_round = []
            for n in range(PER_ROUND):
                ttl = rng.choice(TTLS)
                event_id = f"e-{len(deadlines)}"
                await first.publish(Ping(key=f"k{n % 4}", n=n), key=f"k{n % 4}", ttl=ttl, id=event_id)
                deadlines[event_id] = _deadline(clock.now(), ttl)
                this_round.append(event_id)
            jump = timedelta(seconds=rng.choice([-3600, -600, -5, 0, 10, 60, 240, 300, 1200, 7201]))
            jump += timedelta(milliseconds=rng.randrange(1000))
            clock.advance(jump)
            for event_id in this_round:
                if clock.now() > deadlines[event_id]:
                    late_by[event_id] = clock.now() - deadlines[event_id]
            settled = len(deadlines)
            async with first.running(**RUN), second.running(**RUN):

                async def all_settled(settled: int = settled) -> bool:
                    letters = await first.dead_letters("timely", limit=10_000)
                    return len(ran) + len(letters) >= settled

                await eventually(all_settled, within=30)
        await asyncio.sleep(0.5)  # time to commit any second handling
        letters = await first.dead_letters("timely", limit=10_000)
        handled = [(e, at) for e in deadlines for at in await _handled_at(first, "timely", e)]
    fates = Counter([event_id for event_id, _ in handled] + [x.event_id for x in letters])
    lettered = {x.event_id: x for x in letters}
    wrong_lateness = [
        x.event_id
        for x in letters
        if x.event_id not in late_by
        or abs(_lateness(x.error) - late_by[x.event_id]) > TOLERANCE
        or x.reason != "expired"
    ]
    after_deadline = [e for e, at in handled if at > deadlines[e]]
    result = Tally(
        scenario=f"clock jumps, {ROUNDS} rounds (seed {seed})",
        events=len(deadlines),
        lost=sum(1 for event_id in deadlines if fates[event_id] == 0),
        duplicated=sum(n - 1 for n in fates.values() if n > 1),
        out_of_order=0,
        recovery=0.0,
    )
    print(result, f"expired {len(lettered)}, handled {len(handled)}")
    assert result.clean, result
    assert set(lettered) == set(late_by), "dead-lettered as expired: exactly the late events"
    assert wrong_lateness == [], "each letter says how late its event was, by the App's clock"
    assert after_deadline == [], "handled after its deadline"


def _lateness(error: str) -> timedelta:
    found = _LATENESS.search(error)
    assert found is not None, error
    return timedelta(seconds=float(found.group(1)))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
async def test_timers_fire_once_and_never_early_whichever_way_the_clock_jumps(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    apps = [App(f"timers{i}", store=store, clock=clock) for i in range(2)]
    rang: set[int] = set()  # the timers whose event a handler ran for (committed or not)
    due: dict[int, datetime] = {}
    for app in apps:

        @app.subscribe("conformance.bus.ping", group="scheduler")
        async def schedule(event: Ping, ctx: Context) -> None:
            async with ctx.unit_of_work() as uow:
                uow.schedule(Rang(n=event.n, due=due[event.n]), at=due[event.n], id=f"timer-{event.n}")

        @app.subscribe("faults.clock.rang", group="ringer")
        async def ring(event: Rang, ctx: Context) -> None:
            rang.add(event.n)
            async with ctx.unit_of_work() as uow:  # what commits counts: delivery is at least once
                seen = await uow.get("rang", str(event.n), list[datetime]) or []
                uow.put("rang", str(event.n), [*seen, clock.now()])

    async with apps[0], apps[1], apps[0].running(**RUN), apps[1].running(**RUN):
        for n in range(TIMERS):
            due[n] = clock.now() + timedelta(seconds=rng.randrange(60, 3600))
            await apps[0].publish(Ping(key=f"t{n}", n=n), key=f"t{n}")

        async def all_set() -> bool:
            return await _timers_left(apps[0]) == TIMERS

        await eventually(all_set, within=30)
        expected: set[int] = set()
        for _ in range(JUMPS):
            pending = sorted(at for n, at in due.items() if n not in expected)
            if pending and rng.random() < 0.5:
                # To the edge of a timer not fired yet: a millisecond before it is due, then just then.
                edge = rng.choice(pending)
                moves = [edge - timedelta(milliseconds=1) - clock.now(), timedelta(milliseconds=1)]
            else:
                moves = [timedelta(seconds=rng.choice([-1800, -300, -1, 1, 120, 420, 900, 1800]))]
            for move in moves:
                clock.advance(move)
                expected |= {n for n, at in due.items() if at <= clock.now()}
                await eventually(lambda expected=frozenset(expected): rang >= expected, within=30)
                await asyncio.sleep(0.5)  # both timer workers had their chance to fire more
                assert rang == expected, (
                    f"at {clock.now()}: fired {sorted(rang - expected)} before they were due"
                )
        clock.advance(timedelta(hours=2))
        await eventually(lambda: len(rang) == TIMERS, within=30)

        async def all_committed() -> bool:
            return all([await _handled_at(apps[0], "rang", str(n)) for n in due])

        await eventually(all_committed, within=30)
        await asyncio.sleep(0.5)  # time to commit any second handling
        left = await _timers_left(apps[0])
        handled = {n: await _handled_at(apps[0], "rang", str(n)) for n in due}
        fired = Counter(
            [
                s.event.n
                async for s in apps[0].read_log(pattern="faults.clock.rang")
                if isinstance(s.event, Rang)
            ]
        )
    early = [n for n, times in handled.items() if any(at < due[n] for at in times)]
    result = Tally(
        scenario=f"clock jumps, timers (seed {seed})",
        events=TIMERS,
        lost=sum(1 for times in handled.values() if not times),
        duplicated=sum(len(times) - 1 for times in handled.values() if times)
        + sum(count - 1 for count in fired.values()),
        out_of_order=0,
        recovery=0.0,
    )
    print(result, f"early {len(early)}")
    assert result.clean, result
    assert early == [] and left == 0


async def _handled_at(app: App, collection: str, key: str) -> list[datetime]:
    """The clock's time at each committed handling of an event (their document's key)."""
    raw = await app.store.get_document(collection, key)
    return [] if raw is None else msgspec.json.decode(raw, type=list[datetime])


async def _timers_left(app: App) -> int:
    ((count,),) = await asyncio.to_thread(raw_execute, app.store.url, "SELECT count(*) FROM tidings_timers")
    return int(count)
