"""The embedded store at work: orders as event-sourced aggregates in one SQLite file.

Run with ``make demo`` (or ``python -m examples.store_demo``). It appends the events of a few
orders, rebuilds one order as it was at an earlier moment, keeps a read model up to date, checks
the hash chain of the whole store, and prints what it did.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tidings

STORE_FILE = Path(".tidings/tidings.db")


class OrderPlaced(tidings.Event, topic="order.placed"):
    order_id: str
    customer: str


class ItemAdded(tidings.Event, topic="order.item_added"):
    order_id: str
    sku: str
    price_cents: int
    quantity: int = 1


class OrderPaid(tidings.Event, topic="order.paid"):
    order_id: str
    amount_cents: int


class OrderShipped(tidings.Event, topic="order.shipped"):
    order_id: str
    carrier: str


class Order(tidings.Aggregate, category="order", snapshot_every=20):
    customer: str = ""
    lines: dict[str, int] = {}  # noqa: RUF012 - state default, copied per instance
    total_cents: int = 0
    status: str = "new"

    def place(self, customer: str) -> None:
        self.record(OrderPlaced(order_id=self.id, customer=customer))

    def add(self, sku: str, price_cents: int, quantity: int = 1) -> None:
        if self.status != "placed":
            raise ValueError(f"order {self.id} is {self.status}; items can no longer be added")
        self.record(ItemAdded(order_id=self.id, sku=sku, price_cents=price_cents, quantity=quantity))

    def pay(self) -> None:
        self.record(OrderPaid(order_id=self.id, amount_cents=self.total_cents))

    def ship(self, carrier: str) -> None:
        self.record(OrderShipped(order_id=self.id, carrier=carrier))

    def apply(self, event: tidings.Event) -> None:
        match event:
            case OrderPlaced(customer=customer):
                self.customer, self.status = customer, "placed"
            case ItemAdded(sku=sku, price_cents=price, quantity=quantity):
                self.lines[sku] = self.lines.get(sku, 0) + quantity
                self.total_cents += price * quantity
            case OrderPaid():
                self.status = "paid"
            case OrderShipped():
                self.status = "shipped"


class Revenue(tidings.Projection):
    """Paid revenue per customer, kept in the store beside its checkpoint."""

    name = "revenue-by-customer"
    pattern = "order.*"

    def __init__(self) -> None:
        self.customers: dict[str, str] = {}

    async def handle(self, stored: tidings.Stored[tidings.Event], view: tidings.View) -> None:
        match stored.event:
            case OrderPlaced(order_id=order_id, customer=customer):
                await view.put(f"customer-of:{order_id}", customer)
            case OrderPaid(order_id=order_id, amount_cents=amount):
                customer = await view.get(f"customer-of:{order_id}", str) or "?"
                await view.put(customer, (await view.get(customer, int) or 0) + amount)


CATALOGUE = {"kettle": 3_499, "teapot": 2_450, "mugs": 1_200, "tea": 650, "scale": 1_999}
CUSTOMERS = ("ada", "grace", "linus", "barbara")


async def main() -> None:
    console = Console()
    random.seed(7)
    for leftover in STORE_FILE.parent.glob(f"{STORE_FILE.name}*"):
        leftover.unlink()  # a fresh store each run
    started = time.perf_counter()
    async with tidings.App("demo-shop", store=f"sqlite:///{STORE_FILE}") as app:
        orders = [Order(f"{1000 + n}") for n in range(6)]
        for order in orders:
            order.place(random.choice(CUSTOMERS))
            for sku in random.sample(sorted(CATALOGUE), k=3):
                order.add(sku, CATALOGUE[sku], quantity=random.randint(1, 3))
            await app.save(order)

        # The moment to travel back to: every order placed and filled, none paid yet.
        before_payment = datetime.now(UTC)
        await asyncio.sleep(0.01)

        big = orders[0]
        for _ in range(40):  # enough events to take snapshots along the way
            big.add("tea", CATALOGUE["tea"])
            await app.save(big)
        for order in orders[:4]:
            order.pay()
            await app.save(order)
        for order in orders[:2]:
            order.ship(random.choice(("post", "courier")))
            await app.save(order)

        conflict = "none raised (unexpected)"
        try:  # optimistic concurrency: a stale copy cannot overwrite newer history
            stale = await app.load(Order, orders[1].id, version=1)
            stale.add("kettle", CATALOGUE["kettle"])
            await app.save(stale)
        except tidings.ConcurrencyError as exc:
            conflict = str(exc)

        now = await app.load(Order, big.id)
        then = await app.load(Order, big.id, at=before_payment)
        revenue = Revenue()
        handled = await app.project(revenue)
        report = await app.verify()
        streams = await app.store.list_streams()
        log_length = await app.store.head_position()
        per_customer = {c: await app.read_model(revenue, c, int) or 0 for c in CUSTOMERS}

    elapsed = time.perf_counter() - started
    console.rule("[bold]tidings: the embedded event store")
    size = STORE_FILE.stat().st_size  # noqa: ASYNC240 - the store is closed; nothing else runs
    console.print(f"Store: [cyan]sqlite:///{STORE_FILE}[/] ({size:,} bytes)")
    table = Table(title=f"{len(streams)} streams, {log_length} events in the log")
    for column in ("stream", "version", "status now"):
        table.add_column(column)
    for info, order in zip(streams, orders, strict=True):
        table.add_row(info.stream, str(info.version), order.status)
    console.print(table)

    travel = Table(title=f"Time travel: order {big.id} now and as of {before_payment:%H:%M:%S.%f} UTC")
    for column in ("", "version", "status", "lines", "total"):
        travel.add_column(column)
    for label, state in (("now", now), ("then", then)):
        lines = ", ".join(f"{sku}x{qty}" for sku, qty in sorted(state.lines.items()))
        travel.add_row(label, str(state.version), state.status, lines, f"{state.total_cents / 100:.2f}")
    console.print(travel)

    console.print(f"Concurrency check: [yellow]{conflict}[/]")
    console.print(
        f"Projection [bold]{revenue.name}[/] handled {handled} events: "
        + ", ".join(f"{c} {cents / 100:.2f}" for c, cents in per_customer.items())
    )
    verdict = "[green]intact[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
    console.print(f"Hash chain of {report.events} events in {report.streams} streams: {verdict}")
    console.print(f"Done in {elapsed:.2f} s. Explore further:")
    explore = (
        "tidings streams",
        f"tidings events order-{big.id} --limit 5",
        "tidings log --topic 'order.paid'",
        "tidings verify",
    )
    for command in explore:
        console.print(f"  [bold cyan].venv/bin/{command}[/]")


if __name__ == "__main__":
    asyncio.run(main())
