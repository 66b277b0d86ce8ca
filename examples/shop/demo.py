"""The shop at work: ``python -m examples.shop.demo`` (``make demo``; ``tidings demo``).

Starts the four services as worker processes (``tidings run``, logging to ``.tidings/logs/``),
places a stream of orders, shows their progress, then a summary: how many orders completed or
were compensated and why, what the dead letter queues hold, the stock left, the checks that must
always hold, the trace of one compensated order, and commands to explore the store further.

Runs again and again on the CLI's default store (``.tidings/tidings.db``): a store the demo made
is replaced by the next run (an interrupted run's too), a place that holds nothing yet is used,
and any other is refused untouched (see ``examples.shop.demo_store``). ``TIDINGS_STORE`` and
``TIDINGS_BUS`` are not read: other stores and a bus only through ``--store`` and ``--bus``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import tidings
from examples.shop import settings
from examples.shop.demo_contents import (
    DEMO_APP,
    MARK_STREAM,
    SERVICES,
    WATCH_GROUP,
    DemoRunEnded,
    DemoStoreMade,
    order_id,
)
from examples.shop.demo_lock import exclusive
from examples.shop.demo_store import bus_for, claim, sqlite_path
from examples.shop.events import OrderPlaced
from examples.shop.inventory import Stock
from examples.shop.summary import SKUS, Report, report, show
from tidings.adapters.urls import redact_url
from tidings.app import DEFAULT_STORE
from tidings.domain.saga import SagaEnded

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path(".tidings/logs")


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
            # From where the demo runs, so that relative store URLs and paths mean the same.
            cwd=Path.cwd(),
            env={**env, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_services(env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    return [start_service(service, env, logs) for service in SERVICES]


def wait_until_running(workers: list[subprocess.Popen[bytes]], logs: Path, since: dict[str, int]) -> None:
    """Until every service says it runs (``tidings run`` does once its App is imported; at most
    20 s): on a busy machine starting a process takes seconds, and orders placed before would
    time out waiting for it."""
    waiting = dict(zip(SERVICES, workers, strict=True))
    give_up = time.monotonic() + 20
    while waiting and time.monotonic() < give_up:
        for service, worker in list(waiting.items()):
            log = logs / f"{service}.log"
            with log.open("rb") as output:
                output.seek(since[service])
                if b"running " in output.read():
                    del waiting[service]
                elif worker.poll() is not None:
                    raise tidings.ConfigurationError(
                        f"the {service} service stopped as it started (exit code {worker.returncode}):"
                        f" see {log}"
                    )
        time.sleep(0.1)


def log_sizes(logs: Path) -> dict[str, int]:
    """Where each service's log ends before a run (the services append to it)."""
    return {
        service: (logs / f"{service}.log").stat().st_size if (logs / f"{service}.log").exists() else 0
        for service in SERVICES
    }


class Pace:
    """How many orders may be in their sagas at once. When sagas take longer than ``target``
    the services have fallen behind, and fewer orders go in until they catch up; when they are
    quick, more. So a step's wait stays well inside its timeout however fast the machine, and
    the outcomes do not depend on its speed."""

    def __init__(self, target: float, *, lowest: int = 4, highest: int = 32) -> None:
        self.target, self.lowest, self.highest = target, lowest, highest
        self.limit = float(lowest)
        self.placed_at: dict[str, float] = {}
        self.last_end = time.monotonic()

    def placed(self, order: str) -> None:
        self.placed_at[order] = time.monotonic()

    def ended(self, order: str) -> None:
        started = self.placed_at.pop(order, None)
        self.last_end = now = time.monotonic()
        if started is not None:
            took = max(now - started, 0.001)
            # Little's law: orders in flight / their rate of ending = how long each takes. A
            # slow saga cuts the limit at once (a backlog only grows); quick ones raise it gently.
            if took > self.target:
                self.limit *= max(0.5, self.target / took)
            else:
                self.limit += 0.1 * (self.limit * self.target / took - self.limit)
            self.limit = min(float(self.highest), max(float(self.lowest), self.limit))

    def room(self) -> bool:
        return len(self.placed_at) < int(self.limit)


async def prepare(url: str) -> str:
    """Mark the store as the demo's (its first event) and stock it; returns its log's id."""
    async with tidings.App(DEMO_APP, store=url) as app:
        await app.append(MARK_STREAM, DemoStoreMade(), expected_version=tidings.NO_STREAM)
        for sku, quantity in SKUS.items():
            stock = Stock(sku)
            stock.receive(quantity)
            await app.save(stock)
        return app.store.log_id


async def mark_end(url: str, orders: int) -> None:
    """The run's last event: the next run knows the store as the demo's, unchanged since."""
    async with tidings.App(DEMO_APP, store=url) as app:
        await app.append(MARK_STREAM, DemoRunEnded(orders=orders))


async def drive(url: str, bus: str | None, orders: int, console: Console) -> Report:
    """Place the orders while the services work, at the pace they keep; wait until every saga
    ended."""
    watcher = tidings.App(DEMO_APP, store=url, bus=bus)
    pace = Pace(target=settings.STEP_TIMEOUT_SECONDS / 3)
    ended = 0

    @watcher.subscribe("tidings.saga.ended", group=WATCH_GROUP)
    async def on_end(event: SagaEnded, ctx: tidings.Context) -> None:
        nonlocal ended
        ended += 1
        pace.ended(ctx.record.stream.rpartition(":")[2])  # saga-fulfilment:<order>

    rng = random.Random(2026)
    placed: list[tidings.RecordedEvent] = []
    async with watcher, watcher.running(lease_ttl=3.0, poll=0.2):
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
                # No saga ending for a long time means no service is working: stop placing.
                while not pace.room() and time.monotonic() - pace.last_end < 30:
                    progress.update(settled, completed=ended)
                    await asyncio.sleep(0.02)
                order = order_id(n)
                event = OrderPlaced(
                    order_id=order,
                    customer=f"customer-{rng.randrange(50)}",
                    sku=rng.choice(list(SKUS)),
                    quantity=rng.choice((1, 1, 1, 2, 3)),
                    amount=rng.randrange(500, 9000),
                )
                pace.placed(order)
                placed.append(await watcher.publish(event, key=order))
                progress.update(placing, completed=n + 1)
                progress.update(settled, completed=ended)
                await asyncio.sleep(0.005)  # a steady stream of orders, not one burst
            deadline = time.monotonic() + 40
            while ended < orders and time.monotonic() < deadline:
                progress.update(settled, completed=ended)
                await asyncio.sleep(0.1)
            progress.update(settled, completed=ended)
        # A reply that came after its step timed out has the step undone after the saga
        # ended: give such compensations a moment to land before checking.
        found = await report(watcher, placed)
        settle_by = time.monotonic() + 15
        while not all(holds for _, holds in found.checks()) and time.monotonic() < settle_by:
            await asyncio.sleep(0.5)
            found = await report(watcher, placed)
    return found


@contextlib.contextmanager
def environment(changes: dict[str, str]) -> Iterator[None]:
    """``TIDINGS_STORE`` and ``TIDINGS_BUS`` override every App's URLs: the demo sets them (it
    never reads them) so that its own Apps see the same store and bus as its services."""
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run(url: str, bus: str | None, orders: int, logs: Path = LOGS) -> bool:
    """The whole demo; True if every check held. The services' output goes to ``logs``.
    Raises ``tidings.ConfigurationError`` for a store that is not the demo's to use, or that another
    demo runs on."""
    with exclusive(url, sqlite_path(url)) as held:  # from judging the store to the run's end
        claim(url, bus, held)
        return _run(url, bus, orders, logs)


def _run(url: str, bus: str | None, orders: int, logs: Path) -> bool:
    console = Console()
    with environment({"TIDINGS_STORE": url, "TIDINGS_BUS": ""}):  # the store alone
        log_id = asyncio.run(prepare(url))
    if bus:
        bus = bus_for(bus, log_id)
    # The services and the demo's own Apps get the store and bus from here, whatever the shell
    # says: an empty TIDINGS_BUS means none (not the one a shell set up for another service).
    changes = {"TIDINGS_STORE": url, "TIDINGS_BUS": bus or ""}
    where = f"on {redact_url(url)}" + (f" and {redact_url(bus)}" if bus else "")
    console.print(
        f"The shop {escape(where)}: services {', '.join(SERVICES)}, each a [bold]tidings run[/]"
        f" worker logging to {escape(str(logs))}/<service>.log",
        soft_wrap=True,
    )
    started = time.monotonic()
    with environment(changes):
        since = log_sizes(logs)
        workers = start_services({**os.environ}, logs)
        try:
            wait_until_running(workers, logs, since)
            found = asyncio.run(drive(url, bus, orders, console))
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()
            with environment({"TIDINGS_BUS": ""}):
                asyncio.run(mark_end(url, orders))
    show(found, orders, time.monotonic() - started, url, logs, console)
    return all(holds for _, holds in found.checks())


def main() -> None:
    # TIDINGS_STORE and TIDINGS_BUS are not read: a shell set up for a real service must not
    # send the demo to that service's store or bus. Other places only when named here.
    parser = argparse.ArgumentParser(prog="python -m examples.shop.demo", description=__doc__)
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help=f"store URL (default: {DEFAULT_STORE}; TIDINGS_STORE is not read)",
    )
    parser.add_argument(
        "--bus", default=None, help="a nats:// URL for distributed mode (TIDINGS_BUS is not read)"
    )
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--logs", type=Path, default=LOGS, help="the services' output")
    arguments = parser.parse_args()
    try:
        passed = run(arguments.store, arguments.bus, arguments.orders, arguments.logs)
    except tidings.TidingsError as exc:
        Console(stderr=True).print(f"[bold red]error: {escape(str(exc))}[/]", soft_wrap=True)
        sys.exit(2)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
