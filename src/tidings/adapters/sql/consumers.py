"""What consumer groups need of a SQL log: partition reads, leases, the inbox and dead letters.

The statements are plain SQL that SQLite and PostgreSQL both speak; ``mark`` is the dialect's
parameter marker. The lease plan is pure logic, written once, and so is the order of statements
that takes and gives up leases (``lease_statements``): each engine runs them with its own driver,
blocking (sqlite3) or async (psycopg).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Final, NamedTuple, TypeVar

from tidings.adapters.sql.common import Partitioner
from tidings.adapters.sql.rows import LOG_COLUMNS, from_micros
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.ports import DeadLetter, Handling

#: Columns of ``tidings_dead_letters`` in the order they are written and read (after ``id``).
DEAD_LETTER_COLUMNS: Final = (
    "group_name, reason, error, traceback, attempts, event_id, position, stream, topic,"
    " partition_key, envelope, raw, first_failed_us, dead_us, state"
)
T = TypeVar("T")


class Statement(NamedTuple):
    sql: str
    args: tuple[Any, ...]


#: Work written once for both engines, without a driver: it yields each statement it needs, is
#: sent back that statement's rows (none, for a statement that returns none), and returns its
#: result. An engine runs it in a transaction of its own (``steps.run``).
Statements = Generator[Statement, list[Any], T]


def group_checkpoint(group: str, partition: int) -> str:
    """The name of a group's checkpoint in the store's own log."""
    return f"group:{group}:{partition}"


class LogShape:
    """What a SQL store's feed tells without reading its log: how many partitions it has (the
    partitioner's, set when the store opens), the partition of a key, and where a group's
    checkpoint in it is kept."""

    def __init__(self, partition_of: Partitioner) -> None:
        self._partition_of = partition_of

    @property
    def partitions(self) -> int:
        return self._partition_of.partitions

    def partition_of(self, key: str) -> int:
        return self._partition_of(key)

    def checkpoint_name(self, group: str, partition: int) -> str:
        return group_checkpoint(group, partition)


def consumer_tables(*, bigint: str, blob: str, auto_id: str) -> tuple[str, ...]:
    """The tables and indexes of consumer groups, in a dialect's column types."""
    return (
        "CREATE INDEX IF NOT EXISTS tidings_events_by_partition ON tidings_events (partition, position)",
        "CREATE INDEX IF NOT EXISTS tidings_events_by_correlation ON tidings_events (correlation_id)",
        f"""CREATE TABLE IF NOT EXISTS tidings_members (
            group_name TEXT NOT NULL,
            member TEXT NOT NULL,
            expires_us {bigint} NOT NULL,
            PRIMARY KEY (group_name, member)
        )""",
        f"""CREATE TABLE IF NOT EXISTS tidings_leases (
            group_name TEXT NOT NULL,
            partition INTEGER NOT NULL,
            member TEXT NOT NULL,
            expires_us {bigint} NOT NULL,
            PRIMARY KEY (group_name, partition)
        )""",
        f"""CREATE TABLE IF NOT EXISTS tidings_inbox (
            group_name TEXT NOT NULL,
            event_id TEXT NOT NULL,
            handled_us {bigint} NOT NULL,
            attempts INTEGER NOT NULL,
            PRIMARY KEY (group_name, event_id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS tidings_dead_letters (
            id {auto_id},
            group_name TEXT NOT NULL,
            reason TEXT NOT NULL,
            error TEXT NOT NULL,
            traceback TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            event_id TEXT,
            position {bigint},
            stream TEXT,
            topic TEXT,
            partition_key TEXT,
            envelope {blob},
            raw {blob},
            first_failed_us {bigint},
            dead_us {bigint} NOT NULL,
            state TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS tidings_dead_letters_by_group"
        " ON tidings_dead_letters (group_name, state, partition_key)",
    )


class ConsumerSql(NamedTuple):
    read_partition: str
    upsert_member: str
    expire_members: str
    expire_leases: str
    members: str
    leases: str
    drop_lease: str
    claim_lease: str
    renew_leases: str
    release_leases: str
    forget_member: str
    holds_lease: str
    mark_handled: str
    insert_dead_letter: str
    dead_letters: str
    set_dead_letter_state: str
    settle_dead_letter: str
    trace_events: str
    blocked_keys: str
    unpark: str
    release_parked: str
    trace_inbox: str
    trace_dead_letters: str

    @classmethod
    def dialect(cls, m: str, row_lock: str = "") -> ConsumerSql:
        """``row_lock`` (`` FOR UPDATE`` on PostgreSQL) makes the lease check hold the lease row
        until the checkpoint commits, so that giving the lease up waits for that commit."""
        return cls(
            read_partition=(
                f"SELECT {LOG_COLUMNS} FROM tidings_events"
                f" WHERE partition = {m} AND position > {m} ORDER BY position LIMIT {m}"
            ),
            upsert_member=(
                f"INSERT INTO tidings_members (group_name, member, expires_us) VALUES ({m}, {m}, {m})"
                " ON CONFLICT (group_name, member) DO UPDATE SET expires_us = excluded.expires_us"
            ),
            expire_members=f"DELETE FROM tidings_members WHERE group_name = {m} AND expires_us < {m}",
            expire_leases=f"DELETE FROM tidings_leases WHERE group_name = {m} AND expires_us < {m}",
            members=f"SELECT member FROM tidings_members WHERE group_name = {m} ORDER BY member",
            leases=f"SELECT partition, member FROM tidings_leases WHERE group_name = {m}",
            drop_lease=(
                f"DELETE FROM tidings_leases WHERE group_name = {m} AND partition = {m} AND member = {m}"
            ),
            claim_lease=(
                "INSERT INTO tidings_leases (group_name, partition, member, expires_us)"
                f" VALUES ({m}, {m}, {m}, {m})"
            ),
            renew_leases=(
                f"UPDATE tidings_leases SET expires_us = {m} WHERE group_name = {m} AND member = {m}"
            ),
            release_leases=f"DELETE FROM tidings_leases WHERE group_name = {m} AND member = {m}",
            forget_member=f"DELETE FROM tidings_members WHERE group_name = {m} AND member = {m}",
            holds_lease=(
                f"SELECT 1 FROM tidings_leases WHERE group_name = {m} AND partition = {m}"
                f" AND member = {m} AND expires_us >= {m}{row_lock}"
            ),
            mark_handled=(
                "INSERT INTO tidings_inbox (group_name, event_id, handled_us, attempts)"
                f" VALUES ({m}, {m}, {m}, {m})"
                " ON CONFLICT (group_name, event_id) DO NOTHING"
            ),
            insert_dead_letter=(
                f"INSERT INTO tidings_dead_letters ({DEAD_LETTER_COLUMNS})"
                f" VALUES ({', '.join([m] * 15)}) RETURNING id"
            ),
            dead_letters=(
                f"SELECT id, {DEAD_LETTER_COLUMNS} FROM tidings_dead_letters"
                # The casts tell PostgreSQL the type of a parameter that may be NULL.
                f" WHERE (CAST({m} AS TEXT) IS NULL OR group_name = {m})"
                f" AND (CAST({m} AS TEXT) IS NULL OR state = {m})"
                f" ORDER BY id LIMIT {m}"
            ),
            set_dead_letter_state=f"UPDATE tidings_dead_letters SET state = {m} WHERE id = {m}",
            # Compare-and-set: only a letter still queued for redrive moves (see the port).
            settle_dead_letter=(
                f"UPDATE tidings_dead_letters SET state = {m} WHERE id = {m} AND state = 'redrive'"
            ),
            blocked_keys=(
                "SELECT DISTINCT partition_key FROM tidings_dead_letters"
                f" WHERE group_name = {m} AND state IN ('dead', 'redrive') AND partition_key IS NOT NULL"
            ),
            unpark=(
                f"UPDATE tidings_dead_letters SET state = 'redrive' WHERE group_name = {m}"
                f" AND partition_key = {m} AND reason = 'parked' AND state = 'dead'"
            ),
            release_parked=(
                f"UPDATE tidings_dead_letters SET state = 'redrive' WHERE group_name = {m}"
                " AND reason = 'parked' AND state = 'dead' AND partition_key IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM tidings_dead_letters AS b"
                " WHERE b.group_name = tidings_dead_letters.group_name"
                " AND b.partition_key = tidings_dead_letters.partition_key"
                " AND (b.state = 'redrive' OR (b.state = 'dead' AND b.reason <> 'parked')))"
            ),
            trace_events=(
                f"SELECT {LOG_COLUMNS} FROM tidings_events WHERE correlation_id = {m} OR id = {m}"
                f" ORDER BY position LIMIT {m}"
            ),
            trace_inbox=(
                "SELECT i.group_name, i.event_id, i.attempts, i.handled_us FROM tidings_inbox i"
                f" JOIN tidings_events e ON e.id = i.event_id WHERE e.correlation_id = {m} OR e.id = {m}"
            ),
            trace_dead_letters=(
                "SELECT d.group_name, d.event_id, d.reason, d.attempts, d.dead_us FROM tidings_dead_letters d"
                f" JOIN tidings_events e ON e.id = d.event_id WHERE e.correlation_id = {m} OR e.id = {m}"
            ),
        )


def dead_letter_row(letter: DeadLetter, to_micros: Any) -> tuple[Any, ...]:
    first = to_micros(letter.first_failed) if letter.first_failed else None
    return (
        letter.group,
        letter.reason,
        letter.error,
        letter.traceback,
        letter.attempts,
        letter.event_id,
        letter.position,
        letter.stream,
        letter.topic,
        letter.key,
        letter.envelope,
        letter.raw,
        first,
        to_micros(letter.dead_at),
        letter.state,
    )


def dead_letter_of(row: Sequence[Any]) -> DeadLetter:
    (entry, group, reason, error, traceback, attempts, event_id, position, stream, topic) = row[:10]
    key, envelope, raw, first_us, dead_us, state = row[10:16]
    return DeadLetter(
        id=entry,
        group=group,
        reason=DeadLetterReason(reason),
        error=error,
        traceback=traceback,
        attempts=attempts,
        event_id=event_id,
        position=position,
        stream=stream,
        topic=topic,
        key=key,
        envelope=None if envelope is None else bytes(envelope),
        raw=None if raw is None else bytes(raw),
        first_failed=None if first_us is None else from_micros(first_us),
        dead_at=from_micros(dead_us),
        state=DeadLetterState(state),
    )


class LeasePlan(NamedTuple):
    release: list[int]
    claim: list[int]
    keep: list[int]


def plan_leases(partitions: int, members: Sequence[str], leases: dict[int, str], me: str) -> LeasePlan:
    """My fair share of a group's partitions, given the live members and who holds what.

    Members are ordered by name; with P partitions and N members the first P mod N members take
    one more than P div N. A member over its share gives up its highest partitions; one under it
    claims the lowest free ones. Each decides alone, from the same table, so the group converges
    within one lease period without any coordinator.
    """
    ordered = sorted(set(members) | {me})
    index = ordered.index(me)
    base, extra = divmod(partitions, len(ordered))
    share = base + (1 if index < extra else 0)
    mine = sorted(p for p, holder in leases.items() if holder == me)
    if len(mine) > share:
        return LeasePlan(release=mine[share:], claim=[], keep=mine[:share])
    free = [p for p in range(partitions) if p not in leases]
    claim = free[: share - len(mine)]
    return LeasePlan(release=[], claim=claim, keep=mine)


def lease_statements(
    sql: ConsumerSql, group: str, member: str, *, now_us: int, ttl_us: int, partitions: int
) -> Statements[list[int]]:
    """Renew the member's heartbeat, drop the group's expired members and leases, and take the
    member's share (``plan_leases``); returns the partitions it holds. The caller's transaction
    keeps the group's other members from planning at the same time: each reads what the others
    wrote."""
    expires = now_us + ttl_us
    yield Statement(sql.upsert_member, (group, member, expires))
    yield Statement(sql.expire_members, (group, now_us))
    yield Statement(sql.expire_leases, (group, now_us))
    members = [name for (name,) in (yield Statement(sql.members, (group,)))]
    leases: dict[int, str] = dict((yield Statement(sql.leases, (group,))))
    plan = plan_leases(partitions, members, leases, member)
    for partition in plan.release:
        yield Statement(sql.drop_lease, (group, partition, member))
    for partition in plan.claim:
        yield Statement(sql.claim_lease, (group, partition, member, expires))
    yield Statement(sql.renew_leases, (expires, group, member))
    return sorted(plan.keep + plan.claim)


def release_statements(sql: ConsumerSql, group: str, member: str) -> Statements[None]:
    """Give up every lease of the member and forget it (on shutdown)."""
    yield Statement(sql.release_leases, (group, member))
    yield Statement(sql.forget_member, (group, member))


def check_dead_letter_state(state: str) -> None:
    """A state a caller typed as a plain string is refused here, not stored."""
    DeadLetterState.named(state)


def handlings_of(inbox: Sequence[Sequence[Any]], dead: Sequence[Sequence[Any]]) -> list[Handling]:
    """How groups dealt with traced events, from inbox rows and dead letter rows, by time."""
    handled = [
        Handling(group=group, event_id=event_id, outcome="handled", attempts=attempts, at=from_micros(at))
        for group, event_id, attempts, at in inbox
    ]
    letters = [
        Handling(group=group, event_id=event_id, outcome=reason, attempts=attempts, at=from_micros(at))
        for group, event_id, reason, attempts, at in dead
    ]
    return sorted(handled + letters, key=lambda h: h.at)
