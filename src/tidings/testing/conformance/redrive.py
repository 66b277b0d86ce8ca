"""Redrive with several members of a group: a letter is handled once, by one member, and a
handled letter never returns to ``dead``. Asserted on every backend (run by the bus suite)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgspec
import pytest

from tidings.app import App
from tidings.domain.dead_letters import DeadLetterState
from tidings.runtime.context import Context
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


async def test_a_hanging_redrive_does_not_hold_up_the_lease_renewals(store_url: str) -> None:
    """Two members; the redriven handler blocks for three lease periods. Its member keeps
    renewing its leases meanwhile, so the other member never takes the letter's partition over
    and never runs the letter; released, the run commits: one run, one effect. (Redrives ran
    inside the lease loop: the leases lapsed and the other member ran the letter a second
    time while the first still worked on it.)"""
    apps = [App(f"redriver{i}", store=store_url) for i in range(2)]
    group = unique("redrivers")
    broken = {"on": True}
    released = asyncio.Event()
    runs: list[str] = []
    for app in apps:

        @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1))
        async def handle(event: Ping, ctx: Context, app: App = app) -> None:
            if broken["on"]:
                raise RuntimeError("downstream is down")
            runs.append(app.name)
            await released.wait()
            await _count_effect(ctx, event.key)

    key = unique("letter")
    async with apps[0], apps[1], apps[0].running(**MEMBERS), apps[1].running(**MEMBERS):
        await apps[0].publish(Ping(key=key, n=1), key=key)
        await eventually(lambda: _all_in(apps[0], group, "dead", 1), within=20)
        broken["on"] = False
        (letter,) = await apps[0].dead_letters(group)
        await apps[0].redrive([letter.id])
        await eventually(lambda: bool(runs), within=20)
        await asyncio.sleep(3 * MEMBERS["lease_ttl"])  # leases not renewed would lapse meanwhile
        runs_while_blocked = list(runs)
        released.set()
        await eventually(lambda: _all_in(apps[0], group, "redriven", 1), within=20)
        effects = await _effects(apps[0], [key])
    assert len(runs_while_blocked) == 1, runs_while_blocked
    assert len(runs) == 1, runs
    assert effects == [1]


@pytest.mark.parametrize("meanwhile", ["purged", "redriven"])
@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
async def test_a_run_whose_letter_left_redrive_meanwhile_changes_nothing(
    store_url: str, meanwhile: str, outcome: str
) -> None:
    """While a redriven handler runs, the letter leaves ``redrive``: an operator purges it, or
    another member's run settles it (done here as that run's commit does). The run then
    changes nothing, whether it succeeds or fails: no effect, no inbox record, the letter keeps
    the state it was given. (A run that succeeded committed its effects anyway; one that failed
    used to put the letter back to ``dead``.)"""
    app = App("redriver", store=store_url)
    group = unique("redrivers")
    broken = {"on": True}
    started, released = asyncio.Event(), asyncio.Event()

    @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1))
    async def handle(event: Ping, ctx: Context) -> None:
        if broken["on"]:
            raise RuntimeError("downstream is down")
        started.set()
        await released.wait()
        if outcome == "fails":
            raise RuntimeError("failed after the letter left redrive")
        await _count_effect(ctx, event.key)

    key = unique("letter")
    async with app, app.running(**MEMBERS):
        await app.publish(Ping(key=key, n=1), key=key)
        await eventually(lambda: _all_in(app, group, "dead", 1), within=20)
        broken["on"] = False
        (letter,) = await app.dead_letters(group)
        await app.redrive([letter.id])
        await asyncio.wait_for(started.wait(), 20)
        if meanwhile == "purged":
            assert await app.purge([letter.id]) == 1
        else:
            async with app.store.transaction() as tx:
                assert await tx.groups.settle_dead_letter(letter.id, DeadLetterState.REDRIVEN)
        released.set()
        # The run has ended once no letter is left in redrive and a pass has run since.
        await asyncio.sleep(2 * MEMBERS["lease_ttl"])
        states = await _states(app, group)
        effects = await _effects(app, [key])
        inbox = await app.groups.handled(group, [letter.event_id or ""])
    assert states == [meanwhile]
    assert effects == [0]
    assert inbox == set()


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
