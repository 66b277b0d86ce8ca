"""The bus benchmark on the SQL logs, ``python -m benchmarks.bus`` (part of ``make bench``).

For the SQLite log and the PostgreSQL log, with 200-byte payloads:
1. transport: a backlog worked through by a group whose handler does nothing (each event still
   commits its inbox record and checkpoint);
2. full runtime: every handler commits a unit of work (inbox + checkpoint + one document);
3. publish -> handler latency, p50 and p99, at a steady 1,000 events/s from another App.
The JetStream rows (and raw nats-py and FastStream beside them) come with the NATS bus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tidings
from benchmarks.store import DEFAULT_POSTGRES, drop_database, throwaway_database


class Tick(tidings.Event, topic="bench.bus.tick", type="bench.Tick"):
    key: str
    n: int
    note: str


def tick(n: int) -> Tick:
    return Tick(key=f"k{n % 16}", n=n, note="x" * 160)  # about 200 bytes of JSON


async def backlog_rate(url: str, count: int, *, with_unit: bool) -> float:
    """Events per second through one group, from a backlog of ``count`` events."""
    producer = tidings.App("bench-producer", store=url)
    async with producer:
        for start in range(0, count, 500):
            await producer.append(f"tick-{start}", [tick(n) for n in range(start, min(start + 500, count))])
    consumer = tidings.App("bench-consumer", store=url)
    done = asyncio.Event()
    handled = 0

    @consumer.subscribe("bench.bus.>", group=f"g{with_unit:d}{time.monotonic_ns()}", batch_size=500)
    async def handle(event: Tick, ctx: tidings.Context) -> None:
        nonlocal handled
        if with_unit:
            async with ctx.unit_of_work() as uow:
                uow.put("bench", event.key, event.n)
        handled += 1
        if handled == count:
            done.set()

    async with consumer:
        started = time.perf_counter()
        async with consumer.running(lease_ttl=5.0):
            await asyncio.wait_for(done.wait(), 600)
            elapsed = time.perf_counter() - started
    return count / elapsed


PRODUCER = """
import asyncio, sys, time
import tidings
from benchmarks.bus import tick

async def main(url: str, total: int, rate: int) -> None:
    async with tidings.App("bench-latency", store=url) as app:
        start = time.perf_counter()
        for n in range(total):
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            await app.publish(tick(n), key=f"k{n % 16}")

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def latency(url: str, seconds: float, rate: int) -> tuple[float, float]:
    """p50 and p99 of publish -> handler latency, in ms, at a steady ``rate`` per second, the
    producer being another process (as it would be)."""
    consumer = tidings.App("bench-consumer", store=url)
    delays: list[float] = []
    total = int(seconds * rate)
    done = asyncio.Event()

    @consumer.subscribe("bench.bus.>", group=f"latency{time.monotonic_ns()}")
    async def handle(event: Tick, ctx: tidings.Context) -> None:
        if ctx.envelope.source != "bench-latency":
            return  # the earlier rows' backlog, which a new group replays first
        delays.append((datetime.now(UTC) - ctx.envelope.time).total_seconds() * 1000)
        if len(delays) == total:
            done.set()

    async with consumer, consumer.running(lease_ttl=5.0):
        await asyncio.sleep(0.5)
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PRODUCER, url, str(total), str(rate), cwd=Path(__file__).parents[1]
        )
        await producer.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
    ordered = sorted(delays)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def rows_for(urls: tuple[str, str], count: int, seconds: float) -> list[str]:
    """The backlog rows on one store, the latency row on a fresh one (no backlog to replay)."""
    transport = await backlog_rate(urls[0], count, with_unit=False)
    runtime = await backlog_rate(urls[0], count, with_unit=True)
    p50, p99 = await latency(urls[1], seconds, 1000)
    return [f"{transport:,.0f}", f"{runtime:,.0f}", f"{p50:.1f}", f"{p99:.1f}"]


async def main_async(quick: bool, postgres: str) -> None:
    count, seconds = (500, 1.0) if quick else (3000, 3.0)
    title = f"tidings bus on the SQL logs: backlog of {count:,} events; latency at 1,000 events/s"
    table = Table(title=title)
    for column in ("log", "transport ev/s", "full runtime ev/s", "latency p50 ms", "latency p99 ms"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as directory:
        files = (f"sqlite:///{Path(directory) / 'bus.db'}", f"sqlite:///{Path(directory) / 'latency.db'}")
        table.add_row("SQLite", *await rows_for(files, count, seconds))
    try:
        first, first_url, _ = throwaway_database(postgres)
        second, second_url, _ = throwaway_database(postgres)
    except Exception as exc:
        Console(stderr=True).print(f"PostgreSQL not reachable ({type(exc).__name__}); its row is left out")
    else:
        try:
            table.add_row("PostgreSQL", *await rows_for((first_url, second_url), count, seconds))
        finally:
            drop_database(postgres, first)
            drop_database(postgres, second)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus", description="The bus benchmark.")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="an admin URL of a PostgreSQL server")
    arguments = parser.parse_args()
    asyncio.run(main_async(arguments.quick, arguments.postgres))


if __name__ == "__main__":
    main()
