"""Reading one stream in one statement, with its hash chain checked on the way.

A read selects one row more than asked, the event just before the first one requested, so that
the first link of the chain can be checked too; and it selects the stream's head alongside, in the
same statement (so in the same snapshot), to catch a stream cut short at its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from tidings.adapters.sql.common import MAX_NUMBER, check_number
from tidings.adapters.sql.rows import SELECT_COLUMNS, records_of, row_digest, to_micros
from tidings.domain.envelope import RecordedEvent
from tidings.domain.integrity import GENESIS
from tidings.domain.topics import compile_pattern
from tidings.errors import IntegrityError


def as_of_bound(mark: str) -> str:
    """SQL for "versions before the first event after a time": a stream as of a time is the
    longest prefix of its history that happened by then, even if clocks made times go back."""
    return (
        f"coalesce((SELECT min(version) FROM tidings_events WHERE stream = {mark} AND time_us > {mark}),"
        f" {MAX_NUMBER})"
    )


def snapshot_query(
    mark: str, stream: str, max_version: int | None, at: datetime | None
) -> tuple[str, list[object]]:
    """SQL for the newest snapshot at or before a version and, if asked, as of a time."""
    check_number("max_version", max_version)
    sql = (
        "SELECT stream, version, schema, time_us, state FROM tidings_snapshots"
        f" WHERE stream = {mark} AND version <= {mark}"
    )
    args: list[object] = [stream, MAX_NUMBER if max_version is None else max_version]
    if at is not None:  # only then: the bound reads the stream's events
        sql += f" AND version < {as_of_bound(mark)}"
        args.extend((stream, to_micros(at)))
    return sql + " ORDER BY version DESC LIMIT 1", args


class StreamQuery(NamedTuple):
    """A stream read turned into SQL; ``mark`` is the dialect's parameter marker."""

    sql: str
    args: list[object]
    stream: str
    from_version: int
    limit: int | None
    backwards: bool
    reaches_head: bool  # the read should end at the stream's head (checked against it)

    @classmethod
    def build(
        cls,
        mark: str,
        stream: str,
        from_version: int,
        to_version: int | None,
        at: datetime | None,
        backwards: bool,
        limit: int | None,
    ) -> StreamQuery:
        check_number("from_version", from_version)
        check_number("to_version", to_version)
        check_number("limit", limit, minimum=1)
        from_version = max(from_version, 1)
        head = f"(SELECT version FROM tidings_streams WHERE stream = {mark}) AS head_version"
        clauses = [f"stream = {mark}", f"version >= {mark}"]
        args: list[object] = [stream, stream, from_version - 1]
        if to_version is not None:
            clauses.append(f"version <= {mark}")
            args.append(to_version)
        if at is not None:
            clauses.append(f"version < {as_of_bound(mark)}")
            args.extend((stream, to_micros(at)))
        order = "DESC" if backwards else "ASC"
        sql = f"SELECT {SELECT_COLUMNS}, {head} FROM tidings_events WHERE {' AND '.join(clauses)} ORDER BY version {order}"  # noqa: E501 - fixed clauses, values bound
        if limit is not None:
            sql += f" LIMIT {mark}"
            args.append(min(limit + 1, MAX_NUMBER))
        reaches_head = not backwards and to_version is None and at is None and limit is None
        return cls(sql, args, stream, from_version, limit, backwards, reaches_head)

    def records(self, rows: Sequence[Sequence[Any]]) -> list[RecordedEvent]:
        """Check the selected rows against their chain (and head) and decode them."""
        ordered = list(reversed(rows)) if self.backwards else list(rows)
        if not ordered:
            return []
        stream = self.stream
        head_version = ordered[0][-1]
        previous = GENESIS
        first = ordered[0]
        fetched_extra = self.limit is not None and len(ordered) > self.limit
        if first[2] < self.from_version or (self.backwards and fetched_extra):
            previous = bytes(first[-2])  # the predecessor, read only for its hash
            ordered = ordered[1:]
        elif first[2] != 1:
            raise _missing(stream, first[2] - 1)
        if not self.backwards and self.limit is not None:
            ordered = ordered[: self.limit]
        expected = None
        for row in ordered:
            version = row[2]
            if expected is not None and version != expected:
                raise _missing(stream, expected)
            digest = row_digest(previous, row)
            if digest != bytes(row[-2]):
                raise IntegrityError(
                    f"stream {stream!r} version {version} (position {row[0]}) fails its hash chain: it "
                    "was altered, or an earlier event was removed; run `tidings verify`"
                )
            previous, expected = digest, version + 1
        records = records_of(ordered)
        if self.reaches_head and records and head_version != records[-1].version:
            raise IntegrityError(
                f"stream {stream!r} ends at version {records[-1].version} but its head says "
                f"{head_version}: events were removed; run `tidings verify`"
            )
        if self.backwards:
            records.reverse()
        return records


def _missing(stream: str, version: int) -> IntegrityError:
    return IntegrityError(f"stream {stream!r}: version {version} is missing; run `tidings verify`")


#: Fetches one batch of the log: (after, topic prefix, size) -> (last position scanned, records).
LogFetch = Callable[[int, str, int], Awaitable[tuple[int, list[RecordedEvent]]]]


async def follow_log(
    fetch: LogFetch, *, after: int, pattern: str | None, batch_size: int, limit: int | None
) -> AsyncIterator[RecordedEvent]:
    """The log after a position, a batch at a time: SQL narrows by the pattern's literal prefix,
    the compiled pattern decides, and only one batch is held in memory."""
    check_number("after", after)
    check_number("limit", limit)
    check_number("batch_size", batch_size, minimum=1)
    compiled = compile_pattern(pattern) if pattern else None
    prefix = compiled.prefix if compiled else ""
    remaining = limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        scanned, records = await fetch(after, prefix, size)
        if not records:
            return
        after = scanned
        for record in records:
            if compiled is not None and not compiled.matches(record.envelope.topic):
                continue
            yield record
            if remaining is not None:
                remaining -= 1
                if remaining == 0:
                    return
        if len(records) < size:
            return
