"""The shop at work: ``python -m examples.shop.demo`` (``make demo``; ``tidings demo``).

Starts the four services as worker processes (``tidings run``) on a fresh store, places a stream
of orders, shows their progress, then a summary: how many orders completed, were compensated or
got stuck, what the dead letter queues hold, the stock left, the checks that must always hold,
and the trace of one compensated order. Runs again and again: the embedded store is made fresh
each time (``.tidings/shop.db``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import tidings
from examples.shop.events import OrderPlaced, StockChanged
from examples.shop.inventory import Stock
from examples.shop.payments import Ledger
from examples.shop.shipping import Shipment
from tidings.cli.operations import causation_tree
from tidings.domain.saga import SagaEnded, SagaInstance
from tidings.ports import Log, Trace

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("orders", "inventory", "payments", "shipping")
SKUS = {"kettle": 140, "teapot": 90, "mug": 160, "tray": 60}  # units in stock at the start
DEFAULT_STORE = "sqlite:///.tidings/shop.db"


def fresh_store(url: str) -> None:
    """An embedded store starts empty every run (a server's database is the user's to clear)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").partition("?")[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def start_service(
    service: str, env: dict[str, str], logs: Path, *, lease_ttl: float = 3.0
) -> subprocess.Popen[bytes]:
    """One service as a ``tidings run`` worker process; its output is appended to ``logs``."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{service}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(  # noqa: S603 - this interpreter running tidings itself
            [
                sys.executable,
                "-m",
                "tidings",
                "run",
                f"examples.shop.{service}:app",
                "--lease-ttl",
                str(lease_ttl),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_services(env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    return [start_service(service, env, logs) for service in SERVICES]


async def drive(url: str, bus: str | None, orders: int, console: Console) -> Report:
    """Seed the stock, place the orders while the services work, wait until every saga ended."""
    watcher = tidings.App("shop-demo", store=url, bus=bus)
    ended: Counter[str] = Counter()

    @watcher.subscribe("tidings.saga.ended", group="demo-watch")
    async def on_end(event: SagaEnded, ctx: tidings.Context) -> None:
        ended[event.outcome] += 1

    rng = random.Random(2026)
    placed: list[tidings.RecordedEvent] = []
    async with watcher:
        for sku, quantity in SKUS.items():
            stock = Stock(sku)
            stock.receive(quantity)
            await watcher.save(stock)
        async with watcher.running(lease_ttl=3.0, poll=0.2):
            columns = (
                TextColumn("{task.description:>15}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as progress:
                placing = progress.add_task("orders placed", total=orders)
                settled = progress.add_task("sagas ended", total=orders)
                for n in range(orders):
                    order_id = f"order-{n:04d}"
                    event = OrderPlaced(
                        order_id=order_id,
                        customer=f"customer-{rng.randrange(50)}",
                        sku=rng.choice(list(SKUS)),
                        quantity=rng.choice((1, 1, 1, 2, 3)),
                        amount=rng.randrange(500, 9000),
                    )
                    placed.append(await watcher.publish(event, key=order_id))
                    progress.update(placing, completed=n + 1)
                    progress.update(settled, completed=sum(ended.values()))
                    await asyncio.sleep(0.005)  # a steady stream of orders, not one burst
                deadline = time.monotonic() + 40
                while sum(ended.values()) < orders and time.monotonic() < deadline:
                    progress.update(settled, completed=sum(ended.values()))
                    await asyncio.sleep(0.1)
                progress.update(settled, completed=sum(ended.values()))
            # A reply that came after its step timed out has the step undone after the saga
            # ended: give such compensations a moment to land before checking.
            found = await report(watcher, placed)
            settle_by = time.monotonic() + 15
            while not all(holds for _, holds in found.checks()) and time.monotonic() < settle_by:
                await asyncio.sleep(0.5)
                found = await report(watcher, placed)
        return found


class Report:
    """What the run left in the store, and the checks that must hold whatever failed."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.stock: dict[str, int] = {}
        self.letters: Counter[tuple[str, str]] = Counter()
        self.units: Counter[str] = Counter()  # reserved and released, from the stock's events
        self.shipped: dict[str, int] = {}  # per order: units shipped (not cancelled)
        self.ledgers: dict[str, Ledger] = {}  # per order: charged, refunded
        self.outcome: dict[str, str] = {}
        self.example: tuple[str, str] | None = None  # a compensated order: (order id, correlation)
        self.trace: Trace | None = None

    def checks(self) -> list[tuple[str, bool]]:
        def ledger(order: str) -> Ledger:
            return self.ledgers.get(order) or Ledger()

        cancelled = [order for order, state in self.outcome.items() if state == "compensated"]
        completed = [order for order, state in self.outcome.items() if state == "completed"]
        return [
            ("every order ended completed or compensated", set(self.states) <= {"completed", "compensated"}),
            ("stock is never negative", all(level >= 0 for level in self.stock.values())),
            (
                "reserved - released = shipped",
                self.units["reserved"] - self.units["released"] == sum(self.shipped.values()),
            ),
            (
                "every charge of a cancelled order refunded exactly once",
                all(ledger(order).refunded == ledger(order).charged for order in cancelled),
            ),
            ("no completed order refunded", all(ledger(order).refunded == 0 for order in completed)),
        ]


async def report(app: tidings.App, placed: list[tidings.RecordedEvent]) -> Report:
    found = Report()
    found.stock = {sku: (await app.load(Stock, sku)).level for sku in SKUS}
    for letter in await app.dead_letters(None, state="dead", limit=100_000):
        found.letters[letter.group, letter.reason] += 1
    async for stored in app.read_log(pattern="*.>"):
        event = stored.event
        if isinstance(event, StockChanged) and event.why in ("reserved", "released"):
            found.units[event.why] += abs(event.change)

    for record in placed:
        order = record.envelope.partitionkey or ""
        raw = await app.store.get_document("ledgers", order)
        if raw is not None:
            found.ledgers[order] = msgspec.json.decode(raw, type=Ledger)
        raw = await app.store.get_document("shipments", order)
        shipment = None if raw is None else msgspec.json.decode(raw, type=Shipment)
        if shipment is not None and not shipment.cancelled:
            found.shipped[order] = shipment.quantity
        try:
            instance = await app.load(SagaInstance, f"fulfilment:{order}")
        except tidings.AggregateNotFound:
            found.states["not started"] += 1
            continue
        found.states[instance.status] += 1
        found.outcome[order] = instance.status
        if found.example is None and instance.status == "compensated" and order in found.ledgers:
            found.example = (order, record.envelope.id)
    if found.example is not None and isinstance(app.store, Log):
        found.trace = await app.store.trace(found.example[1])
    return found


def show(found: Report, orders: int, seconds: float, url: str, console: Console) -> None:
    table = Table(title=f"{orders} orders in {seconds:.1f} s")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    for state in ("completed", "compensated", "stuck", "running", "compensating", "not started"):
        if found.states[state]:
            table.add_row(state, str(found.states[state]))
    for (group, reason), count in sorted(found.letters.items()):
        table.add_row(f"dead-lettered by {group} ({reason})", str(count))
    for sku, level in found.stock.items():
        table.add_row(f"stock left: {sku} (of {SKUS[sku]})", str(level))
    console.print(table)
    for check, holds in found.checks():
        console.print(f"  {'[green]✓' if holds else '[bold red]✗'}[/] {check}")
    if found.example is not None and found.trace is not None:
        console.print(f"\nThe trace of compensated {found.example[0]}:")
        console.print(causation_tree(found.trace, hide=bookkeeping))
    store = f" --store {url}"
    console.print("\nExplore further:")
    example = found.example[0] if found.example else "order-0000"
    for command in (
        "tidings sagas list --state compensated",
        f"tidings sagas show fulfilment:{example}",
        "tidings dlq list",
        f"tidings trace {found.example[1] if found.example else '<correlation-id>'}",
        "tidings streams",
    ):
        console.print(f"  [bold]{command}{store}[/]")


def bookkeeping(record: tidings.RecordedEvent) -> bool:
    """The saga's own records and the stock's changes: in the store, left out of the demo's tree."""
    return (
        record.envelope.topic.startswith("tidings.saga.")
        or record.envelope.topic == "inventory.stock.changed"
    )


def run(url: str, bus: str | None, orders: int, logs: Path = Path(".tidings/logs")) -> bool:
    """The whole demo; True if every check held. The services' output goes to ``logs``."""
    console = Console()
    fresh_store(url)
    env = {**os.environ, "TIDINGS_STORE": url}
    if bus:
        env["TIDINGS_BUS"] = bus
    started = time.monotonic()
    workers = start_services(env, logs)
    try:
        found = asyncio.run(drive(url, bus, orders, console))
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
    show(found, orders, time.monotonic() - started, url, console)
    return all(holds for _, holds in found.checks())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.shop.demo", description=__doc__)
    parser.add_argument(
        "--store", default=DEFAULT_STORE, help=f"store URL (default {DEFAULT_STORE}, made fresh)"
    )
    parser.add_argument("--bus", default=None, help="a nats:// URL for distributed mode")
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--logs", type=Path, default=Path(".tidings/logs"), help="the services' output")
    arguments = parser.parse_args()
    sys.exit(0 if run(arguments.store, arguments.bus, arguments.orders, arguments.logs) else 1)


if __name__ == "__main__":
    main()
