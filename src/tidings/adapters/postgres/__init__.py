"""The distributed store: events, streams and the log in PostgreSQL (psycopg 3)."""

from tidings.adapters.postgres.settings import PostgresSettings
from tidings.adapters.postgres.store import PostgresStore

__all__ = ["PostgresSettings", "PostgresStore"]
