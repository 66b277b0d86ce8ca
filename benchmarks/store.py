"""The store benchmark, ``python -m benchmarks.store`` (``make bench``): tidings beside the raw
driver and the ``eventsourcing`` library, on SQLite and on PostgreSQL. In each run the sides take
turns, in a rotating order, so that a noisy machine slows them alike; a cell is the median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate as PeerAggregate
from eventsourcing.domain import event
from eventsourcing.sqlite import SQLiteConnectionPool
from psycopg import sql
from rich.console import Console
from rich.table import Table

import tidings
from tidings.adapters.urls import redact_url

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
SNAPSHOT_EVERY = 999  # saved 999 at a time, 10,000 events end with a snapshot at 9,990
PAGE = 1000  # events per page of the log, on every side
RAW, OURS, PEER = "raw driver", "tidings", "eventsourcing"


@dataclass(frozen=True)
class Sizes:
    runs: int
    batch: int  # events per batched append
    batches: int  # batched appends per run, each into a new stream
    singles: int  # single-event appends per run, into one stream, each its own transaction
    read: int  # events read from the log and decoded per run
    aggregate: int  # events of the aggregate that is loaded
    loads: int  # loads per run without a snapshot
    snapshot_loads: int  # loads per run with one


FULL = Sizes(5, 1000, 10, 200, 20_000, 10_000, 3, 50)
QUICK = Sizes(3, 200, 3, 20, 1_000, 1_000, 1, 5)


class OrderPlaced(tidings.Event, topic="shop.order.placed"):
    order_id: str
    customer: str
    sku: str
    quantity: int
    price_cents: int
    note: str


def make_orders(count: int) -> list[OrderPlaced]:
    rng = random.Random()
    return [
        OrderPlaced(
            order_id=str(uuid.uuid4()),
            customer=f"cust-{rng.randrange(10**8):08d}",
            sku=f"SKU-{rng.randrange(10**5):05d}-{rng.choice('SML')}",
            quantity=rng.randrange(1, 10),
            price_cents=rng.randrange(100, 100_000),
            note=f"leave at the door, ring twice, gift wrap, no invoice {rng.randrange(10**6):06d}",
        )
        for _ in range(count)
    ]


class OrderBook(tidings.Aggregate, category="book"):
    orders: int = 0
    revenue_cents: int = 0

    def apply(self, event: tidings.Event) -> None:
        if isinstance(event, OrderPlaced):
            self.orders += 1
            self.revenue_cents += event.quantity * event.price_cents


class SnapshottedOrderBook(OrderBook, category="snapbook", snapshot_every=SNAPSHOT_EVERY):
    pass


class PeerOrderBook(PeerAggregate):
    def __init__(self) -> None:
        self.orders = 0
        self.revenue_cents = 0

    @event("OrderPlaced")
    def place(
        self, order_id: str, customer: str, sku: str, quantity: int, price_cents: int, note: str
    ) -> None:
        self.orders += 1
        self.revenue_cents += quantity * price_cents


class PeerApp(Application[uuid.UUID]):
    log_section_size = PAGE


def peer_sqlite_synchronous_full() -> None:
    """The peer leaves ``synchronous`` at SQLite's build default; make it FULL as on the other sides."""
    create = SQLiteConnectionPool._create_connection

    def create_full(pool: SQLiteConnectionPool) -> Any:
        connection = create(pool)
        connection._sqlite_conn.execute("PRAGMA synchronous=FULL")
        return connection

    SQLiteConnectionPool._create_connection = create_full  # type: ignore[assignment,method-assign]


class Stopwatch:
    """``with Stopwatch() as watch:`` times its block, after a garbage collection, in ``watch.seconds``."""

    def __enter__(self) -> Stopwatch:
        gc.collect()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start


def check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


def snapshot_version(size: int) -> int:
    return size // SNAPSHOT_EVERY * SNAPSHOT_EVERY


# -- the sides: each prepares its input, then times only the work under test ---------------------

#: Appends to do: per new stream, its calls in order, each call the events it appends at once.
Streams = list[list[list[OrderPlaced]]]


class RawSide:
    """The practical limit: the same rows (event id, stream, version, topic, type, time, JSON data,
    with the same unique keys) written and read by the bare driver, without tidings' checks,
    envelope and hash chain."""

    name = RAW
    INSERT = (
        "INSERT INTO raw_events (id, stream, version, topic, type, time_us, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    PAGE = (
        "SELECT position, id, stream, version, topic, type, time_us, data FROM raw_events"
        " WHERE position > ? ORDER BY position LIMIT ?"
    )

    def __init__(self, db: sqlite3.Connection | psycopg.Connection[Any]) -> None:
        self.db, pg = db, isinstance(db, psycopg.Connection)
        self.insert, self.page = (q.replace("?", "%s") if pg else q for q in (self.INSERT, self.PAGE))
        self.encoder, self.decoder = msgspec.json.Encoder(), msgspec.json.Decoder(OrderPlaced)
        position, blob = ("BIGINT GENERATED ALWAYS AS IDENTITY", "BYTEA") if pg else ("INTEGER", "BLOB")
        self.db.execute(
            f"CREATE TABLE raw_events (position {position} PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
            " stream TEXT NOT NULL, version BIGINT NOT NULL, topic TEXT NOT NULL, type TEXT NOT NULL,"
            f" time_us BIGINT NOT NULL, data {blob} NOT NULL, UNIQUE (stream, version))"
        )

    def _write(self, stream: str, events: list[OrderPlaced], first: int) -> None:
        """One transaction per call; the payloads are encoded here, in the timed part, as by a real writer."""
        now = time.time_ns() // 1000
        rows = [
            (str(uuid.uuid4()), stream, v, "order.placed", "OrderPlaced", now, self.encoder.encode(e))
            for v, e in enumerate(events, first)
        ]
        if isinstance(self.db, psycopg.Connection):
            with self.db.transaction(), self.db.cursor() as cursor:
                if len(rows) == 1:
                    cursor.execute(self.insert, rows[0])
                else:  # psycopg 3 pipelines executemany
                    cursor.executemany(self.insert, rows)
        else:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(self.insert, rows)
            self.db.execute("COMMIT")

    async def append(self, streams: Streams) -> float:
        names = [f"orders-{uuid.uuid4().hex}" for _ in streams]
        with Stopwatch() as watch:
            for name, calls in zip(names, streams, strict=True):
                version = 1
                for call in calls:
                    self._write(name, call, version)
                    version += len(call)
        return watch.seconds

    async def read(self, count: int) -> float:
        done = after = 0
        with Stopwatch() as watch:
            while done < count:
                rows = self.db.execute(self.page, (after, min(PAGE, count - done))).fetchall()
                for row in rows:
                    self.decoder.decode(row[-1])
                done, after = done + len(rows), rows[-1][0]
        return watch.seconds

    async def close(self) -> None:
        self.db.close()


class TidingsSide:
    name = OURS

    def __init__(self, url: str) -> None:
        self.app = tidings.App("bench", store=url)
        self.ids: dict[type[OrderBook], str] = {}
        self.size = 0

    async def append(self, streams: Streams) -> float:
        names = [f"orders-{uuid.uuid4().hex}" for _ in streams]
        with Stopwatch() as watch:
            for name, calls in zip(names, streams, strict=True):
                version = 0
                for call in calls:
                    await self.app.append(name, call, expected_version=version)
                    version += len(call)
        return watch.seconds

    async def read(self, count: int) -> float:
        codec, done = self.app.codec, 0
        with Stopwatch() as watch:
            async for record in self.app.store.read_log(limit=count, batch_size=PAGE):
                codec.decode(record.envelope)
                done += 1
        check(done == count, f"tidings read {done} of {count} events")
        return watch.seconds

    async def prepare(self, events: list[OrderPlaced]) -> None:
        self.size = len(events)
        for cls in (OrderBook, SnapshottedOrderBook):
            book = cls(uuid.uuid4().hex)
            for index, one in enumerate(events, 1):
                book.record(one)
                if index % SNAPSHOT_EVERY == 0 or index == len(events):
                    await self.app.save(book)
            self.ids[cls] = book.id
        found = await self.app.store.load_snapshot(book.stream)
        check(found is not None and found.version == snapshot_version(self.size), "tidings snapshot")

    async def load(self, snapshot: bool, times: int) -> float:
        cls = SnapshottedOrderBook if snapshot else OrderBook
        with Stopwatch() as watch:
            for _ in range(times):
                book = await self.app.load(cls, self.ids[cls])
        check(book.version == self.size == book.orders, "tidings load")
        return watch.seconds / times

    async def close(self) -> None:
        await self.app.close()


class PeerSide:
    """``eventsourcing``: its Application, Aggregate, notification log and snapshots (sync)."""

    name = PEER

    def __init__(self, env: dict[str, str]) -> None:
        self.app = PeerApp(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
        self.ids: dict[bool, uuid.UUID] = {}
        self.size = 0

    async def append(self, streams: Streams) -> float:
        saves: list[list[Any]] = []  # the domain events of each call, made beforehand
        for calls in streams:
            # The creation event stands in for a batch's first event; before single events it is
            # saved beforehand, untimed.
            book, skip = PeerOrderBook(), int(len(calls[0]) > 1)
            if not skip:
                self.app.save(book)
            for index, call in enumerate(calls):
                for one in call[skip if index == 0 else 0 :]:
                    book.place(**msgspec.structs.asdict(one))
                saves.append(list(book.collect_events()))
        with Stopwatch() as watch:
            for events in saves:
                self.app.save(*events)
        return watch.seconds

    async def read(self, count: int) -> float:
        done, start = 0, 1
        with Stopwatch() as watch:
            while done < count:
                notifications = self.app.notification_log.select(start, min(PAGE, count - done))
                for notification in notifications:
                    self.app.mapper.to_domain_event(notification)
                done, start = done + len(notifications), notifications[-1].id + 1
        return watch.seconds

    async def prepare(self, events: list[OrderPlaced]) -> None:
        self.size = len(events)
        for snapshot in (False, True):
            book = PeerOrderBook()  # version 1: its creation event
            for version, one in enumerate(events[1:], 2):
                book.place(**msgspec.structs.asdict(one))
                if version % SNAPSHOT_EVERY == 0:
                    self.app.save(book)
            self.app.save(book)
            if snapshot:
                self.app.take_snapshot(book.id, version=snapshot_version(self.size))
            self.ids[snapshot] = book.id

    async def load(self, snapshot: bool, times: int) -> float:
        with Stopwatch() as watch:
            for _ in range(times):
                book: PeerOrderBook = self.app.repository.get(self.ids[snapshot])
        check(book.version == self.size == book.orders + 1, "eventsourcing load")
        return watch.seconds / times

    async def close(self) -> None:
        self.app.close()


Side = RawSide | TidingsSide | PeerSide
S = TypeVar("S", bound=Side)


def rotated(sides: list[S], run: int) -> list[S]:
    """The sides in the order of this run: each goes first in turn."""
    return sides[run % len(sides) :] + sides[: run % len(sides)]


Samples = dict[str, dict[str, list[float]]]  # benchmark -> side -> one value per run


async def measure(sides: list[Side], sizes: Sizes, log: Console) -> Samples:
    samples: Samples = {}
    frameworks = [side for side in sides if not isinstance(side, RawSide)]  # loads aggregates

    def add(bench: str, side: Side, value: float) -> None:
        samples.setdefault(bench, {}).setdefault(side.name, []).append(value)

    try:
        for side in sides:
            if isinstance(side, TidingsSide):
                await side.app.open()
        for run in range(sizes.runs):
            batched = [[make_orders(sizes.batch)] for _ in range(sizes.batches)]
            single = [[[one] for one in make_orders(sizes.singles)]]
            log.log(f"appends: run {run + 1} of {sizes.runs}")
            for side in rotated(sides, run):
                add("batched", side, sizes.batch * sizes.batches / await side.append(batched))
                add("single", side, sizes.singles / await side.append(single))
        for run in range(sizes.runs):
            log.log(f"log reads: run {run + 1} of {sizes.runs}")
            for side in rotated(sides, run):
                add("read", side, sizes.read / await side.read(sizes.read))
        events = make_orders(sizes.aggregate)
        for framework in frameworks:
            await framework.prepare(events)
        for run in range(sizes.runs):
            log.log(f"aggregate loads: run {run + 1} of {sizes.runs}")
            for framework in rotated(frameworks, run):
                add("load", framework, await framework.load(False, sizes.loads) * 1000)
                add("snapshot", framework, await framework.load(True, sizes.snapshot_loads) * 1000)
        return samples
    finally:
        for side in sides:
            await side.close()


# -- reporting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    label: str
    higher_is_better: bool
    min_of_raw: float | None = None  # tidings at least this fraction of the raw driver's speed
    min_vs_peer: float | None = None  # tidings at least this many times as fast as the peer


def report(title: str, samples: Samples, specs: dict[str, Spec], missed: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("benchmark", RAW, OURS, PEER, "vs raw", "vs peer", "target", "verdict"):
        table.add_column(column, justify="left" if column in ("benchmark", "target") else "right")
    for key, spec in specs.items():
        values = {name: statistics.median(runs) for name, runs in samples.get(key, {}).items()}
        ours, ratio = values.get(OURS), dict[str, float | None]()
        for other in (RAW, PEER):  # how many times as fast as the other side tidings is
            theirs = values.get(other)
            ratio[other] = (
                None if not (ours and theirs) else ours / theirs if spec.higher_is_better else theirs / ours
            )
        goals, verdicts = [], []
        for least, other, goal in (
            (spec.min_of_raw, RAW, ">={:.0%} raw"),
            (spec.min_vs_peer, PEER, ">={:g}x peer"),
        ):
            if least is not None:
                goals.append(goal.format(least))
                verdicts.append((ratio[other] or 0.0) >= least)
        if verdicts and not all(verdicts):
            missed.append(f"{title.split()[0]}: {spec.label.strip()}")
        table.add_row(
            spec.label,
            *(number(values.get(name), spec.higher_is_better) for name in (RAW, OURS, PEER)),
            "—" if ratio[RAW] is None else f"{ratio[RAW]:.0%}",
            "—" if ratio[PEER] is None else f"{ratio[PEER]:.2f}x",
            ", ".join(goals) or "—",
            "—" if not verdicts else "[green]met" if all(verdicts) else "[red]not met",
        )
    return table


def number(value: float | None, throughput: bool) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if throughput or value >= 100 else f"{value:.2f}"


# -- engines -------------------------------------------------------------------------------------


async def bench_sqlite(sizes: Sizes, log: Console) -> Samples:
    peer_sqlite_synchronous_full()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        raw = sqlite3.connect(Path(tmp, "raw.db"), isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        ours = TidingsSide(f"sqlite:///{Path(tmp, 'tidings.db')}?synchronous=FULL")
        peer = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(Path(tmp, "peer.db"))}
        return await measure([RawSide(raw), ours, PeerSide(peer)], sizes, log)


async def bench_postgres(url: str, sizes: Sizes, log: Console) -> Samples:
    parts = urlsplit(url)
    peer = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
    }
    raw = psycopg.connect(url, autocommit=True)
    return await measure([RawSide(raw), TidingsSide(url), PeerSide(peer)], sizes, log)


def throwaway_database(admin_url: str) -> tuple[str, str, str]:
    """Create ``tidings_bench_<random>``; returns its name, its URL and the server's version."""
    name = f"tidings_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        row = connection.execute("SHOW server_version").fetchone()
    return name, urlsplit(admin_url)._replace(path=f"/{name}").geturl(), str(row[0] if row else "?")


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def main_async(quick: bool, postgres: str) -> None:
    os.environ.pop("TIDINGS_STORE", None)  # it would override the store URL each App is given
    sizes = QUICK if quick else FULL
    replayed = sizes.aggregate - snapshot_version(sizes.aggregate)
    specs = {
        "batched": Spec(f"batched append ({sizes.batch:,}/call), ev/s", True, 0.5, 3.0),
        "single": Spec("single-event append, ev/s", True),
        "read": Spec(f"log read + decode ({sizes.read:,}), ev/s", True, 0.5, 3.0),
        "load": Spec(f"load {sizes.aggregate:,}-event aggregate, ms", False, None, 5.0),
        "snapshot": Spec(f"  with a snapshot ({replayed} replayed), ms", False, None, 1.0),
    }
    out, log = Console(width=None if sys.stdout.isatty() else 130), Console(stderr=True)
    missed: list[str] = []
    notes: list[str] = []
    log.log("SQLite")
    title = f"SQLite {sqlite3.sqlite_version}: temp-dir file, WAL, synchronous=FULL; raw driver: sqlite3"
    tables = [report(title, await bench_sqlite(sizes, log), specs, missed)]
    try:
        name, url, version = throwaway_database(postgres)
    except psycopg.Error as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        notes.append(f"PostgreSQL skipped, only SQLite was measured: {redact_url(postgres)}: {reason}")
    else:
        try:
            log.log(f"PostgreSQL {version}: throwaway database {name}")
            samples = await bench_postgres(url, sizes, log)
        finally:
            drop_database(postgres, name)
        title = f"PostgreSQL {version}: fresh database, synchronous_commit=on; raw driver: psycopg 3 (sync)"
        tables.append(report(title, samples, specs, missed))
    out.print(
        f"tidings store benchmark: median of {sizes.runs} runs per cell; {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; payload {len(msgspec.json.encode(make_orders(1)[0]))} bytes of JSON.\n"
        "vs raw: tidings' speed as a share of the raw driver's; vs peer: how many times as fast as "
        "eventsourcing (for rates and load times alike, more is better for tidings).\n"
    )
    for table in tables:
        out.print(table)
    for note in notes:
        out.print(f"[yellow]{note}")
    out.print("Targets missed: " + ("; ".join(missed) if missed else "none"))


def run_benchmark(
    module: str, description: str, main_async: Callable[[bool, str], Coroutine[Any, Any, None]]
) -> None:
    """The command line every benchmark takes: ``--quick`` and ``--postgres``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TIDINGS_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="a server where throwaway databases are created (default: $TIDINGS_BENCH_POSTGRES_URL)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.quick, args.postgres))


def main() -> None:
    run_benchmark("benchmarks.store", "The store benchmark.", main_async)


if __name__ == "__main__":
    main()
