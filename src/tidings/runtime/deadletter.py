"""Dead letters: the letters a group writes, the keys they park, and the redrive.

A letter is built from the record and a ``Letter`` (why it died: ``runtime/dispatch.py`` says,
or a saga's unit of work, ``runtime/settling.py``), and written in the partition's next commit.
In an ordered group its key is parked (``ParkedKeys``): the key's later events are dead-lettered
as ``parked`` until it is resolved, while other keys flow on.

An operator queues dead letters for redrive (state ``redrive``: ``App.redrive``, ``tidings dlq
redrive``). Each is then handled by one member of its group, once: the member that holds the
lease on the partition of the letter's key. That lease fences every commit of the redrive, as it
fences the partition's own commits, and each commit moves the letter only out of ``redrive`` (a
compare-and-set, ``StoreTransaction.settle_dead_letter``). So a member that lost the partition
while its handler ran, or whose run fails after another member's run committed, changes nothing:
a letter ``redriven`` (its effects committed) never returns to ``dead``. A run's effects and
inbox record commit only with that move: if the letter was purged, or settled by another run,
while the handler ran, they roll back (``LetterSettled``). A letter whose event is in the
group's inbox already is settled as ``redriven`` without running the handler again. Passes run
in a task beside the lease loop (``PartitionMember.aside``), so that a handler that hangs in a
redrive cannot hold up the renewal of the leases that fence it.

(Before, every member redrove every letter: two members ran 12 letters 23 times, and a run that
failed after another had committed put the letter back to ``dead``.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import msgspec

from tidings.domain.attributes import escape_controls
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import RecordedEvent, Undecodable, from_structured, to_structured
from tidings.domain.topics import AnyOf, Pattern
from tidings.domain.trace_context import checked
from tidings.errors import ConcurrencyError, MalformedEvent, TidingsError
from tidings.ports import DeadLetter, Feed, GroupState, StoreTransaction
from tidings.runtime.crypto import SEALED
from tidings.runtime.leasing import LeaseLost
from tidings.runtime.services import Services

log = logging.getLogger("tidings.consumer")

#: Letters taken per pass (a pass runs in a task beside the lease loop: ``PartitionMember.aside``).
LETTERS_PER_PASS = 100


class LetterSettled(TidingsError):
    """The letter left ``redrive`` while its handler ran (purged by an operator, or settled by
    another run): the run's transaction rolls back, its effects and inbox record with it."""


@dataclass(frozen=True, slots=True)
class Redrive:
    """A dead letter being handled again: its entry, and the partition whose lease fences it."""

    entry: int
    partition: int


#: A write into a commit's transaction, beside the events it commits (a letter's row).
Write = Callable[[StoreTransaction], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Letter:
    """Why an event goes to the dead letter queue, and after how many runs of its handler."""

    reason: DeadLetterReason
    error: str
    trace: str = ""
    attempts: int = 0
    #: When its handler first failed (``None``: the handler never ran).
    first_failure: datetime | None = None

    def __post_init__(self) -> None:
        # The texts may hold what the event held (an exception's message quotes its data): a NUL
        # would fail the letter's insert on PostgreSQL and stop the partition (or, for a timer,
        # every timer behind it). Escaped here, once, for every letter made.
        object.__setattr__(self, "error", escape_controls(self.error))
        object.__setattr__(self, "trace", escape_controls(self.trace, lines=True))


def letter_of(group: str, record: RecordedEvent, letter: Letter, dead_at: datetime) -> DeadLetter:
    """The dead letter of ``record`` for ``group``: its envelope as a structured document (its
    raw data if it has none), and why it died. A malformed trace context is not kept (it was
    dropped, and counted, as the event was read): tidings stores none again."""
    envelope = record.envelope
    traceparent, tracestate, dropped = checked(envelope.traceparent, envelope.tracestate)
    if dropped:
        envelope = msgspec.structs.replace(envelope, traceparent=traceparent, tracestate=tracestate)
    document = None
    if not isinstance(record, Undecodable):
        with contextlib.suppress(MalformedEvent):
            document = to_structured(envelope)
    return DeadLetter(
        group=group,
        reason=letter.reason,
        error=letter.error,
        traceback=letter.trace,
        attempts=letter.attempts,
        event_id=envelope.id,
        position=record.position,
        stream=record.stream,
        topic=envelope.topic,
        key=envelope.partitionkey or record.stream,
        envelope=document,
        raw=None if document else envelope.data,
        first_failed=letter.first_failure,
        dead_at=dead_at,
    )


def write_letter(letter: DeadLetter, redrive: Redrive | None) -> Write:
    """What a dead letter's commit writes: the letter; in a redrive, the letter back to dead."""

    async def write(tx: StoreTransaction) -> None:
        if redrive is not None:
            # Only out of ``redrive``: a letter another run settled as redriven stays so.
            await tx.groups.settle_dead_letter(redrive.entry, DeadLetterState.DEAD)
        else:
            await tx.groups.dead_letter(letter)

    return write


def settle_redriven(redrive: Redrive) -> Write:
    """What a redriven event's commit writes beside its effects: the letter, as redriven."""

    async def write(tx: StoreTransaction) -> None:
        # The letter must still be queued for redrive: purged meanwhile, or settled by another
        # run, this run's effects and inbox record roll back with the transaction.
        if not await tx.groups.settle_dead_letter(redrive.entry, DeadLetterState.REDRIVEN):
            raise LetterSettled(f"dead letter {redrive.entry} left redrive while its handler ran")

    return write


class ParkedKeys:
    """The keys of an ordered group with unresolved dead letters, as this member last saw them."""

    def __init__(self, groups: GroupState, group: str) -> None:
        self._groups = groups
        self._group = group
        self._keys: set[str] = set()
        #: Keys this member dead-lettered, by when (a count): what a refresh keeps whatever the
        #: store's snapshot says.
        self._made = 0
        self._made_at: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self._keys)

    async def refresh(self) -> None:
        """Read the keys with unresolved dead letters again. A key dead-lettered here while the
        query ran may be missing from its snapshot: it is kept, else the key's next event would
        be handled ahead of the one in the queue."""
        mark = self._made
        keys = await self._groups.blocked_keys(self._group)
        self._keys = keys | {key for key, made in self._made_at.items() if made > mark}

    async def parks(self, key: str) -> bool:
        """Whether the key's events are parked now."""
        if key in self._keys:
            # The cache may be stale (the key may have drained since): ask the store.
            await self.refresh()
        return key in self._keys

    def park(self, key: str) -> None:
        """Park the key: this member just dead-lettered one of its events."""
        self._made += 1
        self._made_at[key] = self._made
        self._keys.add(key)


class RedrivenSubscription(Protocol):
    """What a redrive reads of the group's subscription."""

    @property
    def pattern(self) -> Pattern | AnyOf: ...

    @property
    def ordered(self) -> bool: ...


class RedrivingMember(Protocol):
    """What a redrive needs of the group member that runs it (``consuming.GroupConsumer``)."""

    @property
    def group(self) -> str: ...

    @property
    def groups(self) -> GroupState: ...

    @property
    def feed(self) -> Feed: ...

    @property
    def services(self) -> Services: ...

    @property
    def subscription(self) -> RedrivenSubscription: ...

    @property
    def held(self) -> frozenset[int]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def parks_any_key(self) -> bool: ...

    async def fence(self, tx: StoreTransaction, partition: int) -> None: ...

    async def handle_again(self, record: RecordedEvent, redrive: Redrive) -> bool: ...


async def settle(member: RedrivingMember, redrive: Redrive, state: DeadLetterState) -> bool:
    """Move the letter out of ``redrive`` to ``state``, fenced by its partition's lease."""
    async with member.services.store.transaction() as tx:
        await member.fence(tx, redrive.partition)
        return await tx.groups.settle_dead_letter(redrive.entry, state)


async def redrive_letters(member: RedrivingMember) -> None:
    """Hand the group's letters queued for redrive, of the partitions that this member holds, to
    its handler again; only this group sees them, whatever other groups read the same event."""
    if member.parks_any_key:
        # A parked letter written after its key's last unpark (the blocking letter was handled
        # meanwhile), or whose blocking letter was purged, would wait for ever: release them.
        await member.groups.release_parked(member.group)
    letters = await member.groups.dead_letters(
        member.group, state=DeadLetterState.REDRIVE, limit=LETTERS_PER_PASS
    )
    lost: set[int] = set()
    failed_keys: set[str] = set()  # ordered groups: a key whose earlier letter failed again
    for letter in letters:
        if member.stopping:
            return
        # The partition of its key, as the store places the key's events (any fixed choice
        # would do for "one member"; this one keeps a key's letters with one member, in order).
        partition = member.feed.partition_of(letter.key or letter.stream or "")
        if partition not in member.held or partition in lost:
            continue  # another member's to redrive
        try:
            await _redrive(member, letter, Redrive(letter.id, partition), failed_keys)
        except LeaseLost as exc:
            log.info(
                "group %s: dead letter %d left to the partition's next holder: %s",
                member.group,
                letter.id,
                exc,
            )
            lost.add(partition)
        except LetterSettled as exc:
            log.info("group %s: %s; its effects were not committed", member.group, exc)


async def _redrive(
    member: RedrivingMember, letter: DeadLetter, redrive: Redrive, failed_keys: set[str]
) -> None:
    ordered_key = letter.key if member.subscription.ordered else None
    if letter.envelope is None or (ordered_key is not None and ordered_key in failed_keys):
        # Unusable, or an earlier event of its key failed again: it stays parked.
        await settle(member, redrive, DeadLetterState.DEAD)
        return
    try:
        # The document carries the data in base64 when it is sealed: a third larger.
        envelope = from_structured(letter.envelope, max_size=member.services.codec.max_size * 2)
    except MalformedEvent as exc:
        log.error("group %s: dead letter %d cannot be redriven: %s", member.group, letter.id, exc)
        await settle(member, redrive, DeadLetterState.DEAD)
        return
    if not member.subscription.pattern.matches(envelope.topic):
        # Not this group's to handle: a group of the same name in another App (another
        # principal, with another pattern) dead-lettered it. It stays dead.
        log.error(
            "group %s: dead letter %d (%s) is not of its pattern", member.group, letter.id, envelope.topic
        )
        await settle(member, redrive, DeadLetterState.DEAD)
        return
    if await member.groups.handled(member.group, [envelope.id]):
        # Its effects are committed already (a redrive that committed before a member lost the
        # partition, a letter queued again after it was redriven): done, not handled again.
        await settle(member, redrive, DeadLetterState.REDRIVEN)
        handled = True
    else:
        if member.services.keys is not None and envelope.datacontenttype == SEALED:
            await member.services.keys.load([envelope.data])
        # Version 0: a dead letter does not record it (sealed data is checked by stream only).
        record = RecordedEvent(envelope, letter.stream or "", 0, letter.position or 0)
        handled = False
        with contextlib.suppress(ConcurrencyError):
            handled = await member.handle_again(record, redrive)
    if ordered_key is None:
        return
    if handled:
        await member.groups.unpark(member.group, ordered_key)  # next of the key, in order
    else:
        failed_keys.add(ordered_key)
