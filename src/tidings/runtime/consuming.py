"""The consumer runtime: a group's members share the log's partitions and hand each event to the
group's handler, at least once, in order per partition key.

Per event: undecodable -> DLQ ``malformed``; past its deadline -> DLQ ``expired``; in the inbox
already -> skipped; else the handler runs, retried with backoff up to its budget, then DLQ
``failed``. Whatever the outcome, the inbox record and the checkpoint commit in one transaction
with the handler's unit of work, and only while this member still holds the partition's lease.

Commits are shared: the units of work of a batch's events (each with its own inbox record) wait
and commit together with the checkpoint, in one transaction, when the batch ends or another
event's outcome must commit at once (a dead letter). Later handlers of the batch read the
documents that waiting units write, and a load of an aggregate whose stream a waiting unit
appends to commits the waiting units first. Each event's effects stay atomic with its inbox
record: if the shared commit fails (a concurrency conflict, a refused write), the batch's events
are handled again one at a time, so that only the one at fault fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tidings.domain.attributes import escape_controls
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import RecordedEvent, Undecodable, to_structured
from tidings.domain.events import Erased
from tidings.domain.topics import AnyOf, Pattern
from tidings.errors import (
    AccessDenied,
    BackendUnavailable,
    ConcurrencyError,
    MalformedEvent,
    Undecryptable,
    describe,
)
from tidings.ports import DeadLetter, StoreTransaction
from tidings.runtime.context import Context, Handler
from tidings.runtime.deadletter import LetterSettled, Redrive, redrive_letters, settle
from tidings.runtime.deadlines import lateness
from tidings.runtime.leasing import LeaseLost, PartitionMember
from tidings.runtime.log_context import log_fields
from tidings.runtime.publishing import aggregate_envelopes_of, publisher_of, trial_of
from tidings.runtime.repository import Appended, complete_saves
from tidings.runtime.retries import Retry
from tidings.runtime.services import Services
from tidings.runtime.unit_of_work import UnitOfWork, write_documents

log = logging.getLogger("tidings.consumer")

#: Logged (debug) once an event's unit of work is committed; fault tests kill a worker on it.
COMMITTED = "group %s: committed %s"
#: Seconds a checkpoint may trail the events a group passed over without handling any.
CHECKPOINT_LAG = 1.0


@dataclass(frozen=True)
class Subscription:
    """A group's handler for the events whose topic matches ``pattern``."""

    pattern: Pattern | AnyOf
    group: str
    handler: Handler
    retry: Retry = field(default_factory=Retry)
    max_age: timedelta | None = None
    batch_size: int = 100
    #: Keep order per key through failures: once an event is dead-lettered, the later events of
    #: its key are parked (dead-lettered as "parked") until it is resolved; other keys flow on.
    ordered: bool = False


class _SharedCommitFailed(BaseException):
    """A commit of waiting units of work failed: their events are handled again. A
    ``BaseException``, so that no handler's ``except Exception`` can swallow it (it may be
    raised inside a handler, by a load that commits the waiting units first)."""

    def __init__(self, upto: int) -> None:
        super().__init__(f"a shared commit up to position {upto} failed")
        self.upto = upto


@dataclass(frozen=True, slots=True)
class _Handled:
    """An event handled, whose inbox record and unit of work (if any) wait for the partition's
    next commit."""

    record: RecordedEvent
    context: Context


class GroupConsumer(PartitionMember):
    """One member of a group: holds leases on some partitions and works through them."""

    def __init__(
        self,
        services: Services,
        subscription: Subscription,
        *,
        lease_ttl: float = 10.0,
        poll: float = 1.0,
        grace: float = 5.0,
    ) -> None:
        super().__init__(services.feed, subscription.group, lease_ttl=lease_ttl, grace=grace)
        self.services = services
        self.subscription = subscription
        self.poll = poll
        self._blocked: set[str] = set()  # keys with unresolved dead letters (ordered groups)
        #: Keys this member dead-lettered, by when (a count): what a refresh keeps whatever the
        #: store's snapshot says (``_refresh_blocked``).
        self._blocks_made = 0
        self._blocks_made_at: dict[str, int] = {}
        #: Per partition, events handled whose inbox records and units of work (and the
        #: checkpoint past them) are written by the partition's next commit.
        self._waiting: dict[int, list[_Handled]] = {}
        self._committed: dict[int, int] = {}  # the last checkpoint written, per partition
        self._committed_at: dict[int, float] = {}  # and when (monotonic seconds)
        #: Per partition, up to which position each event commits alone (after a shared
        #: commit failed).
        self._alone_until: dict[int, int] = {}

    def checkpoint_name(self, partition: int) -> str:
        return self.log.checkpoint_name(self.group, partition)

    async def between_leases(self) -> None:
        if self.subscription.ordered:
            await self._refresh_blocked()

    async def _refresh_blocked(self) -> None:
        """Read the keys with unresolved dead letters again. A key dead-lettered here while the
        query ran may be missing from its snapshot: it is kept, else the key's next event would
        be handled ahead of the one in the queue."""
        mark = self._blocks_made
        keys = await self.log.blocked_keys(self.group)
        self._blocked = keys | {key for key, made in self._blocks_made_at.items() if made > mark}

    @property
    def parks_any_key(self) -> bool:
        """Whether, at its last look, this member's ordered group had keys with dead letters."""
        return bool(self._blocked)

    async def aside(self) -> None:
        await redrive_letters(self)

    async def handle_again(self, record: RecordedEvent, redrive: Redrive) -> bool:
        """Handle a dead letter's event again (``runtime/deadletter.py``); True if handled."""
        return await self._process(None, record, redrive)

    def on_stop(self) -> None:
        self.services.wakeups.wake()  # idle partitions notice at once instead of at their next poll

    async def work(self, partition: int) -> None:
        name = self.checkpoint_name(partition)
        after = self._committed[partition] = await self.services.store.get_checkpoint(name)
        self._waiting.pop(partition, None)
        while not self.stopping:
            seen = self.services.wakeups.count
            batch = await self.log.read_partition(partition, after=after, limit=self.subscription.batch_size)
            if not batch:
                await self.services.wakeups.wait(self.poll, seen)
                continue
            mine = [r for r in batch if self.subscription.pattern.matches(r.envelope.topic)]
            # One look at the inbox for the whole batch (redeliveries after a crash or handover).
            duplicates = await self.log.handled(self.group, [r.envelope.id for r in mine])
            try:
                for record in mine:
                    if self.stopping:
                        break
                    await self._process(partition, record, duplicate=record.envelope.id in duplicates)
                    # A second copy in the same batch (a broker may hold one) is a duplicate too:
                    # it must not run on, and stage writes over, its first copy's waiting unit.
                    duplicates.add(record.envelope.id)
                    after = record.position
                if not self.stopping:
                    after = batch[-1].position  # events not for this group move the checkpoint too
                if self._waiting.get(partition) or self._lagging(partition, after):
                    await self._settle(partition, after)
                await self.services.record_denials()  # a handler may have caught one of its denials
            except _SharedCommitFailed as failed:
                self._waiting.pop(partition, None)
                if isinstance(failed.__cause__, BackendUnavailable):
                    raise failed.__cause__ from None  # the store is away: back off, then restart
                # Ordinary contention (two members saving one aggregate) ends here, and is
                # resolved by the one-by-one handling; a real fault shows there, on its own.
                log.debug(
                    "group %s: partition %d: %s (%s); handling again one by one",
                    self.group,
                    partition,
                    failed,
                    failed.__cause__,
                )
                self._alone_until[partition] = failed.upto
                after = self._committed[partition]

    def _lagging(self, partition: int, after: int) -> bool:
        """Whether to commit a checkpoint that only passes events of other groups. Not after
        every batch: with many groups on a log, most batches hold nothing for a given group,
        and a commit each would cost a write apiece. At most ``CHECKPOINT_LAG`` seconds later
        (or on stopping) it is written; until then a restart reads those events again, and
        passes them again."""
        if self._committed.get(partition) == after:
            return False
        return self.stopping or time.monotonic() - self._committed_at.get(partition, 0.0) > CHECKPOINT_LAG

    def _new_unit(self, partition: int | None) -> UnitOfWork:
        """A unit of work that reads what the partition's waiting units write."""

        async def read_document(collection: str, key: str) -> bytes | None:
            for handled in reversed(self._waiting.get(partition, []) if partition is not None else []):
                unit = handled.context.unit
                if unit is not None:
                    written, value = unit.staged(collection, key)
                    if written:
                        return value
            return await self.services.store.get_document(collection, key)

        async def load(cls: type[Any], id: str) -> Any:
            # A waiting unit that appends to the stream being loaded commits first, so that the
            # load sees its events (and saving on top of them passes the version check).
            waiting = self._waiting.get(partition, []) if partition is not None else []
            stream = cls.stream_of(id)
            touched = any(h.context.unit and stream in h.context.unit.streams() for h in waiting)
            if partition is not None and touched:
                await self._settle(partition, waiting[-1].record.position)
            return await self.services.load(cls, id)

        codec, clock = self.services.codec, self.services.clock
        return UnitOfWork(
            loader=load, document_reader=read_document, guard=codec.guard, trial=trial_of(codec, clock)
        )

    async def _settle(
        self,
        partition: int | None,
        position: int,
        now: _Handled | None = None,
        extra: Callable[[StoreTransaction], Awaitable[None]] | None = None,
        redrive: Redrive | None = None,
    ) -> None:
        """One transaction, fenced by the partition's lease: the inbox records and units of work
        of the waiting events and of ``now`` (an event that commits at once), then ``extra`` (a
        dead letter's row), then the checkpoint at ``position``. Without a partition (a redrive):
        ``now`` and ``extra`` alone, fenced by the lease of the redrive's partition."""
        waiting = self._waiting.pop(partition, []) if partition is not None else []
        handled = waiting + ([now] if now is not None else [])
        saved: list[Appended] = []
        try:
            async with self.services.store.transaction() as tx:
                fenced_by = redrive.partition if redrive is not None else partition
                if fenced_by is not None:
                    await self.fence(tx, fenced_by)
                units: list[tuple[Context, UnitOfWork]] = []
                for done in handled:
                    # Not in the inbox yet, else another delivery made its effects already.
                    fresh = await tx.mark_handled(self.group, done.record.envelope.id, done.context.attempt)
                    if fresh and done.context.unit is not None:
                        units.append((done.context, done.context.unit))
                codec, clock = self.services.codec, self.services.clock
                publishers = [publisher_of(codec, clock, context.lineage) for context, _ in units]
                for (_, unit), publish in zip(
                    units, publishers, strict=True
                ):  # timers first: see write_timers
                    await unit.write_timers(tx, publish)
                for (context, unit), publish in zip(units, publishers, strict=True):
                    envelopes_of = aggregate_envelopes_of(codec, clock, context.lineage)
                    saved += await unit.append_events(tx, envelopes_of, publish)
                await write_documents(tx, [unit for _, unit in units])
                for context, unit in units:
                    for error in unit.dead_letters:
                        log.error(
                            "group %s: dead-lettering %s (stuck): %s", self.group, context.envelope.id, error
                        )
                        await tx.dead_letter(
                            self._letter(
                                context.record, DeadLetterReason.STUCK, error, "", context.attempt, None
                            )
                        )
                if extra is not None:
                    await extra(tx)
                if partition is not None:
                    await tx.set_checkpoint(self.checkpoint_name(partition), position)
        except (LeaseLost, LetterSettled, asyncio.CancelledError):
            raise  # the waiting events were not committed: the partition's next holder gets them
        except Exception as exc:
            if partition is None or not waiting:
                raise
            # Never just raise here: a caller inside a handler would retry the handler, and the
            # waiting events (taken out above) would be passed over by the next checkpoint.
            # Some unit cannot commit, and later units may have read what earlier ones wrote:
            # none of them is kept, and their events are handled again, each committing alone,
            # so that only the one at fault fails (retried, then dead-lettered on its own).
            raise _SharedCommitFailed(position) from exc
        if partition is not None:
            self._committed[partition] = position
            self._committed_at[partition] = time.monotonic()
        for done in handled:
            log.debug(COMMITTED, self.group, done.record.envelope.id)
        await complete_saves(self.services.store, saved)  # only now: a failed commit is handled again
        if any(
            d.context.unit and (d.context.unit.publications or d.context.unit.aggregates) for d in handled
        ):
            self.services.wakeups.notify()

    async def _process(
        self,
        partition: int | None,
        record: RecordedEvent,
        redrive: Redrive | None = None,
        duplicate: bool = False,
    ) -> bool:
        """Handle one event to its end (done, skipped or dead-lettered); True if it was handled."""
        envelope = record.envelope
        with log_fields(event_id=envelope.id, correlation_id=envelope.correlationid or envelope.id):
            return await self._process_event(partition, record, redrive, duplicate)

    async def _process_event(
        self, partition: int | None, record: RecordedEvent, redrive: Redrive | None, duplicate: bool
    ) -> bool:
        if duplicate:
            # The inbox has it: the group decided this event before (a redelivery after a crash
            # or a handover). Whatever it would be now, late or parked, it needs nothing more.
            return False  # the checkpoint moves past it with the partition's next commit
        services, envelope = self.services, record.envelope
        key = envelope.partitionkey or record.stream
        parks = self.subscription.ordered and redrive is None
        if parks and key in self._blocked:
            # The cache may be stale (the key may have drained since): ask the store.
            await self._refresh_blocked()
        if parks and key in self._blocked:
            error = "parked: an earlier event of this key is in the dead letter queue"
            await self._dead(partition, record, DeadLetterReason.PARKED, error, "", 0, None, redrive)
            return False
        if isinstance(record, Undecodable):
            await self._dead(
                partition, record, DeadLetterReason.MALFORMED, record.error, "", 0, None, redrive
            )
            return False
        try:
            event = services.codec.decode(envelope, record.stream, record.version)
        except MalformedEvent as exc:
            await self._dead(partition, record, DeadLetterReason.MALFORMED, str(exc), "", 0, None, redrive)
            return False
        except Undecryptable as exc:
            await self._dead(
                partition, record, DeadLetterReason.UNDECRYPTABLE, str(exc), "", 0, None, redrive
            )
            return False
        if isinstance(event, Erased):  # shredded: no data left to handle
            if redrive is not None:
                await settle(self, redrive, DeadLetterState.PURGED)
            return False  # the checkpoint moves past it
        max_age = self.subscription.max_age
        late = None if redrive is not None else lateness(envelope, services.clock.now(), max_age)
        if late is not None:
            error = f"expired {late.total_seconds():.3f} s before it could be handled"
            await self._dead(partition, record, DeadLetterReason.EXPIRED, error, "", 0, None, redrive)
            return False
        retry = self.subscription.retry
        first_failure: datetime | None = None
        for attempt in range(1, retry.attempts + 1):
            context = Context(services, self.group, record, attempt, lambda: self._new_unit(partition))
            try:
                await self.subscription.handler(event, context)
                await self._commit(partition, record, context, redrive)
            except (LeaseLost, LetterSettled, _SharedCommitFailed, asyncio.CancelledError):
                raise
            except Exception as exc:
                await services.record_denials()  # an AccessDenied fails the handler, and is audited
                first_failure = first_failure or services.clock.now()
                # A denial is the policy's answer, not a passing fault: trying again only
                # repeats it (and its audit record). So do the errors the Retry names, and
                # tidings' own that cannot pass another time (``Retry.is_transient``).
                denied = isinstance(exc, AccessDenied)
                if attempt == retry.attempts or not retry.is_transient(exc):
                    trace = traceback.format_exc()
                    error = f"{describe(exc)}"
                    reason = DeadLetterReason.DENIED if denied else DeadLetterReason.FAILED
                    await self._dead(partition, record, reason, error, trace, attempt, first_failure, redrive)
                    return False
                # A stale expected version is contention, retried as a matter of course; other
                # errors are worth a look even when a retry fixes them.
                level = logging.DEBUG if isinstance(exc, ConcurrencyError) else logging.WARNING
                log.log(
                    level,
                    "group %s: %s (attempt %d of %d) failed: %s",
                    self.group,
                    envelope.id,
                    attempt,
                    retry.attempts,
                    exc,
                )
                await services.clock.sleep(retry.delay(attempt))
            else:
                return True
        return False

    async def _commit(
        self, partition: int | None, record: RecordedEvent, context: Context, redrive: Redrive | None
    ) -> None:
        if (
            partition is not None
            and redrive is None
            and record.position > self._alone_until.get(partition, 0)
        ):
            # Its effects wait for the partition's next commit (at the latest, the end of the
            # batch). A crash before it redelivers the batch's events; a concurrency conflict
            # of a saved aggregate fails the shared commit, and the batch's events are then
            # handled again one at a time, each with its retries.
            self._waiting.setdefault(partition, []).append(_Handled(record, context))
            return

        async def settle_redrive(tx: StoreTransaction) -> None:
            # The letter must still be queued for redrive: purged meanwhile, or settled by
            # another run, this run's effects and inbox record roll back with the transaction.
            if redrive is not None and not await tx.settle_dead_letter(
                redrive.entry, DeadLetterState.REDRIVEN
            ):
                raise LetterSettled(f"dead letter {redrive.entry} left redrive while its handler ran")

        await self._settle(partition, record.position, _Handled(record, context), settle_redrive, redrive)

    async def _dead(
        self,
        partition: int | None,
        record: RecordedEvent,
        reason: DeadLetterReason,
        error: str,
        trace: str,
        attempts: int,
        first_failure: datetime | None,
        redrive: Redrive | None,
    ) -> None:
        if self.subscription.ordered:
            key = record.envelope.partitionkey or record.stream
            self._blocks_made += 1
            self._blocks_made_at[key] = self._blocks_made
            self._blocked.add(key)
        log.error("group %s: dead-lettering %s (%s): %s", self.group, record.envelope.id, reason, error)
        letter = self._letter(record, reason, error, trace, attempts, first_failure)

        async def write(tx: StoreTransaction) -> None:
            if redrive is not None:
                # Only out of ``redrive``: a letter another run settled as redriven stays so.
                await tx.settle_dead_letter(redrive.entry, DeadLetterState.DEAD)
            else:
                await tx.dead_letter(letter)

        await self._settle(partition, record.position, extra=write, redrive=redrive)

    def _letter(
        self,
        record: RecordedEvent,
        reason: DeadLetterReason,
        error: str,
        trace: str,
        attempts: int,
        first_failure: datetime | None,
    ) -> DeadLetter:
        envelope = record.envelope
        document = None
        if not isinstance(record, Undecodable):
            with contextlib.suppress(MalformedEvent):
                document = to_structured(envelope)
        # The texts may hold what the event held (an exception's message quotes its data): a NUL
        # would fail the letter's insert on PostgreSQL and stop the partition.
        return DeadLetter(
            group=self.group,
            reason=reason,
            error=escape_controls(error),
            traceback=escape_controls(trace, lines=True),
            attempts=attempts,
            event_id=envelope.id,
            position=record.position,
            stream=record.stream,
            topic=envelope.topic,
            key=envelope.partitionkey or record.stream,
            envelope=document,
            raw=None if document else envelope.data,
            first_failed=first_failure,
            dead_at=self.services.clock.now(),
        )
