"""The store benchmark: tidings beside the raw driver and the ``eventsourcing`` library.

``python -m benchmarks.store`` (what ``make bench`` runs) measures, on SQLite and on PostgreSQL,
batched and single-event appends, reading and decoding the global log, and loading a
10,000-event aggregate with and without a snapshot. Within each run the three sides take turns
(in a rotating order), so a noisy machine slows them alike; every cell is the median of the runs
and the ratios are what to read. Options: ``--quick`` (small sizes, a smoke run) and
``--postgres URL`` (a server where a throwaway database may be created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import secrets
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
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


@dataclass(frozen=True)
class Sizes:
    runs: int
    batch: int  # events per batched append
    batches: int  # batched appends per run, each into a new stream
    singles: int  # single-event appends per run
    read: int  # events read from the log per run
    aggregate: int  # events of the aggregate that is loaded
    loads: int  # loads per run without a snapshot
    snapshot_loads: int  # loads per run with one


FULL = Sizes(5, 1000, 10, 200, 20_000, 10_000, 3, 50)
QUICK = Sizes(3, 200, 3, 20, 1_000, 1_000, 1, 5)


# -- the payload, ~200 bytes of JSON, in each side's own terms --------------------------------


class Order(msgspec.Struct, frozen=True):
    order_id: str
    customer_id: str
    sku: str
    quantity: int
    unit_price_cents: int
    currency: str
    shipping: str
    note: str


class OrderPlaced(tidings.Event, topic="shop.order.placed"):
    order_id: str
    customer_id: str
    sku: str
    quantity: int
    unit_price_cents: int
    currency: str
    shipping: str
    note: str


def make_orders(count: int) -> list[Order]:
    rng = secrets.SystemRandom()
    return [
        Order(
            order_id=str(uuid.uuid4()),
            customer_id=f"cust-{rng.randrange(10**8):08d}",
            sku=f"SKU-{rng.randrange(10**5):05d}-{rng.choice('SML')}",
            quantity=rng.randrange(1, 10),
            unit_price_cents=rng.randrange(100, 100_000),
            currency="EUR",
            shipping=rng.choice(("standard", "express", "pickup")),
            note=f"leave at the door, ring twice, gift wrap {rng.randrange(10**6):06d}",
        )
        for _ in range(count)
    ]


def fields(order: Order) -> dict[str, Any]:
    return msgspec.structs.asdict(order)


class OrderBook(tidings.Aggregate, category="book"):
    orders: int = 0
    units: int = 0
    revenue_cents: int = 0
    last_order: str = ""

    def apply(self, event: tidings.Event) -> None:
        if isinstance(event, OrderPlaced):
            self.orders += 1
            self.units += event.quantity
            self.revenue_cents += event.quantity * event.unit_price_cents
            self.last_order = event.order_id


class SnapshottedOrderBook(OrderBook, category="snapbook", snapshot_every=SNAPSHOT_EVERY):
    pass


class PeerOrderBook(PeerAggregate):
    def __init__(self) -> None:
        self.orders = 0
        self.units = 0
        self.revenue_cents = 0
        self.last_order = ""

    @event("OrderPlaced")
    def place(
        self,
        order_id: str,
        customer_id: str,
        sku: str,
        quantity: int,
        unit_price_cents: int,
        currency: str,
        shipping: str,
        note: str,
    ) -> None:
        self.orders += 1
        self.units += quantity
        self.revenue_cents += quantity * unit_price_cents
        self.last_order = order_id


class PeerApp(Application[uuid.UUID]):
    log_section_size = PAGE


def _peer_sqlite_synchronous_full() -> None:
    """The peer leaves SQLite's ``synchronous`` at the build's default; make it FULL as elsewhere."""
    create = SQLiteConnectionPool._create_connection

    def create_full(pool: SQLiteConnectionPool) -> Any:
        connection = create(pool)
        connection._sqlite_conn.execute("PRAGMA synchronous=FULL")
        return connection

    SQLiteConnectionPool._create_connection = create_full  # type: ignore[method-assign]


# -- the sides ---------------------------------------------------------------------------------


class Watch:
    seconds = 0.0


@contextmanager
def stopwatch() -> Iterator[Watch]:
    gc.collect()
    watch = Watch()
    start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - start


def check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


class Side(Protocol):
    name: str

    async def batched(self, batches: list[list[Order]]) -> float: ...
    async def single(self, orders: list[Order]) -> float: ...
    async def read(self, count: int) -> float: ...
    async def prepare(self, orders: list[Order]) -> None: ...
    async def load(self, snapshot: bool, times: int) -> float | None: ...
    async def close(self) -> None: ...


class RawSide:
    """The practical limit: plain rows (stream, version, type, JSON) through the bare driver."""

    name = "raw driver"
    INSERT = "INSERT INTO raw_events (stream, version, type, data) VALUES (?, ?, ?, ?)"
    PAGE_SQL = "SELECT position, stream, version, data FROM raw_events WHERE position > ? ORDER BY position LIMIT ?"
    STREAM_SQL = "SELECT data FROM raw_events WHERE stream = ? ORDER BY version"

    def __init__(self, connection: sqlite3.Connection | psycopg.Connection[Any]) -> None:
        self.db = connection
        self.pg = isinstance(connection, psycopg.Connection)
        position = "BIGINT GENERATED ALWAYS AS IDENTITY" if self.pg else "INTEGER"
        self._write(
            f"CREATE TABLE raw_events (position {position} PRIMARY KEY, stream TEXT NOT NULL,"
            f" version BIGINT NOT NULL, type TEXT NOT NULL, data {'BYTEA' if self.pg else 'BLOB'} NOT NULL,"
            " UNIQUE (stream, version))",
            [()],
        )
        self.encoder = msgspec.json.Encoder()
        self.decoder = msgspec.json.Decoder(Order)
        self.stream = ""

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.pg else text

    def _write(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """One transaction: ``executemany`` (pipelined by psycopg) for a batch, ``execute`` for one row."""
        if isinstance(self.db, psycopg.Connection):
            with self.db.transaction(), self.db.cursor() as cursor:
                if len(rows) == 1:
                    cursor.execute(self._sql(statement), rows[0])
                else:
                    cursor.executemany(self._sql(statement), rows)
        else:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(statement, rows)
            self.db.execute("COMMIT")

    def _query(self, statement: str, args: tuple[Any, ...]) -> list[Any]:
        return self.db.execute(self._sql(statement), args).fetchall()  # type: ignore[arg-type]

    async def batched(self, batches: list[list[Order]]) -> float:
        streams = [f"orders-{uuid.uuid4().hex}" for _ in batches]
        with stopwatch() as watch:
            for stream, batch in zip(streams, batches, strict=True):
                rows = [(stream, v, "OrderPlaced", self.encoder.encode(o)) for v, o in enumerate(batch, 1)]
                self._write(self.INSERT, rows)
        return watch.seconds

    async def single(self, orders: list[Order]) -> float:
        stream = f"orders-{uuid.uuid4().hex}"
        with stopwatch() as watch:
            for version, order in enumerate(orders, 1):
                self._write(self.INSERT, [(stream, version, "OrderPlaced", self.encoder.encode(order))])
        return watch.seconds

    async def read(self, count: int) -> float:
        done = after = 0
        with stopwatch() as watch:
            while done < count:
                rows = self._query(self.PAGE_SQL, (after, min(PAGE, count - done)))
                for row in rows:
                    self.decoder.decode(row[3])
                done, after = done + len(rows), rows[-1][0]
        return watch.seconds

    async def prepare(self, orders: list[Order]) -> None:
        self.stream = f"book-{uuid.uuid4().hex}"
        rows = [(self.stream, v, "OrderPlaced", self.encoder.encode(o)) for v, o in enumerate(orders, 1)]
        self._write(self.INSERT, rows)

    async def load(self, snapshot: bool, times: int) -> float | None:
        if snapshot:
            return None
        with stopwatch() as watch:
            for _ in range(times):
                orders = units = revenue = 0
                for (data,) in self._query(self.STREAM_SQL, (self.stream,)):
                    order = self.decoder.decode(data)
                    orders, units = orders + 1, units + order.quantity
                    revenue += order.quantity * order.unit_price_cents
        return watch.seconds / times

    async def close(self) -> None:
        self.db.close()


class TidingsSide:
    name = "tidings"

    def __init__(self, url: str) -> None:
        self.app = tidings.App("bench", store=url)
        self.ids: dict[type[OrderBook], str] = {}
        self.size = 0

    async def batched(self, batches: list[list[Order]]) -> float:
        events = [[OrderPlaced(**fields(o)) for o in batch] for batch in batches]
        streams = [f"orders-{uuid.uuid4().hex}" for _ in batches]
        with stopwatch() as watch:
            for stream, batch in zip(streams, events, strict=True):
                await self.app.append(stream, batch, expected_version=tidings.NO_STREAM)
        return watch.seconds

    async def single(self, orders: list[Order]) -> float:
        events = [OrderPlaced(**fields(o)) for o in orders]
        stream = f"orders-{uuid.uuid4().hex}"
        with stopwatch() as watch:
            for version, one in enumerate(events):
                await self.app.append(stream, one, expected_version=version)
        return watch.seconds

    async def read(self, count: int) -> float:
        codec, done = self.app.codec, 0
        with stopwatch() as watch:
            async for record in self.app.store.read_log(limit=count, batch_size=PAGE):
                codec.decode(record.envelope)
                done += 1
        check(done == count, f"tidings read {done} of {count} events")
        return watch.seconds

    async def prepare(self, orders: list[Order]) -> None:
        self.size = len(orders)
        for cls in (OrderBook, SnapshottedOrderBook):
            book = cls(uuid.uuid4().hex)
            for index, order in enumerate(orders, 1):
                book.record(OrderPlaced(**fields(order)))
                if index % SNAPSHOT_EVERY == 0 or index == len(orders):
                    await self.app.save(book)
            self.ids[cls] = book.id
        snapshot = await self.app.store.load_snapshot(SnapshottedOrderBook.stream_of(book.id))
        check(snapshot is not None and snapshot.version == snapshot_version(self.size), "tidings snapshot")

    async def load(self, snapshot: bool, times: int) -> float | None:
        cls = SnapshottedOrderBook if snapshot else OrderBook
        with stopwatch() as watch:
            for _ in range(times):
                book = await self.app.load(cls, self.ids[cls])
        check(book.version == self.size == book.orders, "tidings load")
        return watch.seconds / times

    async def close(self) -> None:
        await self.app.close()


class PeerSide:
    """``eventsourcing``'s Application, Aggregate and notification log (sync; its own pool)."""

    name = "eventsourcing"

    def __init__(self, env: dict[str, str]) -> None:
        self.app = PeerApp(env={**env, "IS_SNAPSHOTTING_ENABLED": "y"})
        self.ids: dict[bool, uuid.UUID] = {}
        self.size = 0

    async def batched(self, batches: list[list[Order]]) -> float:
        books = []
        for batch in batches:  # the creation event counts as the first of each batch
            book = PeerOrderBook()
            for order in batch[1:]:
                book.place(**fields(order))
            books.append(book)
        with stopwatch() as watch:
            for book in books:
                self.app.save(book)
        return watch.seconds

    async def single(self, orders: list[Order]) -> float:
        book = PeerOrderBook()
        self.app.save(book)
        with stopwatch() as watch:
            for order in orders:
                book.place(**fields(order))
                self.app.save(book)
        return watch.seconds

    async def read(self, count: int) -> float:
        done, start = 0, 1
        with stopwatch() as watch:
            while done < count:
                notifications = self.app.notification_log.select(start, min(PAGE, count - done))
                for notification in notifications:
                    self.app.mapper.to_domain_event(notification)
                done, start = done + len(notifications), notifications[-1].id + 1
        return watch.seconds

    async def prepare(self, orders: list[Order]) -> None:
        self.size = len(orders)
        for snapshot in (False, True):
            book = PeerOrderBook()  # version 1: the creation event
            for version, order in enumerate(orders[1:], 2):
                book.place(**fields(order))
                if version % SNAPSHOT_EVERY == 0:
                    self.app.save(book)
            self.app.save(book)
            if snapshot:
                self.app.take_snapshot(book.id, version=snapshot_version(self.size))
            self.ids[snapshot] = book.id

    async def load(self, snapshot: bool, times: int) -> float | None:
        with stopwatch() as watch:
            for _ in range(times):
                book: PeerOrderBook = self.app.repository.get(self.ids[snapshot])
        check(book.version == self.size == book.orders + 1, "eventsourcing load")
        return watch.seconds / times

    async def close(self) -> None:
        self.app.close()


def snapshot_version(size: int) -> int:
    return size // SNAPSHOT_EVERY * SNAPSHOT_EVERY


# -- measuring and reporting -------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    label: str
    unit: str
    higher_is_better: bool
    min_of_raw: float | None = None  # tidings at least this fraction of the raw driver
    min_vs_peer: float | None = None  # tidings at least this many times better than the peer


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, bench: str, side: str, value: float | None) -> None:
        if value is not None:
            self.samples.setdefault(bench, {}).setdefault(side, []).append(value)

    def median(self, bench: str, side: str) -> float | None:
        values = self.samples.get(bench, {}).get(side)
        return statistics.median(values) if values else None


async def run_engine(sides: list[Side], sizes: Sizes, specs: dict[str, Spec], log: Console) -> Results:
    results = Results()

    def turns(run: int) -> list[Side]:
        return sides[run % len(sides) :] + sides[: run % len(sides)]

    for run in range(sizes.runs):
        log.log(f"run {run + 1}/{sizes.runs}: appends")
        batches = [make_orders(sizes.batch) for _ in range(sizes.batches)]
        singles = make_orders(sizes.singles)
        for side in turns(run):
            results.add("batched", side.name, sizes.batch * sizes.batches / await side.batched(batches))
        for side in turns(run):
            results.add("single", side.name, sizes.singles / await side.single(singles))
    for run in range(sizes.runs):
        log.log(f"run {run + 1}/{sizes.runs}: log reads")
        for side in turns(run):
            results.add("read", side.name, sizes.read / await side.read(sizes.read))
    log.log(f"writing the {sizes.aggregate:,}-event aggregates")
    orders = make_orders(sizes.aggregate)
    for side in sides:
        await side.prepare(orders)
    for run in range(sizes.runs):
        log.log(f"run {run + 1}/{sizes.runs}: aggregate loads")
        for side in turns(run):
            seconds = await side.load(False, sizes.loads)
            results.add("load", side.name, None if seconds is None else seconds * 1000)
            seconds = await side.load(True, sizes.snapshot_loads)
            results.add("snapshot", side.name, None if seconds is None else seconds * 1000)
    return results


def add_rows(table: Table, engine: str, results: Results, specs: dict[str, Spec]) -> list[str]:
    """Add an engine's rows; returns the targets missed."""
    missed: list[str] = []
    for key, spec in specs.items():
        raw, ours, peer = (results.median(key, n) for n in ("raw driver", "tidings", "eventsourcing"))

        def better(other: float | None) -> float | None:
            if other is None or ours is None:
                return None
            return ours / other if spec.higher_is_better else other / ours

        of_raw, vs_peer = better(raw), better(peer)
        goals, verdicts = [], []
        if spec.min_of_raw is not None:
            goals.append(f"≥{spec.min_of_raw:.0%} raw")
            verdicts.append(of_raw is not None and of_raw >= spec.min_of_raw)
        if spec.min_vs_peer is not None:
            goals.append(f"≥{spec.min_vs_peer:g}× peer" if spec.min_vs_peer > 1 else "≥ peer")
            verdicts.append(vs_peer is not None and vs_peer >= spec.min_vs_peer)
        verdict = "—" if not verdicts else "[green]met" if all(verdicts) else "[red]not met"
        if verdicts and not all(verdicts):
            missed.append(f"{engine}: {spec.label}")
        cells = [fmt(raw, spec.unit), fmt(ours, spec.unit), fmt(peer, spec.unit)]
        ratios = ["—" if of_raw is None else f"{of_raw:.0%}", "—" if vs_peer is None else f"{vs_peer:.2f}×"]
        table.add_row(engine, spec.label, spec.unit, *cells, *ratios, ", ".join(goals) or "—", verdict)
        engine = ""
    table.add_section()
    return missed


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if unit == "events/s" else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


# -- engines -----------------------------------------------------------------------------------


async def opened(sides: list[Side]) -> list[Side]:
    for side in sides:
        if isinstance(side, TidingsSide):
            await side.app.open()
    return sides


async def bench_sqlite(sizes: Sizes, specs: dict[str, Spec], log: Console) -> Results:
    _peer_sqlite_synchronous_full()
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        raw = sqlite3.connect(Path(tmp, "raw.db"), isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        sides = await opened(
            [
                RawSide(raw),
                TidingsSide(f"sqlite:///{Path(tmp, 'tidings.db')}?synchronous=FULL"),
                PeerSide({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(Path(tmp, "peer.db"))}),
            ]
        )
        try:
            return await run_engine(sides, sizes, specs, log)
        finally:
            for side in sides:
                await side.close()


async def bench_postgres(url: str, sizes: Sizes, specs: dict[str, Spec], log: Console) -> Results:
    parts = urlsplit(url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": parts.username or "postgres",
        "POSTGRES_PASSWORD": parts.password or "",
    }
    sides = await opened(
        [RawSide(psycopg.connect(url, autocommit=True)), TidingsSide(url), PeerSide(env)]
    )
    try:
        return await run_engine(sides, sizes, specs, log)
    finally:
        for side in sides:
            await side.close()


def throwaway_database(admin_url: str) -> tuple[str, str, str]:
    """Create ``tidings_bench_<random>``; returns its name, its URL and the server's version."""
    name = f"tidings_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        version = str(connection.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return name, urlsplit(admin_url)._replace(path=f"/{name}").geturl(), version


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def main_async(quick: bool, postgres: str) -> None:
    os.environ.pop("TIDINGS_STORE", None)  # it would override the store URL each App is given
    sizes = QUICK if quick else FULL
    size = f"{sizes.aggregate:,}-event"
    specs = {
        "batched": Spec(f"batched append ({sizes.batch:,}/call)", "events/s", True, 0.5, 3.0),
        "single": Spec("single-event append", "events/s", True),
        "read": Spec(f"log read + decode ({sizes.read:,})", "events/s", True, 0.5, 3.0),
        "load": Spec(f"load {size} aggregate", "ms/load", False, None, 5.0),
        "snapshot": Spec(f"… with snapshot ({sizes.aggregate - snapshot_version(sizes.aggregate)} replayed)",
                         "ms/load", False, None, 1.0),
    }
    out, log = Console(), Console(stderr=True)
    table = Table(title="tidings store benchmark (median of %d runs)" % sizes.runs)
    for column in ("engine", "benchmark", "unit", "raw driver", "tidings", "eventsourcing"):
        table.add_column(column, justify="right" if column in ("raw driver", "tidings", "eventsourcing") else "left")
    for column in ("tidings ÷ raw", "tidings vs peer", "target", "verdict"):
        table.add_column(column, justify="right" if column != "target" else "left")
    log.log("SQLite")
    missed = add_rows(table, "SQLite", await bench_sqlite(sizes, specs, log), specs)
    notes = [f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL, raw side: sqlite3."]
    try:
        name, url, version = throwaway_database(postgres)
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        notes.append(f"PostgreSQL not benchmarked: cannot reach {redact_url(postgres)} ({reason}).")
    else:
        try:
            log.log(f"PostgreSQL {version}, throwaway database {name}")
            missed += add_rows(table, "PostgreSQL", await bench_postgres(url, sizes, specs, log), specs)
            notes.append(
                f"PostgreSQL {version}, fresh database, synchronous_commit=on, raw side: psycopg 3 (sync)."
            )
        finally:
            drop_database(postgres, name)
    payload = len(msgspec.json.encode(make_orders(1)[0]))
    table.caption = (
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; payload {payload} bytes of JSON; "
        "tidings ÷ raw and vs peer: >1 (or >100%) means tidings is better"
    )
    out.print(table)
    for note in notes:
        out.print(note)
    out.print("Targets missed: " + ("; ".join(missed) if missed else "none"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TIDINGS_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="a server where a throwaway database may be created (env TIDINGS_BENCH_POSTGRES_URL)",
    )
    args = parser.parse_args()
    asyncio.run(main_async(args.quick, args.postgres))


if __name__ == "__main__":
    main()
