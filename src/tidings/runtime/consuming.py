"""The consumer runtime: a group's members share the log's partitions and hand each event to the
group's handler, at least once, in order per partition key.

This room holds the lease loop (``PartitionMember``), reads a partition after its checkpoint,
and looks the batch up in the group's inbox; then each event goes down the ladder
(``runtime/dispatch.py``) to an ``Outcome``. A handled event's effects wait in the batch
(``runtime/settling.py``), which commits them with the inbox records and the checkpoint in one
fenced transaction; a dead event's letter (``runtime/deadletter.py``) commits at once, with the
events waiting before it. Redrives of dead letters run beside the loop (``aside``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import RecordedEvent
from tidings.domain.topics import AnyOf, Pattern
from tidings.errors import BackendUnavailable
from tidings.runtime.context import Context, Handler
from tidings.runtime.deadletter import (
    Letter,
    ParkedKeys,
    Redrive,
    letter_of,
    redrive_letters,
    settle,
    write_letter,
)
from tidings.runtime.dispatch import Dead, Dispatcher, Done, Skipped
from tidings.runtime.leasing import PartitionMember
from tidings.runtime.log_context import log_fields
from tidings.runtime.retries import Retry
from tidings.runtime.services import Services
from tidings.runtime.settling import Batch, SharedCommitFailed, Target
from tidings.runtime.telemetry import consumed, processing, record_error, settling

log = logging.getLogger("tidings.consumer")


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
        super().__init__(services.groups, subscription.group, lease_ttl=lease_ttl, grace=grace)
        self.services = services
        self.feed = services.feed
        self.subscription = subscription
        self.poll = poll
        self._parked = ParkedKeys(self.groups, self.group)  # keys with unresolved dead letters (ordered)
        self._dispatcher = Dispatcher(services, self.group, subscription, self._parked)
        self._batch = Batch(services, self.group, self)
        self._pattern = subscription.pattern.text  # messaging.destination.template

    def checkpoint_name(self, partition: int) -> str:
        return self.feed.checkpoint_name(self.group, partition)

    async def between_leases(self) -> None:
        if self.subscription.ordered:
            await self._parked.refresh()

    @property
    def parks_any_key(self) -> bool:
        """Whether, at its last look, this member's ordered group had keys with dead letters."""
        return bool(self._parked)

    async def aside(self) -> None:
        await redrive_letters(self)

    async def handle_again(self, record: RecordedEvent, redrive: Redrive) -> bool:
        """Handle a dead letter's event again (``runtime/deadletter.py``); True if handled."""
        return await self._process(redrive, record)

    def on_stop(self) -> None:
        self.services.wakeups.wake()  # idle partitions notice at once instead of at their next poll

    async def work(self, partition: int) -> None:
        name = self.checkpoint_name(partition)
        after = await self.services.store.get_checkpoint(name)
        self._batch.start(partition, after)
        while not self.stopping:
            seen = self.services.wakeups.count
            batch = await self.feed.read_partition(partition, after=after, limit=self.subscription.batch_size)
            if not batch:
                await self.services.wakeups.wait(self.poll, seen)
                continue
            mine = [r for r in batch if self.subscription.pattern.matches(r.envelope.topic)]
            system = self.services.messaging_system
            consumed(len(mine), group=self.group, pattern=self._pattern, system=system)
            # One look at the inbox for the whole batch (redeliveries after a crash or handover).
            duplicates = await self.groups.handled(self.group, [r.envelope.id for r in mine])
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
                if self._batch.waits(partition) or self._batch.lagging(partition, after, self.stopping):
                    await self._batch.settle(partition, after)
                await self.services.record_denials()  # a handler may have caught one of its denials
            except SharedCommitFailed as failed:
                self._batch.drop(partition)
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
                after = self._batch.commit_alone(partition, failed.upto)

    async def _process(self, at: Target, record: RecordedEvent, duplicate: bool = False) -> bool:
        """Handle one event to its end (done, skipped or dead-lettered); True if it was handled."""
        envelope, services = record.envelope, self.services
        redrive = at if isinstance(at, Redrive) else None
        with (
            log_fields(event_id=envelope.id, correlation_id=envelope.correlationid or envelope.id),
            processing(
                record,
                group=self.group,
                pattern=self._pattern,
                system=services.messaging_system,
                parent=services.trace_parent,
                partition=at if isinstance(at, int) else at.partition,
                redriven=redrive is not None,
            ) as trace,
        ):

            async def commit(context: Context) -> None:
                await self._batch.commit(at, record, context)

            outcome = await self._dispatcher.dispatch(
                record,
                new_unit=lambda: self._batch.new_unit(at),
                commit=commit,
                redriven=redrive is not None,
                duplicate=duplicate,
                trace=trace,
            )
            match outcome:
                case Done():
                    return True
                case Skipped(erased=erased):
                    if erased and redrive is not None:
                        await settle(self, redrive, DeadLetterState.PURGED)
                    return False
                case Dead(letter=letter):
                    await self._dead(at, record, letter)
                    return False

    async def _dead(self, at: Target, record: RecordedEvent, letter: Letter) -> None:
        """Dead-letter the event (in a redrive: its letter back to dead), parking its key in an
        ordered group, and commit with the events waiting before it and the checkpoint."""
        if self.subscription.ordered:
            self._parked.park(record.envelope.partitionkey or record.stream)
        log.error(
            "group %s: dead-lettering %s (%s): %s",
            self.group,
            record.envelope.id,
            letter.reason,
            letter.error,
        )
        dead = letter_of(self.group, record, letter, self.services.clock.now())
        redrive = at if isinstance(at, Redrive) else None
        reason = str(letter.reason)
        record_error(reason)  # on the process span
        with settling(
            [record.envelope.topic],
            group=self.group,
            system=self.services.messaging_system,
            settlement="dead_letter",
            error=reason,
            attributes={"tidings.dead_letter.reason": reason, "tidings.attempt": letter.attempts},
        ):
            await self._batch.settle(at, record.position, extra=write_letter(dead, redrive))
