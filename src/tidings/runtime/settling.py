"""The batch: handled events wait, then commit together in one fenced transaction.

Whatever an event's outcome, its inbox record and the checkpoint past it commit in one
transaction with the handler's unit of work, and only while this member still holds the
partition's lease. Commits are shared: the units of work of a batch's events (each with its own
inbox record) wait and commit together with the checkpoint when the batch ends or another
event's outcome must commit at once (a dead letter). Later handlers of the batch read the
documents that waiting units write, and a load of an aggregate whose stream a waiting unit
appends to commits the waiting units first. Each event's effects stay atomic with its inbox
record: if the shared commit fails (a concurrency conflict, a refused write), the batch's events
are handled again one at a time (``SharedCommitFailed``), so that only the one at fault fails.

A redriven event (``deadletter.Redrive``) never waits: it commits alone, fenced by the lease of
its letter's partition, and moves no checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tidings.domain.dead_letters import DeadLetterReason
from tidings.domain.envelope import RecordedEvent
from tidings.ports import StoreTransaction
from tidings.runtime.context import Context
from tidings.runtime.deadletter import Letter, LetterSettled, Redrive, Write, letter_of, settle_redriven
from tidings.runtime.leasing import LeaseLost
from tidings.runtime.publishing import aggregate_envelopes_of, publisher_of, trial_of
from tidings.runtime.repository import Appended, complete_saves
from tidings.runtime.services import Services
from tidings.runtime.telemetry import enabled, sending, settling
from tidings.runtime.unit_of_work import UnitOfWork, write_documents

log = logging.getLogger("tidings.consumer")

#: Logged (debug) once an event's unit of work is committed; fault tests kill a worker on it.
COMMITTED = "group %s: committed %s"
#: Seconds a checkpoint may trail the events a group passed over without handling any.
CHECKPOINT_LAG = 1.0

#: Where a commit lands: a partition (its waiting events, then its checkpoint), or a redrive
#: (the redriven event alone, fenced by the lease of the letter's partition).
Target = int | Redrive


class SharedCommitFailed(BaseException):
    """A commit of waiting units of work failed: their events are handled again. A
    ``BaseException``, so that no handler's ``except Exception`` can swallow it (it may be
    raised inside a handler, by a load that commits the waiting units first)."""

    def __init__(self, upto: int) -> None:
        super().__init__(f"a shared commit up to position {upto} failed")
        self.upto = upto


class FencingMember(Protocol):
    """What the batch needs of the group member whose commits it makes."""

    async def fence(self, tx: StoreTransaction, partition: int) -> None: ...

    def checkpoint_name(self, partition: int) -> str: ...


@dataclass(frozen=True, slots=True)
class _Handled:
    """An event handled, whose inbox record and unit of work (if any) wait for the partition's
    next commit."""

    record: RecordedEvent
    context: Context


class Batch:
    """The waiting events of a member's partitions, and the commits that write them."""

    def __init__(self, services: Services, group: str, member: FencingMember) -> None:
        self.services = services
        self.group = group
        self.member = member
        #: Per partition, events handled whose inbox records and units of work (and the
        #: checkpoint past them) are written by the partition's next commit.
        self._waiting: dict[int, list[_Handled]] = {}
        self._committed: dict[int, int] = {}  # the last checkpoint written, per partition
        self._committed_at: dict[int, float] = {}  # and when (monotonic seconds)
        #: Per partition, up to which position each event commits alone (after a shared
        #: commit failed).
        self._alone_until: dict[int, int] = {}

    def start(self, partition: int, checkpoint: int) -> None:
        """Begin a partition at its stored checkpoint, with nothing waiting."""
        self._committed[partition] = checkpoint
        self._waiting.pop(partition, None)

    def waits(self, partition: int) -> bool:
        """Whether handled events of the partition wait for its next commit."""
        return bool(self._waiting.get(partition))

    def drop(self, partition: int) -> None:
        """Forget the partition's waiting events: their shared commit failed, and they are read
        and handled again."""
        self._waiting.pop(partition, None)

    def commit_alone(self, partition: int, upto: int) -> int:
        """Up to position ``upto``, each event of the partition commits alone (after a failed
        shared commit). The checkpoint to read on from."""
        self._alone_until[partition] = upto
        return self._committed[partition]

    def lagging(self, partition: int, after: int, stopping: bool) -> bool:
        """Whether to commit a checkpoint that only passes events of other groups. Not after
        every batch: with many groups on a log, most batches hold nothing for a given group,
        and a commit each would cost a write apiece. At most ``CHECKPOINT_LAG`` seconds later
        (or on stopping) it is written; until then a restart reads those events again, and
        passes them again."""
        if self._committed.get(partition) == after:
            return False
        return stopping or time.monotonic() - self._committed_at.get(partition, 0.0) > CHECKPOINT_LAG

    def _waiting_in(self, at: Target) -> list[_Handled]:
        return self._waiting.get(at, []) if isinstance(at, int) else []

    def new_unit(self, at: Target) -> UnitOfWork:
        """A unit of work that reads what the partition's waiting units write."""

        async def read_document(collection: str, key: str) -> bytes | None:
            for handled in reversed(self._waiting_in(at)):
                unit = handled.context.unit
                if unit is not None:
                    written, value = unit.staged(collection, key)
                    if written:
                        return value
            return await self.services.store.get_document(collection, key)

        async def load(cls: type[Any], id: str) -> Any:
            # A waiting unit that appends to the stream being loaded commits first, so that the
            # load sees its events (and saving on top of them passes the version check).
            waiting = self._waiting_in(at)
            stream = cls.stream_of(id)
            if any((unit := h.context.unit) and stream in unit.streams() for h in waiting):
                await self.settle(at, waiting[-1].record.position)
            return await self.services.load(cls, id)

        codec, clock = self.services.codec, self.services.clock
        return UnitOfWork(
            loader=load, document_reader=read_document, guard=codec.guard, trial=trial_of(codec, clock)
        )

    async def commit(self, at: Target, record: RecordedEvent, context: Context) -> None:
        """Commit a handled event's effects: with the partition's next commit, or at once (a
        redrive, or after a failed shared commit)."""
        if isinstance(at, int) and record.position > self._alone_until.get(at, 0):
            # Its effects wait for the partition's next commit (at the latest, the end of the
            # batch). A crash before it redelivers the batch's events; a concurrency conflict
            # of a saved aggregate fails the shared commit, and the batch's events are then
            # handled again one at a time, each with its retries.
            self._waiting.setdefault(at, []).append(_Handled(record, context))
            return
        extra = settle_redriven(at) if isinstance(at, Redrive) else None
        await self.settle(at, record.position, _Handled(record, context), extra)

    async def settle(
        self,
        at: Target,
        position: int,
        now: _Handled | None = None,
        extra: Write | None = None,
    ) -> None:
        """One transaction, fenced by the partition's lease: the inbox records and units of work
        of the waiting events and of ``now`` (an event that commits at once), then ``extra`` (a
        dead letter's row), then the checkpoint at ``position``. For a redrive: ``now`` and
        ``extra`` alone, fenced by the lease of the redrive's partition."""
        partition = at if isinstance(at, int) else None
        waiting = self._waiting.pop(partition, []) if partition is not None else []
        handled = waiting + ([now] if now is not None else [])
        saved: list[Appended] = []
        try:
            # A commit of handled events is a ``settle`` span, linked to their ``process`` spans
            # (ended by now); a checkpoint alone is none: most batches pass other groups' events.
            with self._settling(handled) if handled and enabled() else contextlib.nullcontext():
                async with self.services.store.transaction() as tx:
                    await self.member.fence(tx, at if isinstance(at, int) else at.partition)
                    saved = await self._write(tx, handled)
                    if extra is not None:
                        await extra(tx)
                    if partition is not None:
                        await tx.set_checkpoint(self.member.checkpoint_name(partition), position)
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
            raise SharedCommitFailed(position) from exc
        if partition is not None:
            self._committed[partition] = position
            self._committed_at[partition] = time.monotonic()
        for done in handled:
            log.debug(COMMITTED, self.group, done.record.envelope.id)
        await complete_saves(self.services.store, saved)  # only now: a failed commit is handled again
        if any((unit := d.context.unit) and (unit.publications or unit.aggregates) for d in handled):
            self.services.wakeups.notify()

    def _settling(self, handled: list[_Handled]) -> contextlib.AbstractContextManager[None]:
        return settling(
            [done.record.envelope.topic for done in handled],
            group=self.group,
            system=self.services.messaging_system,
            settlement="commit",
            links=[done.context.trace for done in handled],
            root=True,
        )

    async def _write(self, tx: StoreTransaction, handled: list[_Handled]) -> list[Appended]:
        """The inbox records and the units of work of ``handled``; the aggregates saved."""
        units: list[tuple[Context, UnitOfWork]] = []
        for done in handled:
            # Not in the inbox yet, else another delivery made its effects already.
            fresh = await tx.groups.mark_handled(self.group, done.record.envelope.id, done.context.attempt)
            if fresh and done.context.unit is not None:
                units.append((done.context, done.context.unit))
        codec, clock = self.services.codec, self.services.clock
        saved: list[Appended] = []
        with contextlib.ExitStack() as spans:
            # Each unit's events are sent in a ``send`` span of their own, child of the handler's
            # ``process`` span (their lineage's trace), whose context their envelopes carry.
            lineages = []
            for context, unit in units:
                lineage, topics = context.lineage, _topics(unit)
                if topics:
                    sent = spans.enter_context(sending(topics, parent=lineage.trace))
                    lineage = replace(lineage, trace=sent)
                lineages.append(lineage)
            publishers = [publisher_of(codec, clock, lineage) for lineage in lineages]
            for (_, unit), publish in zip(units, publishers, strict=True):  # timers first: see write_timers
                await unit.write_timers(tx, publish)
            for (_, unit), publish, lineage in zip(units, publishers, lineages, strict=True):
                envelopes_of = aggregate_envelopes_of(codec, clock, lineage)
                saved += await unit.append_events(tx, envelopes_of, publish)
        await write_documents(tx, [unit for _, unit in units])
        for context, unit in units:
            for error in unit.dead_letters:
                log.error("group %s: dead-lettering %s (stuck): %s", self.group, context.envelope.id, error)
                letter = Letter(DeadLetterReason.STUCK, error, attempts=context.attempt)
                await tx.groups.dead_letter(letter_of(self.group, context.record, letter, clock.now()))
        return saved


def _topics(unit: UnitOfWork) -> list[str]:
    """The topics of the events a unit of work sends: its publications (timers too: their
    envelopes are made now) and its saved aggregates' new events."""
    topics = [publication.event.__event_topic__ for publication in unit.publications]
    topics += [event.__event_topic__ for aggregate in unit.aggregates for event in aggregate.pending]
    return topics
