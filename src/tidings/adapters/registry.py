"""The one place that picks an adapter by URL scheme; drivers are imported only when used."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

from tidings.adapters.urls import redact_url
from tidings.domain.envelope import DEFAULT_MAX_SIZE
from tidings.domain.findings import Finding
from tidings.errors import ConfigurationError
from tidings.ports import Bus, EventStore

STORE_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_store(url: str, *, create: bool = True, max_size: int = DEFAULT_MAX_SIZE) -> EventStore:
    """An event store for ``url`` (not yet opened: ``await store.open()``).

    ``create=False`` is for tools that only inspect a store: nothing is created or written, a
    SQLite file is opened read-only, and a place that holds no tidings store is an error.
    ``max_size``: the most data an event may hold (the App's ``max_event_size``).
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from tidings.adapters.sqlite import SqliteSettings, SqliteStore

        return SqliteStore(replace(SqliteSettings.from_url(url, create=create), max_size=max_size))
    if scheme in ("postgresql", "postgres"):
        try:
            from tidings.adapters.postgres import PostgresSettings, PostgresStore
        except ImportError as exc:
            raise ConfigurationError(
                f"the PostgreSQL store needs its driver ({exc.name} is missing): "
                "pip install 'tidings[postgres]'"
            ) from None
        return PostgresStore(replace(PostgresSettings.from_url(url, create=create), max_size=max_size))
    raise ConfigurationError(
        f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; "
        f"expected one of: {', '.join(s + '://' for s in STORE_SCHEMES)}"
    )


def open_bus(url: str) -> Bus:
    """A bus for ``url`` (``nats://`` or ``tls://``), not yet opened."""
    scheme = urlsplit(url).scheme
    if scheme in ("nats", "tls"):
        try:
            from tidings.adapters.nats.bus import NatsBus
            from tidings.adapters.nats.settings import NatsSettings
        except ImportError as exc:
            raise ConfigurationError(
                f"the NATS bus needs its client ({exc.name} is missing): pip install 'tidings[nats]'"
            ) from None
        return NatsBus(NatsSettings.from_url(url))
    raise ConfigurationError(
        f"unknown bus URL scheme {scheme!r} in {redact_url(url)!r}; expected nats:// or tls://"
    )


async def examine_store(url: str) -> list[Finding]:
    """What the durability doctor finds in the engine of the store at ``url`` (which opened)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from tidings.adapters.sqlite import SqliteSettings
        from tidings.adapters.sqlite.doctor import examine_sqlite

        return await asyncio.to_thread(examine_sqlite, SqliteSettings.from_url(url, create=False))
    if scheme in ("postgresql", "postgres"):
        from tidings.adapters.postgres import PostgresSettings
        from tidings.adapters.postgres.doctor import examine_postgres

        return await examine_postgres(PostgresSettings.from_url(url, create=False))
    return []


async def examine_bus(url: str, partitions: int) -> list[Finding]:
    """What the durability doctor finds on the bus at ``url``, which carries the log of a store
    with ``partitions`` partitions."""
    if urlsplit(url).scheme not in ("nats", "tls"):
        open_bus(url)  # refuses the scheme, in the words of opening it
    try:
        from tidings.adapters.nats.doctor import examine_jetstream
        from tidings.adapters.nats.settings import NatsSettings
    except ImportError as exc:
        raise ConfigurationError(
            f"the NATS bus needs its client ({exc.name} is missing): pip install 'tidings[nats]'"
        ) from None
    return await examine_jetstream(NatsSettings.from_url(url), partitions)
