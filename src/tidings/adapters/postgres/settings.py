"""How to reach PostgreSQL, read from a ``postgresql://`` URL: tidings' own options taken out,
every libpq option left in the connection string."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidings.adapters.sql.common import DEFAULT_PARTITIONS
from tidings.adapters.urls import redact_url
from tidings.domain.envelope import DEFAULT_MAX_SIZE
from tidings.errors import ConfigurationError

_OWN_OPTIONS = ("partitions", "pool_size", "connect_timeout")


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """Where and how to connect. ``conninfo`` is the URL without tidings' own options, so every
    libpq option (``sslmode=verify-full``, ``sslrootcert``, ...) passes straight through."""

    conninfo: str
    partitions: int = DEFAULT_PARTITIONS
    pool_size: int = 10
    connect_timeout: float = 10.0
    max_size: int = DEFAULT_MAX_SIZE
    create: bool = True
    display_url: str = field(default="", compare=False)

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> PostgresSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r}")
        query = parse_qsl(parts.query)
        own = {k: v for k, v in query if k in _OWN_OPTIONS}
        rest = [(k, v) for k, v in query if k not in _OWN_OPTIONS]
        try:
            partitions = int(own.get("partitions", DEFAULT_PARTITIONS))
            pool_size = int(own.get("pool_size", 10))
            connect_timeout = float(own.get("connect_timeout", 10))
        except ValueError as exc:
            raise ConfigurationError(f"bad option in {redact_url(url)!r}: {exc}") from None
        if partitions < 1 or pool_size < 1:
            raise ConfigurationError("partitions and pool_size must be >= 1")
        conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
        return cls(
            conninfo=conninfo,
            partitions=partitions,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            create=create,
            display_url=redact_url(url),
        )
