"""Redrive with several members of a group: a letter is handled once, by one member, and a
handled letter never returns to ``dead``. Asserted on every backend (run by the bus suite)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import msgspec

from tidings.runtime.app import App
from tidings.runtime.consuming import Context
from tidings.runtime.retries import Retry
from tidings.testing.conformance.events import Ping, unique
from tidings.testing.eventually import eventually

#: Short leases, so that a member that stops renewing loses its partitions within the test.
MEMBERS = {"lease_ttl": 1.5, "poll": 0.1}


async def _states(app: App, group: str) -> list[str]:
    return [letter.state for letter in await app.dead_letters(group, state=None)]


async def _all_in(app: App, group: str, state: str, n: int) -> bool:
    return await _states(app, group) == [state] * n


async def _count_effect(ctx: Context, key: str) -> None:
    async with ctx.unit_of_work() as uow:
        done = await uow.get("redriven", key, int) or 0
        uow.put("redriven", key, done + 1)


async def _effects(app: App, keys: list[str]) -> list[int]:
    found = [await app.store.get_document("redriven", key) for key in keys]
    return [0 if value is None else msgspec.json.decode(value, type=int) for value in found]


async def test_two_members_redrive_each_letter_once(store_url: str) -> None:
    """Two members of one group, 12 dead letters of 12 keys queued for redrive: 12 handler runs
    in all, one per letter, each effect committed once. (Every member used to redrive every
    letter: 23 runs for 12 letters.)"""
    apps = [App(f"redriver{i}", store=store_url) for i in range(2)]
    group = unique("redrivers")
    broken = {"on": True}
    runs: dict[str, list[str]] = defaultdict(list)  # event id -> the members that ran it
    for app in apps:

        @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1))
        async def handle(event: Ping, ctx: Context, app: App = app) -> None:
            if broken["on"]:
                raise RuntimeError("downstream is down")
            runs[ctx.envelope.id].append(app.name)
            await asyncio.sleep(0.05)  # a pass of 12 letters outlasts the time between passes
            await _count_effect(ctx, event.key)

    keys = [f"{group}-{n}" for n in range(12)]
    async with apps[0], apps[1], apps[0].running(**MEMBERS), apps[1].running(**MEMBERS):
        for n, key in enumerate(keys):
            await apps[n % 2].publish(Ping(key=key, n=n), key=key)
        await eventually(lambda: _all_in(apps[0], group, "dead", 12), within=20)
        broken["on"] = False
        letters = await apps[0].dead_letters(group)
        assert await apps[0].redrive([letter.id for letter in letters]) == 12
        await eventually(lambda: _all_in(apps[0], group, "redriven", 12), within=20)
        await asyncio.sleep(2 * MEMBERS["lease_ttl"])  # time for any member's further passes
        effects = await _effects(apps[0], keys)
    assert sum(len(members) for members in runs.values()) == 12, dict(runs)
    assert sorted(len(members) for members in runs.values()) == [1] * 12
    assert effects == [1] * 12


async def test_a_run_that_fails_after_another_member_handled_the_letter_leaves_it_handled(
    store_url: str,
) -> None:
    """The first run of a redriven letter waits until another run has settled it, then fails.
    The other run is by the member that takes the partition over (the first member's leases
    lapse while its handler waits); its commit settles the letter as redriven, and the first
    run's failure changes nothing: the letter stays redriven, its effect committed once.
    (It used to go back to ``dead``.)"""
    apps = [App(f"redriver{i}", store=store_url) for i in range(2)]
    group = unique("redrivers")
    broken = {"on": True}
    runs: list[str] = []
    failed: list[str] = []
    for app in apps:

        @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1))
        async def handle(event: Ping, ctx: Context, app: App = app) -> None:
            if broken["on"]:
                raise RuntimeError("downstream is down")
            runs.append(app.name)
            if len(runs) > 1:
                await _count_effect(ctx, event.key)
                return
            with contextlib.suppress(AssertionError):  # fails anyway, after 20 s
                await eventually(lambda: _all_in(app, group, "redriven", 1), within=20)
            failed.append(app.name)
            raise RuntimeError("failed after the letter was handled")

    key = unique("letter")
    async with apps[0], apps[1], apps[0].running(**MEMBERS), apps[1].running(**MEMBERS):
        await apps[0].publish(Ping(key=key, n=1), key=key)
        await eventually(lambda: _all_in(apps[0], group, "dead", 1), within=20)
        broken["on"] = False
        (letter,) = await apps[0].dead_letters(group)
        await apps[0].redrive([letter.id])
        await eventually(lambda: bool(failed), within=30)
        await asyncio.sleep(MEMBERS["lease_ttl"])  # the failed run's outcome has been written
        states = await _states(apps[0], group)
        effects = await _effects(apps[0], [key])
    assert states == ["redriven"]
    assert effects == [1]
    assert len(runs) == 2 and runs[0] != runs[1], runs  # one run each, by two members


async def test_a_letter_queued_again_after_it_was_handled_is_not_handled_again(store_url: str) -> None:
    """A letter whose event is in the group's inbox already (redriven before) is settled as
    redriven without running the handler again."""
    app = App("redriver", store=store_url)
    group = unique("redrivers")
    broken = {"on": True}
    runs: list[int] = []

    @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1))
    async def handle(event: Ping, ctx: Context) -> None:
        if broken["on"]:
            raise RuntimeError("downstream is down")
        runs.append(event.n)
        await _count_effect(ctx, event.key)

    key = unique("letter")
    async with app, app.running(**MEMBERS):
        await app.publish(Ping(key=key, n=5), key=key)
        await eventually(lambda: _all_in(app, group, "dead", 1), within=20)
        broken["on"] = False
        (letter,) = await app.dead_letters(group)
        await app.redrive([letter.id])
        await eventually(lambda: _all_in(app, group, "redriven", 1), within=20)
        assert await app.redrive([letter.id]) == 1  # queued once more
        await eventually(lambda: _all_in(app, group, "redriven", 1), within=20)
        effects = await _effects(app, [key])
    assert runs == [5]
    assert effects == [1]
