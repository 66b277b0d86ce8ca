"""Dead letters handed back to their group: the redrive.

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
from dataclasses import dataclass
from typing import Protocol

from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import RecordedEvent, from_structured
from tidings.domain.topics import AnyOf, Pattern
from tidings.errors import ConcurrencyError, MalformedEvent, TidingsError
from tidings.ports import DeadLetter, Log, StoreTransaction
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
    def log(self) -> Log: ...

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
        return await tx.settle_dead_letter(redrive.entry, state)


async def redrive_letters(member: RedrivingMember) -> None:
    """Hand the group's letters queued for redrive, of the partitions that this member holds, to
    its handler again; only this group sees them, whatever other groups read the same event."""
    if member.parks_any_key:
        # A parked letter written after its key's last unpark (the blocking letter was handled
        # meanwhile), or whose blocking letter was purged, would wait for ever: release them.
        await member.log.release_parked(member.group)
    letters = await member.log.dead_letters(
        member.group, state=DeadLetterState.REDRIVE, limit=LETTERS_PER_PASS
    )
    lost: set[int] = set()
    failed_keys: set[str] = set()  # ordered groups: a key whose earlier letter failed again
    for letter in letters:
        if member.stopping:
            return
        # The partition of its key, as the store places the key's events (any fixed choice
        # would do for "one member"; this one keeps a key's letters with one member, in order).
        partition = member.log.partition_of(letter.key or letter.stream or "")
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
    if await member.log.handled(member.group, [envelope.id]):
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
        await member.log.unpark(member.group, ordered_key)  # next of the key, in order
    else:
        failed_keys.add(ordered_key)
