"""The poison flood benchmark, ``python -m benchmarks.poison`` (part of ``make bench``).

How much a flood of malformed raw messages on one partition slows the others: a group consumes
a backlog of valid events (a unit of work each), spread over every partition but one, through
the relay and JetStream; once alone, once with 10,000 malformed messages waiting on the other
partition's subject, which the same group dead-letters meanwhile. Each is run a few times,
alternately, on fresh streams and stores; the table gives the median rates and their ratio
(the issue asks the others to keep at least 90% of their throughput).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import nats
from rich.console import Console
from rich.table import Table

import tidings
from benchmarks.bus import Tick, tick
from benchmarks.store import drop_database, run_benchmark, throwaway_database
from tidings.adapters.sql.common import Partitioner
from tidings.testing.nats import nats_servers

FLOOD = 10_000
FLOODED = 0  # the partition whose subject the flood is published on
BATCH = 500


async def flood(server: str, subject: str, count: int) -> None:
    """``count`` messages that are no events (random bytes), stored in the partition's stream."""
    client = await nats.connect(server)
    try:
        js = client.jetstream()
        for start in range(0, count, BATCH):
            await asyncio.gather(
                *(js.publish(subject, os.urandom(64)) for _ in range(start, min(start + BATCH, count)))
            )
    finally:
        await client.close()


async def valid_rate(store: str, server: str, count: int, *, flooded: bool) -> tuple[float, int]:
    """Events per second through the group for ``count`` valid events, and how many malformed
    messages it had dead-lettered by the time it was done with them."""
    tag = uuid.uuid4().hex[:10]
    app = tidings.App("bench-poison", store=store, bus=f"{server}?stream=P_{tag}&prefix=p{tag}")
    done = asyncio.Event()
    handled = 0

    @app.subscribe("bench.bus.>", group="poisoned", batch_size=BATCH)
    async def handle(event: Tick, ctx: tidings.Context) -> None:
        nonlocal handled
        async with ctx.unit_of_work() as uow:
            uow.put("bench", event.key, event.n)
        handled += 1
        if handled == count:
            done.set()

    async with app:
        partition_of = Partitioner(app.store.feed.partitions)
        keys = [f"k{n}" for n in range(64) if partition_of(f"k{n}") != FLOODED][:16]
        for start in range(0, count, BATCH):
            batch = [tick(n) for n in range(start, min(start + BATCH, count))]
            await app.publish_all([(event, keys[event.n % len(keys)]) for event in batch])
        if flooded:
            await flood(server, f"p{tag}.{FLOODED}.bench.bus.tick", FLOOD)
        async with app.running(lease_ttl=5.0, poll=0.2):
            started = time.perf_counter()
            await asyncio.wait_for(done.wait(), 600)
            elapsed = time.perf_counter() - started
            letters = len(await app.dead_letters("poisoned", limit=FLOOD))
    return count / elapsed, letters


async def row(stores: list[str], server: str, count: int) -> list[str]:
    """Runs alternately alone and flooded, each on a store of its own; the medians."""
    alone, flooded, drained = [], [], []
    for index in range(0, len(stores), 2):
        alone.append((await valid_rate(stores[index], server, count, flooded=False))[0])
        rate, letters = await valid_rate(stores[index + 1], server, count, flooded=True)
        flooded.append(rate)
        drained.append(letters)
    base, hit = statistics.median(alone), statistics.median(flooded)
    return [f"{base:,.0f}", f"{hit:,.0f}", f"{hit / base:.0%}", f"{statistics.median(drained):,.0f}"]


async def main_async(quick: bool, postgres: str) -> None:
    os.environ.pop("TIDINGS_STORE", None)  # it would override the store URL each App is given
    os.environ.pop("TIDINGS_BUS", None)
    count, runs = (500, 1) if quick else (5000, 3)
    table = Table(
        title=f"tidings poison flood: {count:,} valid events, with and without {FLOOD:,} malformed "
        f"messages on another partition (median of {runs})"
    )
    for column in ("store + bus", "alone ev/s", "flooded ev/s", "kept", "letters meanwhile"):
        table.add_column(column, justify="right")
    with nats_servers(1) as (server,), tempfile.TemporaryDirectory() as directory:
        files = [f"sqlite:///{Path(directory) / f'poison{n}.db'}" for n in range(2 * runs)]
        table.add_row("SQLite + JetStream", *await row(files, server.url, count))
        databases: list[str] = []
        try:
            urls = []
            for _ in range(2 * runs):
                name, url, _ = throwaway_database(postgres)
                databases.append(name)
                urls.append(url)
            table.add_row("PostgreSQL + JetStream", *await row(urls, server.url, count))
        except Exception as exc:
            Console(stderr=True).print(f"PostgreSQL row left out ({type(exc).__name__}: {exc})")
        finally:
            for name in databases:
                drop_database(postgres, name)
    Console(width=130).print(table)


def main() -> None:
    run_benchmark("benchmarks.poison", "The poison flood benchmark.", main_async)


if __name__ == "__main__":
    main()
