"""Memory while a consumer works through a large backlog, ``python -m benchmarks.backlog``.

A SQLite store (synchronous=NORMAL, to fill it fast) gets 1,000,000 events of about 200 bytes;
then a consumer process with one group (a handler that does nothing; each event still commits its
inbox record and checkpoint) works through them, reporting its resident memory every tenth of the
way and its peak at the end.
Flat means: the memory at the end is about what it was after the first tenth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import tidings
from benchmarks.bus import Tick, tick

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def fill(url: str, count: int) -> float:
    async with tidings.App("bench-backlog", store=url) as app:
        started = time.perf_counter()
        for start in range(0, count, 1000):
            await app.append(f"tick-{start}", [tick(n) for n in range(start, min(start + 1000, count))])
        return count / (time.perf_counter() - started)


async def consume(url: str, count: int) -> None:
    """The consumer process: prints ``handled rss_mb`` every tenth, then ``peak <mb>``."""
    app = tidings.App("bench-backlog-consumer", store=url)
    done = asyncio.Event()
    handled = 0
    step = count // 10

    @app.subscribe("bench.bus.>", group="backlog", batch_size=500)
    async def handle(event: Tick, ctx: tidings.Context) -> None:
        nonlocal handled
        handled += 1
        if handled % step == 0:
            print(handled, f"{rss_mb():.1f}", flush=True)
        if handled == count:
            done.set()

    print(0, f"{rss_mb():.1f}", flush=True)
    async with app, app.running(lease_ttl=10.0):
        started = time.perf_counter()
        await asyncio.wait_for(done.wait(), 3600)
        elapsed = time.perf_counter() - started
    print("rate", f"{count / elapsed:.0f}", flush=True)
    print("peak", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backlog", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--consume", metavar="URL", help=argparse.SUPPRESS)  # the consumer process
    arguments = parser.parse_args()
    os.environ.pop("TIDINGS_STORE", None)
    if arguments.consume:
        asyncio.run(consume(arguments.consume, arguments.events))
        return
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'backlog.db'}?synchronous=NORMAL"
        fill_rate = asyncio.run(fill(url, arguments.events))
        output = subprocess.run(
            [sys.executable, "-m", "benchmarks.backlog", "--events", str(arguments.events), "--consume", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    samples = [line.split() for line in output.splitlines()]
    table = Table(title=f"consumer memory over a backlog of {arguments.events:,} events (SQLite log)")
    table.add_column("events handled", justify="right")
    table.add_column("RSS MB", justify="right")
    extra = {}
    for sample in samples:
        if sample[0].isdigit():
            table.add_row(f"{int(sample[0]):,}", sample[1])
        else:
            extra[sample[0]] = sample[1]
    Console(width=100).print(table)
    Console(width=100).print(
        f"peak RSS {extra.get('peak', '?')} MB; consumed at {int(extra.get('rate', '0')):,} ev/s; "
        f"backlog written at {fill_rate:,.0f} ev/s"
    )


if __name__ == "__main__":
    main()
