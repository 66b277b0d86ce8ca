"""Aggregates, snapshots, time travel, projections and upcasting through the App."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio

from tidings.app import App
from tidings.domain.aggregate import Aggregate
from tidings.domain.envelope import Envelope, Stored
from tidings.domain.events import Event
from tidings.errors import AggregateNotFound, ConcurrencyError, InvalidArgument
from tidings.ports import Snapshot
from tidings.runtime.context import Context
from tidings.runtime.projection import Projection, View
from tidings.runtime.retries import Retry
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.events import CartCheckedOut, ItemAdded, Ping, unique
from tidings.testing.eventually import eventually


class Cart(Aggregate, category="conformance_cart", snapshot_every=50):
    items: dict[str, int] = {}  # noqa: RUF012 - state default, copied per instance
    checked_out: bool = False
    total: int = 0

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.applied = 0  # not state: counts events replayed, to see whether a snapshot was used

    def add(self, sku: str, quantity: int = 1) -> None:
        if self.checked_out:
            raise ValueError("cart is checked out")
        self.record(ItemAdded(cart_id=self.id, sku=sku, quantity=quantity))

    def check_out(self) -> None:
        self.record(CartCheckedOut(cart_id=self.id, total=sum(self.items.values())))

    def apply(self, event: Event) -> None:
        self.applied += 1
        match event:
            case ItemAdded(sku=sku, quantity=quantity):
                self.items[sku] = self.items.get(sku, 0) + quantity
            case CartCheckedOut(total=total):
                self.checked_out, self.total = True, total


@pytest_asyncio.fixture
async def app(store_url: str) -> AsyncIterator[App]:
    async with App("conformance", store=store_url) as opened:
        yield opened


async def test_save_and_load_an_aggregate(app: App) -> None:
    cart = Cart(unique("c"))
    cart.add("apple", 2)
    cart.add("pear")
    await app.save(cart)
    assert cart.version == 2 and cart.pending == ()
    loaded = await app.load(Cart, cart.id)
    assert loaded.items == {"apple": 2, "pear": 1} and loaded.version == 2
    assert Cart(unique("fresh")).items == {}  # state defaults are not shared between instances
    with pytest.raises(AggregateNotFound, match="no events"):
        await app.load(Cart, unique("nobody"))


async def test_saving_a_stale_aggregate_is_a_concurrency_error(app: App) -> None:
    cart = Cart(unique("c"))
    cart.add("apple")
    await app.save(cart)
    first, second = await app.load(Cart, cart.id), await app.load(Cart, cart.id)
    first.add("pear")
    await app.save(first)
    second.add("plum")
    with pytest.raises(ConcurrencyError):
        await app.save(second)
    assert (await app.load(Cart, cart.id)).items == {"apple": 1, "pear": 1}


async def test_load_or_create(app: App) -> None:
    """``create=True``: a stream without events gives a new aggregate, whose save requires the
    stream to be new still; a stream with events loads as usual."""
    cart_id = unique("c")
    first = await app.load(Cart, cart_id, create=True)
    assert first.version == 0 and first.items == {} and first.id == cart_id
    rival = await app.load(Cart, cart_id, create=True)
    first.add("apple")
    await app.save(first)
    assert first.version == 1
    rival.add("pear")
    with pytest.raises(ConcurrencyError):  # both created it: the second save is refused
        await app.save(rival)
    again = await app.load(Cart, cart_id, create=True)
    assert again.items == {"apple": 1} and again.version == 1
    with pytest.raises(InvalidArgument, match="create=True"):
        await app.load(Cart, cart_id, version=1, create=True)


async def test_time_travel_by_version_and_time(app: App) -> None:
    cart = Cart(unique("c"))
    cart.add("apple")
    await app.save(cart)
    records = await app.read_stream(cart.stream)
    between = records[-1].envelope.time + timedelta(microseconds=1)
    cart.add("pear")
    cart.check_out()
    await app.save(cart)
    assert (await app.load(Cart, cart.id, version=1)).items == {"apple": 1}
    past = await app.load(Cart, cart.id, at=between)
    assert past.items == {"apple": 1} and not past.checked_out and past.version == 1
    now = await app.load(Cart, cart.id)
    assert now.checked_out and now.total == 2
    with pytest.raises(AggregateNotFound):
        await app.load(Cart, cart.id, at=datetime(2000, 1, 1, tzinfo=UTC))


async def test_snapshots_are_taken_and_used(app: App) -> None:
    cart = Cart(unique("c"))
    for n in range(120):
        cart.add(f"sku-{n % 7}")
        if n % 40 == 39:
            await app.save(cart)
    # Saves at versions 40, 80 and 120 cross the 50 and 100 boundaries at 80 and 120:
    # snapshots are taken at save time, of the version just saved.
    loaded = await app.load(Cart, cart.id)
    assert loaded.version == 120 and sum(loaded.items.values()) == 120
    assert loaded.applied == 0, "should start from the snapshot at 120"
    at_version = await app.load(Cart, cart.id, version=100)
    assert at_version.version == 100 and sum(at_version.items.values()) == 100
    assert at_version.applied == 20, "should start from the snapshot at 80"
    before_any = await app.load(Cart, cart.id, version=75)
    assert before_any.applied == 75 and sum(before_any.items.values()) == 75


async def test_a_snapshot_of_another_schema_is_ignored(app: App) -> None:
    cart = Cart(unique("c"))
    for _ in range(3):
        cart.add("apple")
    await app.save(cart)
    last = (await app.read_stream(cart.stream))[-1]
    for schema, state in (("Cart/0/old", b'{"items":{"apple":999}}'), (Cart.snapshot_schema(), b"{broken")):
        await app.store.save_snapshot(Snapshot(cart.stream, 3, schema, last.envelope.time, state))
        loaded = await app.load(Cart, cart.id)
        assert loaded.items == {"apple": 3} and loaded.applied == 3


async def test_a_handler_that_saves_past_snapshot_every_leaves_a_snapshot(store_url: str) -> None:
    """An aggregate saved in a handler's unit of work is snapshotted as one that ``App.save``
    saves: one save path. Two events of one key fill a cart with 30 items each, so that the
    second save crosses 50 (``snapshot_every``) at version 60."""
    app = App("conformance", store=store_url)

    @app.subscribe("conformance.bus.ping", group="cart-filler")
    async def fill(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            cart = await uow.load(Cart, event.key, create=True)
            for n in range(event.n):
                cart.add(f"sku-{n % 7}")
            uow.save(cart)

    cart_id = unique("handled")
    stream = Cart.stream_of(cart_id)

    async def snapshot_taken() -> bool:
        snapshot, _ = await app.store.read_from_snapshot(stream)
        return snapshot is not None

    async with app:
        for _ in range(2):
            await app.publish(Ping(key=cart_id, n=30), key=cart_id)
        async with app.running(lease_ttl=2.0, poll=0.5):
            await eventually(snapshot_taken)
        snapshot, after = await app.store.read_from_snapshot(stream)
        loaded = await app.load(Cart, cart_id)
        last = (await app.read_stream(stream))[-1]
    assert snapshot is not None and snapshot.version == 60 and after == []
    assert snapshot.schema == Cart.snapshot_schema() and snapshot.time == last.envelope.time
    assert loaded.version == 60 and sum(loaded.items.values()) == 60
    assert loaded.applied == 0, "should start from the snapshot at 60"


class Unsnappable(Cart, category="conformance_unsnappable", snapshot_every=50):
    """A cart whose state cannot be encoded for a snapshot (the aggregate's own code fails)."""

    def snapshot_state(self) -> bytes:
        raise RuntimeError("this state has no encoding")


async def test_a_snapshot_that_cannot_be_taken_fails_no_save(store_url: str) -> None:
    """The snapshot is taken after the save commits: an aggregate whose state cannot be encoded
    is saved as any other, by ``App.save`` (which returns its records and moves its version) and
    by a handler (no retry, no dead letter), and loads replay its events."""
    app = App("conformance", store=store_url)
    group = unique("unsnappable")

    @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1))
    async def fill(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            cart = await uow.load(Unsnappable, event.key, create=True)
            for n in range(event.n):
                cart.add(f"sku-{n % 7}")
            uow.save(cart)

    saved, handled = Unsnappable(unique("saved")), unique("handled")
    async with app:
        for n in range(60):  # crosses snapshot_every
            saved.add(f"sku-{n % 7}")
        records = await app.save(saved)
        assert len(records) == 60 and saved.version == 60 and not saved.pending
        await app.publish(Ping(key=handled, n=60), key=handled)
        async with app.running(lease_ttl=2.0, poll=0.5):
            await eventually(lambda: _has_events(app, Unsnappable.stream_of(handled)))
        letters = await app.dead_letters(group, state=None)
        loaded = [await app.load(Unsnappable, id) for id in (saved.id, handled)]
        snapshots = [await app.store.read_from_snapshot(cart.stream) for cart in loaded]
    assert letters == []
    assert [(cart.version, cart.applied) for cart in loaded] == [(60, 60), (60, 60)]
    assert [snapshot for snapshot, _ in snapshots] == [None, None]


async def test_events_are_stamped_by_the_apps_clock(store_url: str) -> None:
    """``App.append``, ``App.save`` (its snapshot too) and an aggregate saved by a handler all
    take their time from the App's clock, never from the machine's."""
    clock = ManualClock(datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC))
    app = App("conformance", store=store_url, clock=clock)

    @app.subscribe("conformance.bus.ping", group="cart-filler")
    async def fill(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            cart = await uow.load(Cart, event.key, create=True)
            cart.add("handled")
            uow.save(cart)

    appended, saved, handled = unique("appended"), Cart(unique("saved")), unique("handled")
    async with app:
        await app.append(appended, ItemAdded(cart_id=appended, sku="apple"))
        for n in range(50):  # up to snapshot_every: the save takes a snapshot
            saved.add(f"sku-{n % 7}")
        await app.save(saved)
        await app.publish(Ping(key=handled, n=1), key=handled)
        async with app.running(lease_ttl=2.0, poll=0.5):
            await eventually(lambda: _has_events(app, Cart.stream_of(handled)))
        snapshot, _ = await app.store.read_from_snapshot(saved.stream)
        streams = [appended, saved.stream, Cart.stream_of(handled)]
        times = {stream: {s.envelope.time for s in await app.read_stream(stream)} for stream in streams}
    assert times == {stream: {clock.now()} for stream in streams}
    assert snapshot is not None and snapshot.version == 50 and snapshot.time == clock.now()
    # An event encoded without a time of its own (tests, tools) takes the App's too.
    assert app.codec.encode(ItemAdded(cart_id=appended, sku="pear")).time == clock.now()


async def _has_events(app: App, stream: str) -> bool:
    return bool(await app.read_stream(stream))


class CartTotals(Projection):
    name = "conformance-cart-totals"
    pattern = "conformance.>"

    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on

    async def handle(self, stored: Stored[Event], view: View) -> None:
        event = stored.event
        if isinstance(event, ItemAdded):
            if event.sku == self.fail_on:
                raise RuntimeError("projection handler failed")
            count = await view.get(event.cart_id, int) or 0
            await view.put(event.cart_id, count + event.quantity)
        elif isinstance(event, CartCheckedOut):
            await view.delete(event.cart_id)


async def test_a_projection_catches_up_resumes_and_rebuilds(app: App) -> None:
    carts = [Cart(unique("p")) for _ in range(3)]
    for cart in carts:
        cart.add("a", 2)
        cart.add("b", 3)
        await app.save(cart)
    carts[2].check_out()
    await app.save(carts[2])
    projection = CartTotals()
    assert await app.project(projection, batch_size=2) == 7
    assert await app.project(projection) == 0
    assert [await app.read_model(projection, c.id, int) for c in carts] == [5, 5, None]
    carts[0].add("c")
    await app.save(carts[0])
    assert await app.project(projection) == 1
    assert await app.read_model(projection, carts[0].id, int) == 6
    assert await app.rebuild(projection) == 8
    assert [await app.read_model(projection, c.id, int) for c in carts] == [6, 5, None]


async def test_a_failing_projection_batch_commits_nothing(app: App) -> None:
    cart = Cart(unique("p"))
    cart.add("ok", 1)
    cart.add("poison", 1)
    await app.save(cart)
    with pytest.raises(RuntimeError, match="projection handler failed"):
        await app.project(CartTotals(fail_on="poison"), batch_size=10)
    healthy = CartTotals()
    assert await app.read_model(healthy, cart.id, int) is None
    assert await app.project(healthy) == 2
    assert await app.read_model(healthy, cart.id, int) == 2


class Renamed(Event, topic="conformance.renamed", type="conformance.Renamed", version=3):
    """v1 had ``name``; v2 split it into ``first``/``last``; v3 added ``title`` (no default)."""

    first: str
    last: str
    title: str


@Renamed.upcaster(from_version=1)
def _split_name(data: dict[str, Any]) -> dict[str, Any]:
    first, _, last = data.pop("name").partition(" ")
    return {**data, "first": first, "last": last}


@Renamed.upcaster(from_version=2)
def _add_title(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "title": "n/a"}


async def test_a_stored_old_version_is_read_as_the_current_one(app: App) -> None:
    stream = unique("person")
    v1 = Envelope(
        id=f"v1-{stream}",
        source="old-service",
        type="conformance.Renamed",
        topic="conformance.renamed",
        time=datetime.now(UTC),
        data=b'{"name":"Ada Lovelace"}',
        schemaversion=1,
    )
    await app.store.append(stream, [v1])
    await app.append(stream, Renamed(first="Alan", last="Turing", title="Dr"))
    events = [stored.event for stored in await app.read_stream(stream)]
    assert events == [
        Renamed(first="Ada", last="Lovelace", title="n/a"),
        Renamed(first="Alan", last="Turing", title="Dr"),
    ]
    stored = await app.store.read_stream(stream)
    assert stored[0].envelope.schemaversion == 1, "upcasting must not rewrite stored events"
    assert stored[1].envelope.schemaversion == 3
