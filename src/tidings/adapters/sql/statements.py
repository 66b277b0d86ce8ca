"""Statements on the store's own tables (events, stream heads, meta) that both engines speak
alike but for the parameter marker ``m``; those that differ (inserting events, prefix matches,
snapshots) stay in each engine's ``schema.py``."""

from __future__ import annotations

from typing import NamedTuple

from tidings.adapters.sql.rows import AUDIT_COLUMNS, LAYOUT_COLUMNS, LOG_COLUMNS


class StoreSql(NamedTuple):
    head: str
    upsert_head: str
    log_batch: str
    head_position: str
    all_meta: str
    all_heads: str
    all_events_by_stream: str
    log_layout: str

    @classmethod
    def dialect(cls, m: str) -> StoreSql:
        return cls(
            head=f"SELECT version, hash FROM tidings_streams WHERE stream = {m}",
            upsert_head=(
                "INSERT INTO tidings_streams (stream, version, hash, first_us, last_us)"
                f" VALUES ({m}, {m}, {m}, {m}, {m})"
                " ON CONFLICT (stream) DO UPDATE SET version = excluded.version, hash = excluded.hash,"
                " last_us = excluded.last_us"
            ),
            log_batch=(
                f"SELECT {LOG_COLUMNS} FROM tidings_events WHERE position > {m} ORDER BY position LIMIT {m}"
            ),
            head_position="SELECT coalesce(max(position), 0) FROM tidings_events",
            all_meta="SELECT key, value FROM tidings_meta",
            # For verify: every head, every event by stream, and the log's layout.
            all_heads="SELECT stream, version, hash FROM tidings_streams ORDER BY stream",
            all_events_by_stream=f"SELECT {AUDIT_COLUMNS} FROM tidings_events ORDER BY stream, version",
            log_layout=f"SELECT {LAYOUT_COLUMNS} FROM tidings_events ORDER BY position",
        )
