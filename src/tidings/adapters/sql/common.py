"""Logic that both SQL adapters share. Pure: no driver, no I/O.

Both engines keep the same tables (``tidings_events`` is the store and the log at once,
``tidings_streams`` holds each stream's head) and run the same steps; only the SQL dialect and
the way a transaction is driven differ, and those stay in each adapter.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from tidings.domain.envelope import (
    DEFAULT_MAX_SIZE,
    Envelope,
    RecordedEvent,
    from_structured,
    to_structured,
)
from tidings.domain.integrity import (
    GENESIS,
    IntegrityProblem,
    IntegrityReport,
    StreamChecker,
    chain_hash,
)
from tidings.errors import ConcurrencyError, IntegrityError, InvalidArgument, MalformedEvent
from tidings.ports import ANY, NO_STREAM, ExpectedVersion

DEFAULT_PARTITIONS: Final = 8
SCHEMA_VERSION: Final = 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise InvalidArgument(f"a time zone is required, got naive datetime {moment.isoformat()}")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def partition_of(key: str, partitions: int) -> int:
    """The partition of a key: CRC-32 is stable across processes and languages (unlike hash())."""
    return zlib.crc32(key.encode()) % partitions


class Head(NamedTuple):
    version: int
    hash: bytes


class NewRow(NamedTuple):
    """One row to insert into ``tidings_events`` (in column order, position left to the engine)."""

    id: str
    stream: str
    version: int
    topic: str
    type: str
    time_us: int
    partition: int
    envelope: bytes
    hash: bytes


def check_expected(stream: str, expected: ExpectedVersion, actual: int) -> None:
    if expected == ANY:
        return
    wanted = 0 if expected == NO_STREAM else expected
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 0:
        raise InvalidArgument(f"expected_version must be a version >= 0, ANY or NO_STREAM, got {expected!r}")
    if wanted != actual:
        raise ConcurrencyError(stream, expected, actual)


def unique_by_id(envelopes: Sequence[Envelope]) -> list[Envelope]:
    """Drop repeats of one id within a call: the first occurrence wins."""
    seen: set[str] = set()
    unique: list[Envelope] = []
    for envelope in envelopes:
        if envelope.id not in seen:
            seen.add(envelope.id)
            unique.append(envelope)
    return unique


def plan_rows(stream: str, envelopes: Sequence[Envelope], head: Head | None, partitions: int) -> list[NewRow]:
    """Number and chain new envelopes after the stream's head."""
    version, previous = head if head is not None else (0, GENESIS)
    rows: list[NewRow] = []
    for envelope in envelopes:
        version += 1
        document = to_structured(envelope)
        previous = chain_hash(previous, stream, version, document)
        rows.append(
            NewRow(
                envelope.id,
                stream,
                version,
                envelope.topic,
                envelope.type,
                to_micros(envelope.time),
                partition_of(envelope.partitionkey or stream, partitions),
                document,
                previous,
            )
        )
    return rows


def validate_stream_name(stream: str) -> str:
    if not isinstance(stream, str) or not stream or len(stream) > 512:
        raise InvalidArgument(f"a stream name must be 1 to 512 characters, got {stream!r:.60}")
    if any(ord(c) < 32 for c in stream):
        raise InvalidArgument(f"stream name {stream!r} contains control characters")
    return stream


def record_from_row(
    document: bytes, stream: str, version: int, position: int, max_size: int = DEFAULT_MAX_SIZE
) -> RecordedEvent:
    try:
        envelope = from_structured(bytes(document), max_size=max_size)
    except MalformedEvent as exc:
        raise IntegrityError(
            f"stored event at position {position} ({stream} v{version}) is damaged: {exc}"
        ) from None
    return RecordedEvent(envelope=envelope, stream=stream, version=version, position=position)


class StoredRow(NamedTuple):
    position: int
    stream: str
    version: int
    envelope: bytes
    hash: bytes


def checked_stream_rows(
    stream: str, rows: Iterable[StoredRow], previous: bytes, backwards: bool
) -> list[RecordedEvent]:
    """Decode rows of one stream, checking each link of the hash chain on the way.

    ``rows`` are consecutive versions; ``previous`` is the hash of the version before the first
    (forwards) or is unused (backwards, where each row is checked against the one read before it).
    """
    ordered = list(rows)
    if backwards:
        ordered.reverse()
    records: list[RecordedEvent] = []
    expected_version: int | None = None
    for row in ordered:
        if expected_version is not None and row.version != expected_version:
            raise IntegrityError(f"stream {stream!r}: version {expected_version} is missing")
        if chain_hash(previous, stream, row.version, bytes(row.envelope)) != bytes(row.hash):
            raise IntegrityError(
                f"stream {stream!r} version {row.version} (position {row.position}) fails its hash "
                "chain: it was altered or an earlier event was removed; run `tidings verify`"
            )
        previous = bytes(row.hash)
        expected_version = row.version + 1
        records.append(record_from_row(row.envelope, stream, row.version, row.position))
    if backwards:
        records.reverse()
    return records


class StoreAudit:
    """Walks every event ordered by (stream, version) and collects each stream's first break."""

    def __init__(self, heads: dict[str, tuple[int, bytes]]) -> None:
        self._heads = dict(heads)
        self._checker: StreamChecker | None = None
        self._streams = 0
        self._events = 0
        self.problems: list[IntegrityProblem] = []

    def feed(self, stream: str, version: int, position: int, document: bytes, digest: bytes) -> None:
        self._events += 1
        if self._checker is None or self._checker.stream != stream:
            self._finish_stream()
            self._checker = StreamChecker(stream)
            self._streams += 1
        self._checker.feed(version, position, bytes(document), bytes(digest))

    def report(self) -> IntegrityReport:
        self._finish_stream()
        for stream, (version, _) in sorted(self._heads.items()):
            self.problems.append(IntegrityProblem(stream, version, 0, "the stream's events are all missing"))
        return IntegrityReport(
            streams=self._streams + len(self._heads), events=self._events, problems=self.problems
        )

    def _finish_stream(self) -> None:
        checker, self._checker = self._checker, None
        if checker is None:
            return
        head = self._heads.pop(checker.stream, None)
        if head is None and checker.problem is None:
            checker.problem = IntegrityProblem(
                checker.stream, checker.version, 0, "events exist but the stream has no head"
            )
        problem = checker.finish(*(head or (None, None)))
        if problem is not None:
            self.problems.append(problem)


class StreamQuery(NamedTuple):
    """A stream read turned into SQL; ``mark`` is the dialect's parameter marker."""

    sql: str
    args: list[object]
    reaches_head: bool  # the read should end at the stream's head (checked against it)

    @classmethod
    def build(
        cls,
        select: str,
        mark: str,
        stream: str,
        from_version: int,
        to_version: int | None,
        at: datetime | None,
        backwards: bool,
        limit: int | None,
    ) -> StreamQuery:
        clauses = [f"stream = {mark}", f"version >= {mark}"]
        args: list[object] = [stream, max(from_version, 1)]
        if to_version is not None:
            clauses.append(f"version <= {mark}")
            args.append(to_version)
        if at is not None:
            clauses.append(f"time_us <= {mark}")
            args.append(to_micros(at))
        order = "DESC" if backwards else "ASC"
        sql = f"{select} WHERE {' AND '.join(clauses)} ORDER BY version {order}"
        if limit is not None:
            sql += f" LIMIT {mark}"
            args.append(limit)
        reaches_head = not backwards and to_version is None and at is None and limit is None
        return cls(sql, args, reaches_head)


def lowest_version(rows: Sequence[StoredRow], backwards: bool) -> int:
    return rows[-1].version if backwards else rows[0].version


def check_reaches_head(stream: str, rows: Sequence[StoredRow], head: Head | None) -> None:
    if head is not None and head.version != rows[-1].version:
        raise IntegrityError(
            f"stream {stream!r} ends at version {rows[-1].version} but its head says "
            f"{head.version}: events were removed; run `tidings verify`"
        )


def missing_version(stream: str, version: int) -> IntegrityError:
    return IntegrityError(f"stream {stream!r}: version {version} is missing; run `tidings verify`")
