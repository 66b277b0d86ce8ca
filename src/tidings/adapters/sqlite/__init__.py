"""The embedded adapter: store and log in one SQLite file (WAL)."""

from tidings.adapters.sqlite.settings import SqliteSettings
from tidings.adapters.sqlite.store import SqliteStore

__all__ = ["SqliteSettings", "SqliteStore"]
