"""Completed three-step sagas per second, ``python -m benchmarks.sagas`` (part of ``make bench``).

The conformance suite's fulfilment saga (reserve, charge, ship; each step a command and its reply)
with its three services in the same App, every step succeeding: from the first order published to
the last saga completed. On the SQLite log and on PostgreSQL + JetStream, in one run.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.store import drop_database, run_benchmark, throwaway_database
from tidings.app import App
from tidings.domain.saga import SagaEnded
from tidings.runtime.context import Context
from tidings.testing.conformance.sagas import OrderPlaced, Shop, fulfilment
from tidings.testing.nats import nats_servers


async def sagas_per_second(url: str, count: int, bus: str | None = None) -> float:
    app = App("bench-sagas", store=url, bus=bus)
    Shop(app)
    app.add_saga(fulfilment("bench"))
    done = asyncio.Event()
    ended = 0

    @app.subscribe("tidings.saga.ended", group="bench-watch")
    async def watch(event: SagaEnded, ctx: Context) -> None:
        nonlocal ended
        ended += 1
        if ended == count:
            done.set()

    async with app, app.running(lease_ttl=5.0, poll=0.2):
        await asyncio.sleep(1.0)  # leases taken
        started = time.perf_counter()
        for first in range(0, count, 100):  # orders arrive 100 per transaction
            orders = [
                (OrderPlaced(order_id=f"o{n}", amount=10), f"o{n}")
                for n in range(first, min(first + 100, count))
            ]
            await app.publish_all(orders)
        placed = time.perf_counter() - started
        await asyncio.wait_for(done.wait(), 900)
        elapsed = time.perf_counter() - started
        Console(stderr=True).print(
            f"{app.store_url.split(':')[0]}: placed in {placed:.1f} s, all ended in {elapsed:.1f} s"
        )
        return count / elapsed


async def main_async(quick: bool, postgres: str) -> None:
    os.environ.pop("TIDINGS_STORE", None)
    os.environ.pop("TIDINGS_BUS", None)
    count = 200 if quick else 2000
    table = Table(title=f"completed three-step sagas per second ({count:,} sagas)")
    table.add_column("bus")
    table.add_column("sagas/s", justify="right")
    table.add_column("events handled/s (10 per saga)", justify="right")
    with tempfile.TemporaryDirectory() as directory:
        rate = await sagas_per_second(f"sqlite:///{Path(directory) / 'sagas.db'}", count)
        table.add_row("SQLite log", f"{rate:,.0f}", f"{rate * 10:,.0f}")
    try:
        name, url, _ = throwaway_database(postgres)
    except Exception as exc:
        Console(stderr=True).print(f"PostgreSQL not reachable ({type(exc).__name__}); its row is left out")
    else:
        try:
            with nats_servers(1) as (server,):
                rate = await sagas_per_second(url, count, f"{server.url}?stream=SAGAS&prefix=sagas")
            table.add_row("PostgreSQL + JetStream", f"{rate:,.0f}", f"{rate * 10:,.0f}")
        finally:
            drop_database(postgres, name)
    Console(width=100).print(table)


def main() -> None:
    run_benchmark("benchmarks.sagas", __doc__ or "", main_async)


if __name__ == "__main__":
    main()
