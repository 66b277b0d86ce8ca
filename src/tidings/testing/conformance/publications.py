"""Events published while handling another: their ids are derived from the handled event, the
group and their place in the handler's run, so that a handler run again (a retry, a redelivery
after a crash, a redrive) publishes each of them once. Asserted on every backend."""

from __future__ import annotations

from collections import defaultdict

from tidings.app import App
from tidings.domain.ids import publication_id
from tidings.runtime.context import Context
from tidings.testing.conformance.bus import FAST, RUN
from tidings.testing.conformance.events import Ping, Pong, unique
from tidings.testing.eventually import eventually


async def test_a_handler_run_again_publishes_each_event_once(store_url: str) -> None:
    """The handler publishes at once (``ctx.publish``) and through its unit of work, then fails
    its first attempt: the second attempt's ``ctx.publish`` is the stored no-op."""
    app = App("publications", store=store_url)
    key = unique("echo")
    attempts: dict[int, int] = defaultdict(int)

    @app.subscribe("conformance.bus.ping", group="echo", retry=FAST)
    async def echo(event: Ping, ctx: Context) -> None:
        attempts[event.n] += 1
        await ctx.publish(Pong(key=event.key, n=event.n), key=f"{event.key}-now")
        async with ctx.unit_of_work() as uow:
            uow.publish(Pong(key=event.key, n=100 + event.n), key=f"{event.key}-committed")
        if ctx.attempt == 1:
            raise RuntimeError("fails once, after publishing")

    async with app:
        pings = [await app.publish(Ping(key=key, n=n), key=key) for n in range(3)]
        async with app.running(**RUN):
            await eventually(lambda: _stream_length(app, f"{key}-committed", 3))
        now = await app.read_stream(f"{key}-now")
        committed = await app.read_stream(f"{key}-committed")
    assert dict(attempts) == {0: 2, 1: 2, 2: 2}
    assert [s.event for s in now] == [Pong(key=key, n=n) for n in range(3)], "published again on a retry"
    assert [s.event for s in committed] == [Pong(key=key, n=100 + n) for n in range(3)]
    # ctx.publish and uow.publish count together, in the order the handler made them.
    expected = [publication_id(p.envelope.id, p.envelope.time, "echo", 0) for p in pings]
    assert [s.envelope.id for s in now] == expected
    expected = [publication_id(p.envelope.id, p.envelope.time, "echo", 1) for p in pings]
    assert [s.envelope.id for s in committed] == expected


async def test_each_group_publishes_its_own_events(store_url: str) -> None:
    """Two groups reacting to one event with the same publication publish two events: the group
    is part of the id."""
    app = App("publications", store=store_url)
    key = unique("groups")

    for group in ("north", "south"):

        @app.subscribe("conformance.bus.ping", group=group)
        async def react(event: Ping, ctx: Context) -> None:
            await ctx.publish(Pong(key=event.key, n=event.n), key=f"{event.key}-pongs")

    async with app:
        ping = await app.publish(Ping(key=key, n=7), key=key)
        async with app.running(**RUN):
            await eventually(lambda: _stream_length(app, f"{key}-pongs", 2))
        pongs = await app.read_stream(f"{key}-pongs")
    assert {s.envelope.id for s in pongs} == {
        publication_id(ping.envelope.id, ping.envelope.time, group, 0) for group in ("north", "south")
    }


async def _stream_length(app: App, stream: str, n: int) -> bool:
    return len(await app.read_stream(stream)) >= n
