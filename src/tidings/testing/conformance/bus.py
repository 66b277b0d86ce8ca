"""The bus: consumer groups over the log, asserted on every backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import msgspec

from tidings.app import App
from tidings.domain.envelope import Envelope
from tidings.errors import AggregateNotFound, InvalidArgument
from tidings.runtime.context import Context
from tidings.runtime.retries import Retry
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.aggregates import Cart
from tidings.testing.conformance.events import Alarm, Ping, Pong, unique
from tidings.testing.eventually import eventually

_running: dict[int, contextlib.AbstractAsyncContextManager[App]] = {}


async def stack_running(app: App) -> None:
    """Start an app's consumers in the middle of a test (``stop_running`` ends them)."""
    _running[id(app)] = app.running(**RUN)
    await _running[id(app)].__aenter__()


async def stop_running(app: App) -> None:
    await _running.pop(id(app)).__aexit__(None, None, None)


FAST = Retry(attempts=3, backoff=0.01, max_backoff=0.02)
RUN = {"lease_ttl": 2.0, "poll": 0.5}


async def test_every_group_gets_every_matching_event(store_url: str) -> None:
    app = App("bus", store=store_url)
    seen: dict[str, list[int]] = defaultdict(list)

    @app.subscribe("conformance.bus.*", group="audit")
    async def audit(event: Ping, ctx: Context) -> None:
        seen["audit"].append(event.n)

    @app.subscribe("conformance.bus.ping", group="billing")
    async def billing(event: Ping, ctx: Context) -> None:
        seen["billing"].append(event.n)

    async with app, app.running(**RUN):
        for n in range(20):
            await app.publish(Ping(key=f"k{n % 4}", n=n), key=f"k{n % 4}")
        await app.publish(Alarm(level=1))  # matches neither pattern
        await eventually(lambda: len(seen["audit"]) == 20 and len(seen["billing"]) == 20)
    assert sorted(seen["audit"]) == sorted(seen["billing"]) == list(range(20))


async def test_order_per_key_with_competing_members(store_url: str) -> None:
    """Two members share the partitions (the second joins while the first works, so partitions
    move); each key's effects land once each, in publishing order."""
    members: dict[str, set[str]] = defaultdict(set)
    apps = [App(f"worker{i}", store=store_url) for i in range(2)]
    keys = [f"order-{k}" for k in range(12)]
    for app in apps:

        @app.subscribe("conformance.bus.ping", group="workers")
        async def work(event: Ping, ctx: Context, app: App = app) -> None:
            members[app.name].add(event.key)
            async with ctx.unit_of_work() as uow:
                seen = await uow.get("order", event.key, list[int]) or []
                uow.put("order", event.key, [*seen, event.n])

    async def all_done() -> bool:
        for key in keys:
            if await apps[0].store.get_document("order", key) != msgspec.json.encode(list(range(10))):
                return False
        return True

    async with apps[0], apps[1], apps[0].running(**RUN):
        for n in range(10):
            for key in keys:
                await apps[n % 2].publish(Ping(key=key, n=n), key=key)
            if n == 3:
                await stack_running(apps[1])
        await eventually(all_done, within=20)
        await stop_running(apps[1])
    assert all(members.values()), "both members should have had partitions"


async def test_a_new_group_replays_from_the_start_at_its_own_pace(store_url: str) -> None:
    publisher = App("publisher", store=store_url)
    async with publisher:
        for n in range(15):
            await publisher.publish(Ping(key="k", n=n), key="k")
    late = App("late", store=store_url)
    got: list[int] = []

    @late.subscribe("conformance.>", group="late-joiner")
    async def catch_up(event: Ping, ctx: Context) -> None:
        got.append(event.n)

    async with late, late.running(**RUN):
        await eventually(lambda: len(got) == 15)
        await late.publish(Ping(key="k", n=15), key="k")
        await eventually(lambda: len(got) == 16)
    assert got == list(range(16))


async def test_effects_through_the_unit_of_work_happen_once(store_url: str) -> None:
    app = App("bus", store=store_url)
    calls: list[int] = []

    @app.subscribe("conformance.bus.ping", group="counter")
    async def count(event: Ping, ctx: Context) -> None:
        calls.append(event.n)
        async with ctx.unit_of_work() as uow:
            total = await uow.get("totals", event.key, int) or 0
            uow.put("totals", event.key, total + event.n)
            uow.publish(Pong(key=event.key, n=event.n), key=event.key)

    async with app:
        async with app.running(**RUN):
            for n in range(1, 6):
                await app.publish(Ping(key="sum", n=n), key="sum")
            await eventually(lambda: len(calls) == 5)
            await eventually(lambda: app_total(app, "sum", 15))
        # Redelivery: the group's checkpoints go back to 0; the inbox recognises every event.
        async with app.store.transaction() as tx:
            for partition in range(app.store.feed.partitions):
                await tx.set_checkpoint(app.feed.checkpoint_name("counter", partition), 0)
        async with app.running(**RUN):
            await asyncio.sleep(0.5)
        assert calls == [1, 2, 3, 4, 5]
        assert await app.store.get_document("totals", "sum") == b"15"
        pongs = [s.event async for s in app.read_log(pattern="conformance.bus.pong")]
        assert [p.n for p in pongs if isinstance(p, Pong)] == [1, 2, 3, 4, 5]


async def test_a_unit_that_cannot_commit_fails_alone(store_url: str) -> None:
    """Units of work of one batch commit together; one whose effects the store refuses (here a
    publication over the size limit) is dead-lettered on its own, and the others commit once."""
    app = App("bus", store=store_url, max_event_size=4096)
    calls: list[int] = []

    @app.subscribe("conformance.bus.ping", group="batched", retry=Retry(attempts=1))
    async def note(event: Ping, ctx: Context) -> None:
        calls.append(event.n)
        async with ctx.unit_of_work() as uow:
            seen = await uow.get("notes", event.key, list[int]) or []
            uow.put("notes", event.key, [*seen, event.n])
            uow.publish(Pong(key="x" * 5000 if event.n == 3 else event.key, n=event.n), key=event.key)

    async with app:
        for n in range(6):
            await app.publish(Ping(key="b", n=n), key="b")
        async with app.running(**RUN):
            await eventually(lambda: _count(lambda: app.dead_letters("batched"), 1))
            await eventually(lambda: app_document(app, "notes", "b", [0, 1, 2, 4, 5]))
        letters = await app.dead_letters("batched")
        pongs = [s.event async for s in app.read_log(pattern="conformance.bus.pong")]
    assert [(x.reason, x.error.split(":")[0]) for x in letters] == [("failed", "PayloadTooLarge")]
    assert [p.n for p in pongs if isinstance(p, Pong)] == [0, 1, 2, 4, 5]
    assert sorted(set(calls)) == list(range(6))


async def app_document(app: App, collection: str, key: str, expected: object) -> bool:
    return await app.store.get_document(collection, key) == msgspec.json.encode(expected)


async def app_total(app: App, key: str, expected: int) -> bool:
    return await app.store.get_document("totals", key) == str(expected).encode()


async def test_published_events_carry_correlation_and_causation(store_url: str) -> None:
    app = App("bus", store=store_url)

    @app.subscribe("conformance.bus.ping", group="replier")
    async def reply(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            uow.publish(Pong(key=event.key, n=event.n), key=event.key)

    async with app, app.running(**RUN):
        first = await app.publish(Ping(key="c", n=1), key="c", correlation_id="journey-7")
        second = await app.publish(Ping(key="c", n=2), key="c")

        async def pongs() -> list[Envelope]:
            return [s.envelope async for s in app.read_log(pattern="conformance.bus.pong")]

        await eventually(lambda: _count(pongs, 2))
        replies = await pongs()
    assert [(e.correlationid, e.causationid) for e in replies] == [
        ("journey-7", first.envelope.id),
        (second.envelope.id, second.envelope.id),
    ]


async def _count(source: object, n: int) -> bool:
    assert callable(source)
    return len(await source()) == n


async def test_a_poison_event_is_dead_lettered_and_does_not_block_others(store_url: str) -> None:
    app = App("bus", store=store_url)
    handled: list[tuple[str, int]] = []
    attempts: list[int] = []

    @app.subscribe("conformance.bus.ping", group="picky", retry=FAST)
    async def picky(event: Ping, ctx: Context) -> None:
        if event.n == 3:
            attempts.append(ctx.attempt)
            raise ValueError("three is right out")
        handled.append((event.key, event.n))

    async with app, app.running(**RUN):
        for n in range(6):
            await app.publish(Ping(key="a", n=n), key="a")
            await app.publish(Ping(key="b", n=n), key="b")
        await eventually(lambda: len(handled) == 10)
        letters = await app.dead_letters("picky")
    assert sorted(attempts) == [1, 1, 2, 2, 3, 3]  # two keys, failing side by side
    assert sorted(handled) == sorted((k, n) for k in "ab" for n in range(6) if n != 3)
    assert len(letters) == 2 and {letter.reason for letter in letters} == {"failed"}
    letter = letters[0]
    assert letter.attempts == 3 and "three is right out" in letter.error
    assert "ValueError" in letter.traceback and letter.envelope is not None
    assert letter.first_failed is not None and letter.first_failed <= letter.dead_at


async def test_errors_the_retry_names_are_dead_lettered_at_once(store_url: str) -> None:
    """``Retry(dead_letter_on=...)`` and tidings' errors that another attempt would only repeat
    (an ``InvalidArgument`` here) go to the dead letter queue after one attempt; others are
    retried up to the budget."""
    app = App("bus", store=store_url)
    raised = {1: KeyError("no such sku"), 2: InvalidArgument("a bad argument"), 3: RuntimeError("flaky")}
    attempts: dict[int, list[int]] = defaultdict(list)

    @app.subscribe(
        "conformance.bus.ping",
        group="decisive",
        retry=Retry(attempts=3, backoff=0.01, dead_letter_on=(KeyError,)),
    )
    async def decisive(event: Ping, ctx: Context) -> None:
        attempts[event.n].append(ctx.attempt)
        raise raised[event.n]

    async with app, app.running(**RUN):
        for n in raised:
            await app.publish(Ping(key=f"d{n}", n=n), key=f"d{n}")
        await eventually(lambda: _letters(app, "decisive", 3))
        letters = await app.dead_letters("decisive")
    assert attempts == {1: [1], 2: [1], 3: [1, 2, 3]}
    found = sorted((x.key, x.reason, x.attempts, x.error.split(":")[0]) for x in letters)
    assert found == [
        ("d1", "failed", 1, "KeyError"),
        ("d2", "failed", 1, "InvalidArgument"),
        ("d3", "failed", 3, "RuntimeError"),
    ]


async def test_a_handler_loads_or_creates_an_aggregate(store_url: str) -> None:
    """``uow.load(cls, id, create=True)``: the first event of a key creates the aggregate, the
    next ones load it; nothing is dead-lettered."""
    app = App("bus", store=store_url)
    cart_id = unique("cart")

    @app.subscribe("conformance.bus.ping", group="carts", retry=FAST)
    async def add_item(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            cart = await uow.load(Cart, event.key, create=True)
            cart.add(f"sku-{event.n}")
            uow.save(cart)

    async def filled() -> bool:
        try:
            return len((await app.load(Cart, cart_id)).items) == 3
        except AggregateNotFound:
            return False

    async with app, app.running(**RUN):
        for n in range(3):
            await app.publish(Ping(key=cart_id, n=n), key=cart_id)
        await eventually(filled)
        assert await app.dead_letters("carts") == []


async def test_redrive_goes_to_the_dead_lettering_group_only(store_url: str) -> None:
    app = App("bus", store=store_url)
    broken = {"on": True}
    fixed: list[int] = []
    bystander: list[int] = []

    @app.subscribe("conformance.bus.ping", group="fragile", retry=Retry(attempts=1))
    async def fragile(event: Ping, ctx: Context) -> None:
        if broken["on"]:
            raise RuntimeError("downstream is down")
        fixed.append(event.n)

    @app.subscribe("conformance.bus.ping", group="bystander")
    async def other(event: Ping, ctx: Context) -> None:
        bystander.append(event.n)

    async with app, app.running(**RUN):
        await app.publish(Ping(key="r", n=7), key="r")
        await eventually(lambda: _letters(app, "fragile", 1))
        broken["on"] = False
        (letter,) = await app.dead_letters("fragile")
        assert await app.redrive([letter.id]) == 1
        await eventually(lambda: fixed == [7])

        async def settled() -> bool:  # the handler ran; its commit settles the letter
            return [x.state for x in await app.dead_letters("fragile", state=None)] == ["redriven"]

        await eventually(settled)
        assert await app.dead_letters("fragile") == []
    assert bystander == [7]


async def _letters(app: App, group: str, n: int) -> bool:
    return len(await app.dead_letters(group)) == n


async def test_an_expired_event_never_reaches_a_handler(store_url: str) -> None:
    clock = ManualClock(datetime.now(UTC))
    app = App("bus", store=store_url, clock=clock)
    handled: list[int] = []

    @app.subscribe("conformance.bus.ping", group="timely", max_age=timedelta(minutes=5))
    async def timely(event: Ping, ctx: Context) -> None:
        handled.append(event.n)

    async with app:
        await app.publish(Ping(key="t", n=1), key="t", ttl=timedelta(seconds=30))
        await app.publish(Ping(key="t", n=2), key="t")  # no deadline of its own: max_age holds
        await app.publish(Ping(key="t", n=3), key="t", ttl=timedelta(hours=1))
        clock.advance(timedelta(minutes=2))  # past the first one's ttl, within max_age
        async with app.running(**RUN):
            await eventually(lambda: handled == [2, 3])
        clock.advance(timedelta(minutes=10))  # everything is older than max_age now
        await app.publish(Ping(key="t", n=4), key="t")
        clock.advance(timedelta(minutes=6))
        async with app.running(**RUN):
            await eventually(lambda: _letters(app, "timely", 2))
        letters = await app.dead_letters("timely")
    assert handled == [2, 3]
    assert [letter.reason for letter in letters] == ["expired", "expired"]
    assert "expired 90.000 s" in letters[0].error  # 2 min after a 30 s ttl
    assert "expired 60.000 s" in letters[1].error  # 6 min after it was published, max_age 5 min


async def test_a_handled_event_read_again_after_its_deadline_is_not_dead_lettered(store_url: str) -> None:
    """A redelivery (a crash before the checkpoint moved, a handover) of an event the group has
    handled is a duplicate whatever its age: no handler run, and no `expired` letter for an event
    whose effects committed."""
    clock = ManualClock(datetime.now(UTC))
    app = App("bus", store=store_url, clock=clock)
    handled: list[int] = []

    @app.subscribe("conformance.bus.ping", group="timely", max_age=timedelta(minutes=5))
    async def timely(event: Ping, ctx: Context) -> None:
        handled.append(event.n)

    async with app:
        await app.publish(Ping(key="t", n=1), key="t")
        async with app.running(**RUN):
            await eventually(lambda: handled == [1])
        feed = app.feed
        async with app.store.transaction() as tx:  # as if no checkpoint had been committed
            for partition in range(feed.partitions):
                await tx.set_checkpoint(feed.checkpoint_name("timely", partition), 0)
        clock.advance(timedelta(minutes=10))  # the event is past its max_age when read again
        await app.publish(Ping(key="t", n=2), key="t")
        clock.advance(timedelta(minutes=6))
        async with app.running(**RUN):
            # One key, one partition: by the time the second event's letter is there, the first
            # (read again before it) has been decided too.
            async def second_decided() -> bool:
                return any("60.000 s" in letter.error for letter in await app.dead_letters("timely"))

            await eventually(second_decided)
        letters = await app.dead_letters("timely")
    assert handled == [1]
    assert [letter.error for letter in letters] == ["expired 60.000 s before it could be handled"]


async def test_an_undecodable_event_is_dead_lettered_as_malformed(store_url: str) -> None:
    app = App("bus", store=store_url)
    handled: list[int] = []

    @app.subscribe("conformance.bus.>", group="sturdy")
    async def sturdy(event: Ping, ctx: Context) -> None:
        handled.append(event.n)

    stray = Envelope(
        id=unique("stray"),
        source="elsewhere",
        type="conformance.NobodyKnowsMe",
        topic="conformance.bus.stray",
        time=datetime.now(UTC),
        data=b'{"what":"ever"}',
    )
    async with app, app.running(**RUN):
        await app.publish(Ping(key="m", n=1), key="m")
        await app.store.append("m", [stray])
        await app.publish(Ping(key="m", n=2), key="m")
        await eventually(lambda: handled == [1, 2])
        letters = await app.dead_letters("sturdy")
    assert [(x.reason, x.event_id) for x in letters] == [("malformed", stray.id)]
    assert "unknown event type" in letters[0].error


async def test_ordered_groups_park_a_key_behind_its_dead_letter(store_url: str) -> None:
    app = App("bus", store=store_url)
    broken = {"on": True}
    handled: dict[str, list[int]] = defaultdict(list)

    @app.subscribe("conformance.bus.ping", group="strict", retry=Retry(attempts=1), ordered=True)
    async def strict(event: Ping, ctx: Context) -> None:
        if broken["on"] and (event.key, event.n) == ("a", 2):
            raise RuntimeError("a2 cannot be handled yet")
        handled[event.key].append(event.n)

    async def letters(reason: str) -> list[int]:
        return [x.id for x in await app.dead_letters("strict") if x.reason == reason]

    async with app, app.running(**RUN):
        for n in range(6):
            await app.publish(Ping(key="a", n=n), key="a")
            await app.publish(Ping(key="b", n=n), key="b")
        await eventually(lambda: handled["b"] == list(range(6)))

        async def parked() -> bool:
            return len(await letters("parked")) == 3

        await eventually(parked)
        assert handled["a"] == [0, 1], "the key stops at its dead letter"
        broken["on"] = False
        await app.redrive(await letters("failed"))
        await eventually(lambda: handled["a"] == list(range(6)), within=20)
        # Once the key has drained, its new events flow again.
        await app.publish(Ping(key="a", n=6), key="a")
        await eventually(lambda: handled["a"] == list(range(7)), within=20)
    assert handled["b"] == list(range(6))


async def test_purging_a_keys_blocking_letter_releases_its_parked_events(store_url: str) -> None:
    """An operator who gives up on the event that blocks a key (purges its letter) resolves it:
    the key's parked events are handled in order and its new events flow again. (They waited
    for ever, as did a parked letter written just after its key's last unpark.)"""
    app = App("bus", store=store_url)
    handled: list[int] = []

    @app.subscribe("conformance.bus.ping", group="strict", retry=Retry(attempts=1), ordered=True)
    async def strict(event: Ping, ctx: Context) -> None:
        if event.n == 1:
            raise RuntimeError("1 is poison")
        handled.append(event.n)

    async def letters(reason: str) -> list[int]:
        return [x.id for x in await app.dead_letters("strict") if x.reason == reason]

    async with app, app.running(**RUN):
        for n in range(4):
            await app.publish(Ping(key="p", n=n), key="p")

        async def parked() -> bool:
            return len(await letters("parked")) == 2

        await eventually(parked)
        assert handled == [0]
        assert await app.purge(await letters("failed")) == 1
        await eventually(lambda: handled == [0, 2, 3], within=20)
        await app.publish(Ping(key="p", n=4), key="p")
        await eventually(lambda: handled == [0, 2, 3, 4], within=20)
        assert await app.dead_letters("strict") == []


async def test_appends_by_another_process_wake_consumers(store_url: str) -> None:
    """The consumer's fallback poll is 30 s here: only the store's change signal (LISTEN/NOTIFY,
    or SQLite's change counter) can bring the other App's event in time."""
    consumer, producer = App("consumer", store=store_url), App("producer", store=store_url)
    got: list[int] = []

    @consumer.subscribe("conformance.bus.ping", group="woken")
    async def woken(event: Ping, ctx: Context) -> None:
        got.append(event.n)

    async with consumer, producer, consumer.running(lease_ttl=2.0, poll=30.0):
        await asyncio.sleep(0.3)  # the consumer is idle, waiting
        for n in range(3):
            await producer.publish(Ping(key="w", n=n), key="w")
            await eventually(lambda n=n: got == list(range(n + 1)), within=5)
