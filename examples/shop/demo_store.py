"""The demo's store: the demo makes one, knows it again, and never takes one it did not make.

A store the demo makes begins with its mark: the first event of the log is ``DemoStoreMade`` in
the stream ``shop-demo``, and each run that ends adds a ``DemoRunEnded`` there. A store that
begins so, whose every stream is one the demo writes (its marks, the stock, the orders and
their sagas), whose every event comes from one of the demo's Apps and is of one of its types,
and whose other tables hold only what the demo's services write (see
``examples.shop.demo_contents``) is the demo's, ended or interrupted, and the next run replaces
it: the SQLite file is deleted, or on PostgreSQL the rows of tidings' own tables are removed
(the tables stay, and so do other tables and views of the database), together with the
JetStream streams that carried its log. The run holds the store from judging it to its end
(``examples.shop.demo_lock``): a second demo on it is refused.

A place that holds nothing at all (no file, an empty file, a database without tables, a store
with no rows but its identity) is used as it is. Anything else (another store, streams the demo
does not write, events of other Apps, documents or keys it does not write, other tables or
views in the SQLite file, a file that is no store) is refused untouched, and the refusal says
what to do.

On a bus, each store gets JetStream streams and subjects of its own (named after its log), so
that a run never meets the streams of an earlier run's store.
"""

from __future__ import annotations

import asyncio
import shlex
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from examples.shop.demo_contents import (
    MARK_STREAM,
    DemoStoreMade,
    demo_writes,
    own_tables,
    stranger,
    strangers,
)
from examples.shop.demo_lock import Held
from tidings.adapters.registry import open_store
from tidings.adapters.urls import redact_url
from tidings.errors import BackendUnavailable, ConfigurationError, TidingsError
from tidings.ports import EventStore

#: Services working on a store right now: consumer group members whose lease has not run out.
LIVE_MEMBERS = "SELECT count(*) FROM tidings_members WHERE expires_us > ?"
#: The tables of a PostgreSQL database that refer (by a foreign key) to one of the given tables.
REFERENCES = (
    "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
    " WHERE contype = 'f' AND confrelid::regclass::text = ANY(%s)"
)


@dataclass(frozen=True)
class Found:
    """What a store URL holds before a run: ``new`` (nothing yet), ``empty`` (a store without a
    row but its identity), or ``demo`` (a store the demo made, replaceable), with its log's id."""

    state: str
    log_id: str = ""
    partitions: int = 8


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def claim(url: str, bus: str | None, held: Held) -> Found:
    """Make ``url`` ready for a run: replace the demo's own store, keep an empty one; raise
    ``ConfigurationError`` (and change nothing) for anything else. ``held`` is the run's hold on
    the store (``examples.shop.demo_lock.exclusive``): no other demo judges or uses it meanwhile."""
    if held.url != url:
        raise ConfigurationError(f"the demo holds {redact_url(held.url)}, not {redact_url(url)}")
    path = sqlite_path(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        return Found("new")
    beside = _beside(path)
    try:
        found = _judge(url)
    except TidingsError:
        if path is not None:
            _tidy(path, beside)
        raise
    if found.state == "demo":
        if bus:
            asyncio.run(_delete_bus_streams(bus, found))
        _discard(url)
    return found


def _beside(path: Path | None) -> set[Path]:
    """The SQLite files beside the database (its write-ahead log and shared memory) that exist."""
    if path is None:
        return set()
    return {side for side in (Path(f"{path}-wal"), Path(f"{path}-shm")) if side.exists()}


def _tidy(path: Path, beside: set[Path]) -> None:
    """Remove what reading a refused store left beside it: SQLite makes an empty write-ahead log
    and its shared memory even to read a WAL database (none existed, so no one else has it open)."""
    made = _beside(path) - beside
    if all(side.name.endswith("-shm") or side.stat().st_size == 0 for side in made):
        for side in made:
            side.unlink(missing_ok=True)


def refusal(url: str, why: str) -> ConfigurationError:
    """The one line that says why the demo will not take ``url`` and what to do instead."""
    shown = redact_url(url)
    path = sqlite_path(url)
    if path is None:
        advice = "give it another --store (a new database, or one with no tables)"
    else:
        quoted = shlex.quote(str(path))
        advice = (
            "give it another --store, or delete this file if nothing in it is needed:"
            f" rm -f {quoted} {quoted}-wal {quoted}-shm"
        )
    return ConfigurationError(f"{shown} {why}; the demo replaces only a store it made: {advice}")


@dataclass(frozen=True)
class Survey:
    """What a store's database holds, seen from outside the store: its ``tables`` (each with
    whether it holds a row), the consumer group members with a ``live`` lease (services working
    on it now), the tables, views and triggers of a SQLite file that are not tidings' own
    (``foreign``: they go with the file), and what tidings' tables hold that the demo does not
    write (``strange``)."""

    tables: dict[str, bool]
    live: int = 0
    foreign: tuple[str, ...] = ()
    strange: tuple[str, ...] = ()


def _judge(url: str) -> Found:
    survey = _survey(url)
    tables = survey.tables
    others = sorted(name for name in tables if not name.startswith("tidings_"))
    if not tables:
        return Found("new")
    if "tidings_events" not in tables:
        raise refusal(url, f"is not a tidings store (it has the tables {_some(others)})")
    filled = sorted(name for name, rows in tables.items() if rows and name != "tidings_meta")
    if not filled and not others and not survey.foreign:
        return Found("empty")
    if not tables["tidings_events"]:
        held = ", ".join(filled + others) or _some(list(survey.foreign))
        raise refusal(url, f"holds no events but is not empty (rows or tables: {held})")
    found = asyncio.run(_inspect(url))
    if survey.foreign:
        raise refusal(url, f"holds tables or views the demo does not make ({_some(list(survey.foreign))})")
    if survey.strange:
        raise refusal(url, f"holds what the demo does not write ({_some(list(survey.strange))})")
    if survey.live:
        raise ConfigurationError(
            f"{redact_url(url)} is the demo's store but {survey.live} service(s) still work on it (their"
            " consumer group leases are live): stop those `tidings run` processes, or wait a few"
            " seconds if they were just stopped, then run the demo again"
        )
    return found


def _survey(url: str) -> Survey:
    path = sqlite_path(url)
    now_us = int(time.time() * 1_000_000)
    if path is not None:
        return _survey_sqlite(url, path, now_us)
    return _survey_postgres(url, now_us)


def _survey_sqlite(url: str, path: Path, now_us: int) -> Survey:
    # Read-only: looking at what may be someone else's file must never change it.
    own = own_tables(postgres=False)
    try:
        with closing(sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)) as connection:
            objects = [
                (kind, name)
                for kind, name in connection.execute(
                    "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger')"
                )
                if not name.startswith("sqlite_")
            ]
            names = [name for kind, name in objects if kind == "table"]
            tables = {name: _holds_rows(connection, name) for name in names}
            foreign = tuple(f"{kind} {name}" for kind, name in objects if kind != "table" or name not in own)
            if "tidings_events" not in tables:
                return Survey(tables, foreign=foreign)
            live = (
                _live_members(connection.execute, LIVE_MEMBERS, now_us) if "tidings_members" in tables else 0
            )
            strange = strangers(lambda statement: connection.execute(statement).fetchall(), own & set(tables))
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise BackendUnavailable(f"{redact_url(url)} is locked by another process; try again") from None
        raise refusal(url, "is not a tidings store (SQLite cannot read it as a database)") from None
    return Survey(tables, live, foreign, tuple(strange))


def _survey_postgres(url: str, now_us: int) -> Survey:
    import psycopg
    from psycopg import sql

    from tidings.adapters.postgres import PostgresSettings

    own = own_tables(postgres=True)
    try:
        conninfo = PostgresSettings.from_url(url).conninfo
        with psycopg.connect(conninfo, autocommit=True) as connection:
            names = [
                name
                for (name,) in connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
            ]
            tables: dict[str, bool] = {}
            for name in names:
                exists = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(name))
                row = connection.execute(exists).fetchone()
                tables[name] = bool(row and row[0])
            if "tidings_events" not in tables:
                return Survey(tables)
            live = (
                _live_members(connection.execute, LIVE_MEMBERS.replace("?", "%s"), now_us)
                if "tidings_members" in tables
                else 0
            )
            # Other tables and views of the database are left as they are by the replacement,
            # but one that refers to the store's rows would keep them from being removed.
            strange = strangers(lambda statement: connection.execute(statement).fetchall(), own & set(tables))
            strange += [
                f"a foreign key of {referrer} on {referred}"
                for referrer, referred in connection.execute(REFERENCES, (sorted(own),))
                if referrer not in own
            ]
    except psycopg.Error as exc:
        raise BackendUnavailable(
            f"PostgreSQL at {redact_url(url)}: cannot look at the store ({type(exc).__name__})"
        ) from None
    return Survey(tables, live, strange=tuple(strange))


def _holds_rows(connection: sqlite3.Connection, table: str) -> bool:
    quoted = '"' + table.replace('"', '""') + '"'  # a name read from the file's own schema
    return bool(connection.execute(f"SELECT EXISTS (SELECT 1 FROM {quoted})").fetchone()[0])  # noqa: S608


def _live_members(execute: Callable[..., Any], statement: str, now_us: int) -> int:
    row = execute(statement, (now_us,)).fetchone()
    return int(row[0]) if row else 0


async def _inspect(url: str) -> Found:
    """A store with events: the demo's if its log begins with the demo's mark, its every stream
    is one the demo writes, and its every event comes from one of the demo's Apps and is of one
    of its types."""
    store = open_store(url, create=False)  # read-only: nothing is written to what may not be ours
    try:
        await store.open()
    except TidingsError as exc:
        if isinstance(exc, BackendUnavailable) or sqlite_path(url) is None:
            raise
        raise refusal(url, f"is not a tidings store ({exc})") from None
    try:
        first = [record async for record in store.read_log(after=0, limit=1)]
        streams = [info.stream for info in await store.list_streams()]
        strange = await _strange_event(store)
    finally:
        await store.close()
    if not first or first[0].stream != MARK_STREAM or first[0].envelope.type != DemoStoreMade.__event_type__:
        raise refusal(url, f"holds a store the demo did not make (streams {_some(streams)})")
    foreign = [stream for stream in streams if not demo_writes(stream)]
    if foreign:
        raise refusal(url, f"holds streams the demo does not write ({_some(foreign)})")
    if strange:
        raise refusal(url, f"holds {strange}, which the demo does not write")
    return Found("demo", store.log_id, store.feed.partitions)


async def _strange_event(log: EventStore) -> str | None:
    """The first event of the log that another App wrote, or that is of a type the demo does not
    write, in words; None if there is none."""
    after = 0
    while True:
        batch = [record async for record in log.read_log(after=after, limit=1000)]
        if not batch:
            return None
        for record in batch:
            why = stranger(record.envelope)
            if why:
                return f"{why} in {record.stream} at position {record.position}"
        after = batch[-1].position


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def _discard(url: str) -> None:
    path = sqlite_path(url)
    if path is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    _empty_postgres_tables(url)


def _empty_postgres_tables(url: str) -> None:
    """Remove every row of tidings' own tables, in one transaction (the store is the demo's); the
    next App to open the store makes it anew, with an identity of its own. The tables stay:
    a view someone made on them would keep a ``DROP`` from working (and CASCADE would drop the
    view), and tables of the database that are not tidings' own are not touched at all."""
    import psycopg
    from psycopg import sql

    from tidings.adapters.postgres import PostgresSettings

    own = own_tables(postgres=True)
    try:
        conninfo = PostgresSettings.from_url(url).conninfo
        with psycopg.connect(conninfo, autocommit=True) as connection, connection.transaction():
            present = sorted(
                name
                for (name,) in connection.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                )
                if name in own
            )
            if present:
                tables = sql.SQL(", ").join(sql.Identifier(name) for name in present)
                connection.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(tables))
    except psycopg.errors.FeatureNotSupported:
        # A table of the database refers to one of tidings' tables (a foreign key).
        raise refusal(url, "has tables that refer to the demo's store (foreign keys)") from None
    except psycopg.Error as exc:
        raise BackendUnavailable(
            f"PostgreSQL at {redact_url(url)}: cannot replace the demo's store ({type(exc).__name__})"
        ) from None


def bus_for(bus: str, log_id: str) -> str:
    """``bus`` with a JetStream stream name and subject prefix of the store's own, unless the URL
    names them: runs on fresh stores never meet an earlier store's streams or subjects."""
    parts = urlsplit(bus)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    tag = log_id[:12]
    options.setdefault("stream", f"SHOP_{tag}")
    options.setdefault("prefix", f"shop_{tag}")
    return urlunsplit(parts._replace(query=urlencode(options)))


async def _delete_bus_streams(bus: str, found: Found) -> None:
    """The JetStream streams that carried the replaced store's log (and no other)."""
    import nats
    from nats.js.errors import NotFoundError

    from tidings.adapters.nats.bus import LOG_KEY, NatsSettings

    settings = NatsSettings.from_url(bus_for(bus, found.log_id))
    tls = settings.tls_context()
    try:
        client = await nats.connect(
            servers=list(settings.servers),
            connect_timeout=settings.connect_timeout,
            max_reconnect_attempts=0,
            tls=tls,
            tls_hostname=urlsplit(settings.servers[0]).hostname if tls else None,
        )
        try:
            stream = client.jetstream()
            for partition in range(found.partitions):
                name = settings.stream_of(partition)
                try:
                    info = await stream.stream_info(name)
                except NotFoundError:
                    continue
                if (info.config.metadata or {}).get(LOG_KEY) == found.log_id:
                    await stream.delete_stream(name)
        finally:
            await client.close()
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise BackendUnavailable(
            f"NATS at {redact_url(bus)}: cannot delete the demo's old streams ({type(exc).__name__})"
        ) from None
