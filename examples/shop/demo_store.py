"""The demo's store: the demo makes one, knows it again, and never takes one it did not make.

A store the demo makes begins with its mark: the first event of the log is ``DemoStoreMade`` in
the stream ``shop-demo``, and every run ends with a ``DemoRunEnded`` there. A store whose log
begins so and ends with the demo's own last event is the demo's, and the next run replaces it:
the SQLite file is deleted, or on PostgreSQL the tidings tables are dropped, together with the
JetStream streams that carried its log. An empty store is used as it is. Anything else (another
store, events appended after the demo's run, a file that is no store) is refused, untouched.

On a bus, each store gets JetStream streams and subjects of its own (named after its log), so
that a run never meets the streams of an earlier run's store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import tidings
from tidings.adapters.registry import open_store
from tidings.adapters.urls import redact_url
from tidings.errors import BackendUnavailable, ConfigurationError, TidingsError
from tidings.ports import Log

MARK_STREAM = "shop-demo"


class DemoStoreMade(tidings.Event, topic="shop.demo.made", type="shop.DemoStoreMade"):
    """The first event of a store the demo made."""


class DemoRunEnded(tidings.Event, topic="shop.demo.ended", type="shop.DemoRunEnded"):
    """The last event of each run: a store whose log ends here holds nothing but the demo's."""

    orders: int


@dataclass(frozen=True)
class Found:
    """What a store URL holds before a run: ``new`` (nothing yet), ``empty`` (a store without
    events), or ``demo`` (a store the demo made, replaceable), with its log's id."""

    state: str
    log_id: str = ""
    partitions: int = 8


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def claim(url: str, bus: str | None) -> Found:
    """Make ``url`` ready for a run: replace the demo's own store, keep an empty one; raise
    ``ConfigurationError`` (and change nothing) for anything else."""
    path = sqlite_path(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        return Found("new")
    beside = _beside(path)
    try:
        found = asyncio.run(_inspect(url))
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


async def _inspect(url: str) -> Found:
    shown = redact_url(url)
    advice = "the demo replaces only a store it made: give it another --store"
    # A SQLite file is opened read-only (nothing is written to what may be someone else's
    # file); on PostgreSQL the demo may make its tables in a database that has none.
    store = open_store(url, create=sqlite_path(url) is None)
    try:
        await store.open()
    except TidingsError as exc:
        if isinstance(exc, BackendUnavailable) or sqlite_path(url) is None:
            raise
        raise ConfigurationError(f"{shown} is not a tidings store ({exc}); {advice}") from None
    try:
        assert isinstance(store, Log)  # noqa: S101 - every store engine has a log
        head = await store.head_position()
        if head == 0:
            return Found("empty", store.log_id, store.partitions)
        first = [record async for record in store.read_log(after=0, limit=1)]
        marks = await store.read_stream(MARK_STREAM, backwards=True, limit=1)
        streams = await store.list_streams(limit=3)
    finally:
        await store.close()
    if not first or first[0].stream != MARK_STREAM or not marks:
        names = ", ".join(info.stream for info in streams)
        raise ConfigurationError(
            f"{shown} holds a store the demo did not make (streams {names}, …); {advice}"
        )
    if marks[0].position != head or marks[0].envelope.type != DemoRunEnded.__event_type__:
        raise ConfigurationError(
            f"{shown} holds events appended after the demo's last run (the demo's last event is at "
            f"position {marks[0].position}, the log's at {head}); {advice}"
        )
    return Found("demo", store.log_id, store.partitions)


def _discard(url: str) -> None:
    path = sqlite_path(url)
    if path is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    _drop_postgres_tables(url)


def _drop_postgres_tables(url: str) -> None:
    """Every tidings table of the database, in one transaction (the store is the demo's)."""
    import psycopg
    from psycopg import sql

    from tidings.adapters.postgres import PostgresSettings

    try:
        conninfo = PostgresSettings.from_url(url).conninfo
        with psycopg.connect(conninfo, autocommit=True) as connection, connection.transaction():
            rows = connection.execute(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = current_schema() AND tablename LIKE 'tidings\\_%'"
            ).fetchall()
            if rows:
                tables = sql.SQL(", ").join(sql.Identifier(name) for (name,) in rows)
                connection.execute(sql.SQL("DROP TABLE {} CASCADE").format(tables))
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
