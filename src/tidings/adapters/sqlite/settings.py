"""How to open a SQLite store, read from a ``sqlite:///`` URL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from tidings.adapters.sql.common import DEFAULT_PARTITIONS
from tidings.adapters.urls import redact_url
from tidings.domain.envelope import DEFAULT_MAX_SIZE
from tidings.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """How to open the file. ``synchronous="FULL"`` survives power loss; ``"NORMAL"`` may lose the
    newest commits on power loss (never on a process crash) and is faster."""

    path: Path
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    busy_timeout: float = 10.0
    partitions: int = DEFAULT_PARTITIONS
    create: bool = True
    max_size: int = DEFAULT_MAX_SIZE

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> SqliteSettings:
        """``sqlite:///relative.db`` or ``sqlite:////absolute.db``, options as query parameters:
        ``synchronous`` (FULL or NORMAL), ``busy_timeout`` (seconds), ``partitions``."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.lstrip("/"):
            raise ConfigurationError(
                f"not a SQLite URL: {redact_url(url)!r} (expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db)"
            )
        path = Path(parts.path[1:])
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        unknown = set(options) - {"synchronous", "busy_timeout", "partitions"}
        if unknown:
            raise ConfigurationError(f"unknown SQLite URL option(s): {', '.join(sorted(unknown))}")
        synchronous = options.get("synchronous", "FULL").upper()
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        try:
            busy_timeout = float(options.get("busy_timeout", "10"))
            partitions = int(options.get("partitions", str(DEFAULT_PARTITIONS)))
        except ValueError as exc:
            raise ConfigurationError(f"bad SQLite URL option in {redact_url(url)!r}: {exc}") from None
        if partitions < 1 or busy_timeout < 0:
            raise ConfigurationError("partitions must be >= 1 and busy_timeout >= 0")
        return cls(
            path=path,
            synchronous=synchronous,  # type: ignore[arg-type]
            busy_timeout=busy_timeout,
            partitions=partitions,
            create=create,
        )
