"""Logic that both SQL adapters share. Pure: no driver, no I/O.

Both engines keep the same tables (``tidings_events`` is the store and the log at once,
``tidings_streams`` holds each stream's head) and run the same steps; only the SQL dialect and
the way a transaction is driven differ, and those stay in each adapter.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from tidings.adapters.sql.rows import row_digest, to_micros, unpack_meta
from tidings.domain.envelope import Envelope
from tidings.domain.integrity import (
    IntegrityProblem,
    IntegrityReport,
    LogLayout,
    StreamChecker,
    VerifiedHead,
    VerifiedState,
    compare_logs,
)
from tidings.domain.names import check_stream_name
from tidings.errors import ConcurrencyError, IntegrityError, InvalidArgument
from tidings.ports import ANY, NO_STREAM, ExpectedVersion

DEFAULT_PARTITIONS: Final = 8
SCHEMA_VERSION: Final = 6
#: Bigger than any position or version; also the most that SQLite and PostgreSQL can bind.
MAX_NUMBER: Final = 2**63 - 1


class StoreIdentity(NamedTuple):
    partitions: int  # fixed when the store was created
    log_id: str  # made when the store was created: a bus stream names the log it carries


def identity_of_store(url: str, meta: dict[str, str]) -> StoreIdentity:
    """What a store's ``tidings_meta`` says of it, once it proves to be a tidings store of the
    schema this code reads."""
    if "partitions" not in meta:
        raise IntegrityError(f"{url} holds no tidings store")
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise IntegrityError(
            f"{url} has store schema {meta.get('schema_version')}; this tidings reads schema {SCHEMA_VERSION}"
        )
    return StoreIdentity(int(meta["partitions"]), meta.get("log_id", ""))


def new_meta(partitions: int) -> list[tuple[str, str]]:
    """The ``tidings_meta`` rows of a new store (a store that has them keeps its own)."""
    return [
        ("schema_version", str(SCHEMA_VERSION)),
        ("partitions", str(partitions)),
        ("log_id", uuid.uuid4().hex),
    ]


class Partitioner:
    """Maps a partition key to one of a fixed number of partitions.

    CRC-32 is stable across processes, machines and languages (unlike ``hash()``)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions

    def __call__(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.partitions


class Head(NamedTuple):
    version: int
    hash: bytes


def check_expected(stream: str, expected: ExpectedVersion, actual: int) -> None:
    if expected == ANY:
        return
    wanted = 0 if expected == NO_STREAM else expected
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 0:
        raise InvalidArgument(f"expected_version must be a version >= 0, ANY or NO_STREAM, got {expected!r}")
    if wanted != actual:
        raise ConcurrencyError(stream, expected, actual)


def check_number(name: str, value: int | None, *, minimum: int = 0) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_NUMBER:
        raise InvalidArgument(f"{name} must be a whole number from {minimum} to 2**63-1, got {value!r}")


def unique_by_id(envelopes: Sequence[Envelope]) -> list[Envelope]:
    """Drop repeats of one id within a call: the first occurrence wins."""
    seen: set[str] = set()
    unique: list[Envelope] = []
    for envelope in envelopes:
        if envelope.id not in seen:
            seen.add(envelope.id)
            unique.append(envelope)
    return unique


def validate_stream_name(stream: str) -> str:
    return check_stream_name(stream)


class StoreAudit:
    """Walks every event ordered by (stream, version) and collects each stream's first break,
    then the log in position order (``feed_log``) to check where events sit in it.

    Beside the chain, each column that decides what is delivered, or when, is checked: those in
    the hash as they are; the rest against what the hashed envelope says they must be (the
    partition and correlation columns, the time column), and the position through the order
    within each stream and the log digest of a verified record. Deriving them instead of hashing
    them keeps the chain's format, so stores written before these checks verify unchanged.
    """

    def __init__(
        self,
        heads: dict[str, tuple[int, bytes]],
        partition_of: Partitioner,
        log_id: str,
        against: VerifiedState | None = None,
    ) -> None:
        self._heads = dict(heads)
        self._partition_of = partition_of
        self._log_id = log_id
        self._against = against
        # A record of another log says nothing of this one's streams: only that it is another.
        same = against if against is not None and against.log_id == log_id else None
        self._recorded = {head.stream: head for head in same.heads} if same else {}
        self._seen: set[str] = set()
        self._verified: list[VerifiedHead] = []
        self._layout = LogLayout(same.log_end if same else None)
        self._checker: StreamChecker | None = None
        self._streams = 0
        self._events = 0
        self.problems: list[IntegrityProblem] = []

    def feed(self, row: Sequence[Any]) -> None:
        """One row selected with ``rows.AUDIT_COLUMNS``, in (stream, version) order."""
        position, stream, version = row[0], row[1], row[2]
        self._events += 1
        if self._checker is None or self._checker.stream != stream:
            self._finish_stream()
            self._checker = StreamChecker(stream, self._recorded.get(stream))
            self._seen.add(stream)
            self._streams += 1
        checker = self._checker
        if checker.problem is None and checker.feed(
            version, position, row_digest(checker.previous, row), bytes(row[7])
        ):
            problem = self._derived_column_problem(row)
            if problem is not None:
                checker.problem = IntegrityProblem(stream, version, position, problem)

    def feed_log(self, position: int, stream: str, version: int) -> None:
        """One event of the log, in position order."""
        self._layout.feed(position, stream, version)

    def report(self) -> IntegrityReport:
        self._finish_stream()
        for stream, (version, _) in sorted(self._heads.items()):
            self.problems.append(IntegrityProblem(stream, version, 0, "the stream's events are all missing"))
        gone = sorted(set(self._recorded) - self._seen - set(self._heads))
        for stream in gone:
            version = self._recorded[stream].version
            problem = f"stream verified at version {version} is gone"
            self.problems.append(IntegrityProblem(stream, version, 0, problem))
        state = VerifiedState(
            self._log_id,
            self._partition_of.partitions,
            self._layout.end,
            self._layout.digest(),
            tuple(self._verified),
        )
        if self._against is not None:
            layout = self._layout.at_recorded_end or b""
            self.problems.extend(compare_logs(self._against, state, layout))
        return IntegrityReport(
            streams=self._streams + len(self._heads),
            events=self._events,
            problems=self.problems,
            verified=None if self.problems else state,
        )

    def _derived_column_problem(self, row: Sequence[Any]) -> str | None:
        """What is wrong with the columns that repeat or derive from the hashed envelope."""
        position, stream = row[0], row[1]
        try:
            meta = unpack_meta(row[5], position)
        except IntegrityError as exc:
            return str(exc)
        if to_micros(meta.time) != row[8]:
            return "the time column disagrees with the event's time"
        # The partition decides which consumers see the event at all: one moved to a partition
        # no lease covers (or another key's) would never be delivered, or out of order.
        if row[9] != self._partition_of(meta.partitionkey or stream):
            return f"the partition column ({row[9]}) disagrees with the event's partition key"
        if row[10] != (meta.correlationid or row[3]):
            return "the correlation column disagrees with the event's correlation id"
        return None

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
        else:
            self._verified.append(VerifiedHead(checker.stream, checker.version, checker.previous))
