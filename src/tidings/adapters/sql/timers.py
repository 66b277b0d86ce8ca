"""Durable timers in the SQL stores: an event to append to a stream once a moment has come.

A timer is written in the transaction that decides it (a saga step sent, its timeout set), and
fired by appending its event in a transaction that also deletes it. Timer events have ids of
their own making, and appending an id that is already stored is a no-op: a timer fires once,
however many workers race for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from tidings.domain.envelope import from_structured
from tidings.errors import MalformedEvent
from tidings.ports import Timer


def timer_tables(*, bigint: str, blob: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS tidings_timers (
            id TEXT PRIMARY KEY,
            due_us {bigint} NOT NULL,
            stream TEXT NOT NULL,
            envelope {blob} NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS tidings_timers_by_due ON tidings_timers (due_us)",
    )


class TimerSql(NamedTuple):
    schedule: str
    cancel: str
    due: str
    next_due: str

    @classmethod
    def dialect(cls, m: str, skip_locked: str = "") -> TimerSql:
        """``skip_locked`` (`` FOR UPDATE SKIP LOCKED`` on PostgreSQL) lets workers fire different
        timers at once instead of queueing for the same rows."""
        return cls(
            schedule=(
                f"INSERT INTO tidings_timers (id, due_us, stream, envelope) VALUES ({m}, {m}, {m}, {m})"
                " ON CONFLICT (id) DO UPDATE SET due_us = excluded.due_us, stream = excluded.stream,"
                " envelope = excluded.envelope"
            ),
            cancel=f"DELETE FROM tidings_timers WHERE id = {m}",
            due=(
                f"SELECT id, stream, envelope FROM tidings_timers WHERE due_us <= {m}"
                f" ORDER BY due_us, id LIMIT {m}{skip_locked}"
            ),
            next_due="SELECT min(due_us) FROM tidings_timers",
        )


def timers_of(rows: Sequence[Sequence[Any]], max_size: int) -> list[Timer]:
    """The timers of due rows. The stored document carries sealed data in base64, a third larger
    than the data, which the firing append checks against ``max_size``: the document may be up to
    twice that. A row that cannot be read is handed on with its error, for the worker to set
    aside: raised here, it would stop every timer due after it."""
    timers: list[Timer] = []
    for id, stream, stored in rows:
        document = bytes(stored)
        try:
            timers.append(Timer(id, stream, from_structured(document, max_size=2 * max_size)))
        except MalformedEvent as exc:
            timers.append(Timer(id, stream, None, error=str(exc), raw=document))
    return timers
