"""The distributed store: events, streams and the log in PostgreSQL (psycopg 3)."""

from tidings.adapters.postgres.store import PostgresSettings, PostgresStore

__all__ = ["PostgresSettings", "PostgresStore"]
