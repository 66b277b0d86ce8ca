"""What a run of the demo left in the store, the checks that must hold, and how it is shown:
the outcomes with the cause of each compensation, the trace of one compensated order, and the
commands to explore the store further (printed so that each runs when pasted)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import tidings
from examples.shop import settings
from examples.shop.events import ShipmentFailed, StockChanged, StockRejected
from examples.shop.inventory import Stock
from examples.shop.orders import fulfilment
from examples.shop.payments import LEDGERS, Ledger
from examples.shop.shipping import SHIPMENTS, Shipment
from tidings.app import DEFAULT_STORE
from tidings.cli.operations import causation_tree
from tidings.domain.saga import SagaInstance, parse_command_id
from tidings.ports import Trace

SKUS = {"kettle": 140, "teapot": 90, "mug": 160, "tray": 60}  # units in stock at the start
FAILURES = {
    StockRejected.__event_type__: "out of stock",
    "shop.PaymentDeclined": "payment declined",
    ShipmentFailed.__event_type__: "shipment failed",
}
EXPIRED = "shipping command expired"
NO_REPLY = "no reply in time"


class Report:
    """What the run left in the store, and the checks that must hold whatever failed."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.causes: Counter[str] = Counter()  # why orders were compensated
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


def cause(instance: SagaInstance, expired: set[str]) -> str:
    """Why a compensated order was compensated, in the shop's words."""
    words, _, detail = instance.reason.partition(" failed: ")
    if detail:
        return FAILURES.get(detail, f"{detail} replied")
    if instance.key in expired:  # its shipping command outlived its deadline, so its step timed out
        return EXPIRED
    step = words.removeprefix("step ").removesuffix(" timed out")
    name = fulfilment.steps[int(step)].name if step.isdigit() else "a step"
    return f"{NO_REPLY} ({name})"


async def report(app: tidings.App, placed: list[tidings.RecordedEvent]) -> Report:
    found = Report()
    found.stock = {sku: (await app.load(Stock, sku)).level for sku in SKUS}
    expired: set[str] = set()
    for letter in await app.dead_letters(None, state=tidings.DeadLetterState.DEAD, limit=100_000):
        found.letters[letter.group, letter.reason] += 1
        command = parse_command_id(letter.event_id or "")
        if letter.reason == "expired" and command is not None:
            expired.add(command[0].partition(":")[2])
    async for stored in app.read_log(pattern="*.>"):
        event = stored.event
        if isinstance(event, StockChanged) and event.why in ("reserved", "released"):
            found.units[event.why] += abs(event.change)

    for record in placed:
        order = record.envelope.partitionkey or ""
        raw = await app.store.get_document(LEDGERS, order)
        if raw is not None:
            found.ledgers[order] = msgspec.json.decode(raw, type=Ledger)
        raw = await app.store.get_document(SHIPMENTS, order)
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
        if instance.status == "compensated":
            found.causes[cause(instance, expired)] += 1
        if found.example is None and instance.status == "compensated" and order in found.ledgers:
            found.example = (order, record.envelope.id)
    if found.example is not None:
        found.trace = await app.groups.trace(found.example[1])
    return found


def show(found: Report, orders: int, seconds: float, url: str, logs: Path, console: Console) -> None:
    table = Table(title=f"{orders} orders in {seconds:.1f} s")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    for state in ("completed", "compensated", "stuck", "running", "compensating", "not started"):
        if found.states[state]:
            table.add_row(state, str(found.states[state]))
        if state == "compensated":
            for why, count in sorted(found.causes.items(), key=lambda item: -item[1]):
                table.add_row(f"  {why}", str(count))
    for (group, reason), count in sorted(found.letters.items()):
        table.add_row(f"dead-lettered by {group} ({reason})", str(count))
    for sku, level in found.stock.items():
        table.add_row(f"stock left: {sku} (of {SKUS[sku]})", str(level))
    console.print(table)
    for check, holds in found.checks():
        console.print(f"  {'[green]✓' if holds else '[bold red]✗'}[/] {check}")
    explain_timeouts(found, logs, console)
    if found.example is not None and found.trace is not None:
        console.print(f"\nThe trace of compensated {found.example[0]}:")
        console.print(causation_tree(found.trace, hide=bookkeeping))
    logged = f"\nThe services logged to {escape(str(logs))}/ (a file each). Explore the store further:"
    console.print(logged, soft_wrap=True)
    for command in explore_commands(found, url):
        # Never wrapped, so that each command is one line to copy, however narrow the terminal.
        console.print(Text(f"  {command}", style="bold"), soft_wrap=True)


def explain_timeouts(found: Report, logs: Path, console: Console) -> None:
    """Say why orders timed out: by design (shipping stalls), or a machine too busy for the
    step timeout."""
    timeout = f"{settings.STEP_TIMEOUT_SECONDS:g} s"
    if found.causes[EXPIRED]:
        console.print(
            f"\n{found.causes[EXPIRED]} order(s) compensated as the demo intends: their shipping command"
            f" waited longer than its {settings.SHIPPING_DEADLINE_SECONDS:g} s deadline (behind a"
            f" stall of the shipping service), was dead-lettered as expired, and the step timed out"
            f" after {timeout}."
        )
    slow = sum(count for why, count in found.causes.items() if why.startswith(NO_REPLY))
    if slow:
        console.print(
            f"\n[yellow]{slow} order(s) compensated because a step got no reply within its {timeout}"
            f" timeout: the services fell behind (a busy machine?). Their logs are in {escape(str(logs))}/;"
            f" SHOP_STEP_TIMEOUT_SECONDS=10 gives the steps longer.[/]"
        )


def tidings_command() -> str:
    """How to run this installation's ``tidings`` from here: as found on PATH, else the script
    beside this interpreter (``.venv/bin/tidings`` after ``make demo``)."""
    script = Path(sys.executable).parent / "tidings"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m tidings"
    on_path = shutil.which("tidings")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "tidings"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def explore_commands(found: Report, url: str) -> list[str]:
    """Commands on the run's store; ``--store`` unless it is the one the CLI opens by default."""
    default = url == DEFAULT_STORE and os.environ.get("TIDINGS_STORE", url) == url
    store = "" if default else f" --store {shlex.quote(url)}"
    tidings_cli = tidings_command()
    commands = ["streams"]
    if found.states["compensated"]:
        commands.append("sagas list --state compensated")
    if found.example is not None:
        commands.append(f"sagas show fulfilment:{found.example[0]}")
        commands.append(f"trace {found.example[1]}")
    if found.letters:
        commands.append("dlq list")
    return [f"{tidings_cli} {command}{store}" for command in commands]


def bookkeeping(record: tidings.RecordedEvent) -> bool:
    """The saga's own records and the stock's changes: in the store, left out of the demo's tree."""
    return (
        record.envelope.topic.startswith("tidings.saga.")
        or record.envelope.topic == "inventory.stock.changed"
    )
