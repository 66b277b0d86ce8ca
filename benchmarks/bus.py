"""The bus benchmark, ``python -m benchmarks.bus`` (part of ``make bench``).

For each bus (the SQLite log, the PostgreSQL log, PostgreSQL + relay -> JetStream), with
200-byte payloads, all in one run:
1. transport: events published and consumed end to end by a group whose handler does nothing
   (each event still commits its inbox record and the checkpoint);
2. full runtime: every handler commits a unit of work (inbox + checkpoint + one document);
3. publish -> handler latency, p50 and p99, at a steady 1,000 events/s from another process.
Beside them, on the same nats-server: raw nats-py and FastStream (``benchmarks/peers.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tidings
from benchmarks import peers
from benchmarks.store import drop_database, run_benchmark, throwaway_database
from tidings.runtime.encryption import Encryption
from tidings.runtime.master_key import LocalMasterKey
from tidings.testing.nats import nats_servers


class Tick(tidings.Event, topic="bench.bus.tick", type="bench.Tick"):
    key: str
    n: int
    note: str


def tick(n: int, run: str = "") -> Tick:
    """About 200 bytes of JSON; ``run`` tells one row's events from an earlier row's."""
    return Tick(key=f"k{n % 16}", n=n, note=(run + "x" * 160)[:160])


#: One master key for the rows with encryption (the latency producer gets it by environment).
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


def encryption(on: bool) -> Encryption | bool:
    return Encryption(master_key=LocalMasterKey.parse(MASTER_KEY, "benchmark key")) if on else False


async def end_to_end(
    url: str, count: int, *, with_unit: bool, bus: str | None = None, sealed: bool = False
) -> float:
    """Events per second through one group, from the first publish to the last handled: a
    producer appends ``count`` events (500 per call, each call a stream of its own) while the
    group consumes them (in distributed mode, through the relay and JetStream)."""
    producer = tidings.App("bench-producer", store=url, encryption=encryption(sealed))
    consumer = tidings.App("bench-consumer", store=url, bus=bus, encryption=encryption(sealed))
    done = asyncio.Event()
    handled = 0
    run = f"run{time.monotonic_ns()}:"

    @consumer.subscribe("bench.bus.>", group=f"g{with_unit:d}{time.monotonic_ns()}", batch_size=500)
    async def handle(event: Tick, ctx: tidings.Context) -> None:
        nonlocal handled
        if not event.note.startswith(run):
            return  # an earlier row's events, which a new group replays first
        if with_unit:
            async with ctx.unit_of_work() as uow:
                uow.put("bench", event.key, event.n)
        handled += 1
        if handled == count:
            done.set()

    async with producer, consumer, consumer.running(lease_ttl=5.0):
        await asyncio.sleep(1.0)  # leases taken, earlier rows' events replayed
        started = time.perf_counter()
        for start in range(0, count, 500):
            stream = f"tick-{time.monotonic_ns()}"
            await producer.append(stream, [tick(n, run) for n in range(start, min(start + 500, count))])
        await asyncio.wait_for(done.wait(), 600)
        return count / (time.perf_counter() - started)


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


async def latency(
    url: str, seconds: float, rate: int, bus: str | None = None, sealed: bool = False
) -> tuple[float, float]:
    """p50 and p99 of publish -> handler latency, in ms, at a steady ``rate`` per second, the
    producer being another process (as it would be)."""
    consumer = tidings.App("bench-consumer", store=url, bus=bus, encryption=encryption(sealed))
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_MASTER_KEY")}
        if sealed:
            env["TIDINGS_MASTER_KEY"] = MASTER_KEY
        producer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PRODUCER, url, str(total), str(rate), cwd=Path(__file__).parents[1], env=env
        )
        await producer.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
    ordered = sorted(delays)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def rows_for(
    urls: tuple[str, str],
    count: int,
    seconds: float,
    buses: tuple[str | None, str | None] = (None, None),
    sealed: bool = False,
) -> list[str]:
    """The throughput rows on one store, the latency row on a fresh one (no backlog to replay);
    in distributed mode each store has streams of its own."""
    transport = await end_to_end(urls[0], count, with_unit=False, bus=buses[0], sealed=sealed)
    runtime = await end_to_end(urls[0], count, with_unit=True, bus=buses[0], sealed=sealed)
    p50, p99 = await latency(urls[1], seconds, 1000, bus=buses[1], sealed=sealed)
    return [f"{transport:,.0f}", f"{runtime:,.0f}", f"{p50:.1f}", f"{p99:.1f}"]


async def main_async(quick: bool, postgres: str) -> None:
    os.environ.pop("TIDINGS_STORE", None)  # it would override the store URL each App is given
    os.environ.pop("TIDINGS_BUS", None)
    count, seconds = (1000, 1.0) if quick else (20000, 5.0)
    title = f"tidings bus: {count:,} events end to end; latency at 1,000 events/s for {seconds:.0f} s"
    table = Table(title=title)
    for column in ("bus", "transport ev/s", "full runtime ev/s", "latency p50 ms", "latency p99 ms"):
        table.add_column(column, justify="right")
    for sealed in (False, True):
        with tempfile.TemporaryDirectory() as directory:
            files = (f"sqlite:///{Path(directory) / 'bus.db'}", f"sqlite:///{Path(directory) / 'latency.db'}")
            name = "SQLite log" + (", encrypted" if sealed else "")
            table.add_row(name, *await rows_for(files, count, seconds, sealed=sealed))
    try:
        first, first_url, _ = throwaway_database(postgres)
        second, second_url, _ = throwaway_database(postgres)
    except Exception as exc:
        Console(stderr=True).print(f"PostgreSQL not reachable ({type(exc).__name__}); its rows are left out")
        Console(width=130).print(table)
        return
    try:
        table.add_row("PostgreSQL log", *await rows_for((first_url, second_url), count, seconds))
        with nats_servers(1) as (server,):
            for sealed in (False, True):
                tag = "S" if sealed else ""
                buses = (
                    f"{server.url}?stream=BENCH{tag}&prefix=bench{tag}",
                    f"{server.url}?stream=LATENCY{tag}&prefix=latency{tag}",
                )
                clean = await asyncio.gather(*(_fresh(postgres) for _ in range(2)))
                try:
                    urls = (clean[0][1], clean[1][1])
                    name = "PostgreSQL + JetStream" + (", encrypted" if sealed else "")
                    table.add_row(name, *await rows_for(urls, count, seconds, buses, sealed=sealed))
                finally:
                    for database, _ in clean:
                        drop_database(postgres, database)
            raw = await peers.raw_nats(server.url, count, "1")
            fast = await peers.faststream(server.url, count, "1")
            table.add_row("raw nats-py (transport)", f"{raw:,.0f}", "-", "-", "-")
            table.add_row("FastStream (plain, no exactly-once)", f"{fast:,.0f}", f"{fast:,.0f}", "-", "-")
    finally:
        drop_database(postgres, first)
        drop_database(postgres, second)
    Console(width=130).print(table)


async def _fresh(postgres: str) -> tuple[str, str]:
    name, url, _ = throwaway_database(postgres)
    return name, url


def main() -> None:
    run_benchmark("benchmarks.bus", "The bus benchmark.", main_async)


if __name__ == "__main__":
    main()
