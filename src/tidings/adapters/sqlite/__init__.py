"""The embedded adapter: store and log in one SQLite file (WAL)."""

from tidings.adapters.sqlite.store import SqliteSettings, SqliteStore

__all__ = ["SqliteSettings", "SqliteStore"]
