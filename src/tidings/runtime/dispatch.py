"""The per-event ladder: what becomes of one event a group reads, as an ``Outcome``.

In order: in the inbox already -> skipped; its key parked (ordered groups) -> dead ``parked``;
undecodable -> dead ``malformed``; its key gone -> dead ``undecryptable``; erased -> skipped;
past its deadline -> dead ``expired``; else the handler runs, retried with backoff up to its
budget, then dead ``failed`` (``denied`` for an access denial). The ladder writes nothing itself
but through ``commit`` (a handled event's effects, ``runtime/settling.py``): the caller writes a
dead letter (``runtime/deadletter.py``) and moves the checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from tidings.domain.dead_letters import DeadLetterReason
from tidings.domain.envelope import RecordedEvent, Undecodable
from tidings.domain.events import Erased
from tidings.errors import AccessDenied, ConcurrencyError, MalformedEvent, Undecryptable, describe
from tidings.runtime.context import Context, Handler
from tidings.runtime.deadletter import Letter, LetterSettled, ParkedKeys
from tidings.runtime.deadlines import lateness
from tidings.runtime.leasing import LeaseLost
from tidings.runtime.retries import Retry
from tidings.runtime.services import Services
from tidings.runtime.telemetry import NO_TRACE, TraceFields, error_type, set_attributes, settling
from tidings.runtime.unit_of_work import UnitOfWork

log = logging.getLogger("tidings.consumer")


@dataclass(frozen=True, slots=True)
class Done:
    """The handler ran, and its effects are committed or wait for the partition's next commit."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing to do: handled before (in the inbox), or erased (``erased``: shredded, no data
    left to handle; a redrive settles its letter as purged)."""

    erased: bool = False


@dataclass(frozen=True, slots=True)
class Dead:
    """For the dead letter queue, and why."""

    letter: Letter


#: What became of an event.
Outcome = Done | Skipped | Dead


class DispatchedSubscription(Protocol):
    """What the ladder reads of a group's subscription (``consuming.Subscription``)."""

    @property
    def handler(self) -> Handler: ...

    @property
    def retry(self) -> Retry: ...

    @property
    def max_age(self) -> timedelta | None: ...

    @property
    def ordered(self) -> bool: ...


class Dispatcher:
    """Runs the ladder for the events of one group member."""

    def __init__(
        self, services: Services, group: str, subscription: DispatchedSubscription, parked: ParkedKeys
    ) -> None:
        self.services = services
        self.group = group
        self.subscription = subscription
        self.parked = parked

    async def dispatch(
        self,
        record: RecordedEvent,
        *,
        new_unit: Callable[[], UnitOfWork],
        commit: Callable[[Context], Awaitable[None]],
        redriven: bool = False,
        duplicate: bool = False,
        trace: TraceFields = NO_TRACE,
    ) -> Outcome:
        """The outcome of one event. ``new_unit`` makes the handler's unit of work; ``commit``
        commits (or queues) a handled event's effects, and its failure counts as the handler's.
        A redriven event is neither parked nor late: an operator asked for it."""
        if duplicate:
            # The inbox has it: the group decided this event before (a redelivery after a crash
            # or a handover). Whatever it would be now, late or parked, it needs nothing more.
            return Skipped()  # the checkpoint moves past it with the partition's next commit
        services, envelope = self.services, record.envelope
        key = envelope.partitionkey or record.stream
        if self.subscription.ordered and not redriven and await self.parked.parks(key):
            error = "parked: an earlier event of this key is in the dead letter queue"
            return Dead(Letter(DeadLetterReason.PARKED, error))
        if isinstance(record, Undecodable):
            return Dead(Letter(DeadLetterReason.MALFORMED, record.error))
        try:
            event = services.codec.decode(envelope, record.stream, record.version)
        except MalformedEvent as exc:
            return Dead(Letter(DeadLetterReason.MALFORMED, str(exc)))
        except Undecryptable as exc:
            return Dead(Letter(DeadLetterReason.UNDECRYPTABLE, str(exc)))
        if isinstance(event, Erased):  # shredded: no data left to handle
            return Skipped(erased=True)  # the checkpoint moves past it
        max_age = self.subscription.max_age
        late = None if redriven else lateness(envelope, services.clock.now(), max_age)
        if late is not None:
            error = f"expired {late.total_seconds():.3f} s before it could be handled"
            return Dead(Letter(DeadLetterReason.EXPIRED, error))
        return await self._handle(record, event, new_unit, commit, trace)

    async def _handle(
        self,
        record: RecordedEvent,
        event: object,
        new_unit: Callable[[], UnitOfWork],
        commit: Callable[[Context], Awaitable[None]],
        trace: TraceFields,
    ) -> Outcome:
        """Run the handler, and commit, with the subscription's retries."""
        services, retry = self.services, self.subscription.retry
        first_failure: datetime | None = None
        for attempt in range(1, retry.attempts + 1):
            context = Context(services, self.group, record, attempt, new_unit, trace)
            try:
                await self.subscription.handler(event, context)
                await commit(context)
            except (LeaseLost, LetterSettled, asyncio.CancelledError):
                # Not the handler's failure: the commit was fenced off or rolled back. (A failed
                # shared commit, ``settling.SharedCommitFailed``, passes as a ``BaseException``.)
                raise
            except Exception as exc:
                await services.record_denials()  # an AccessDenied fails the handler, and is audited
                first_failure = first_failure or services.clock.now()
                # A denial is the policy's answer, not a passing fault: trying again only
                # repeats it (and its audit record). So do the errors the Retry names, and
                # tidings' own that cannot pass another time (``Retry.is_transient``).
                denied = isinstance(exc, AccessDenied)
                if attempt == retry.attempts or not retry.is_transient(exc):
                    reason = DeadLetterReason.DENIED if denied else DeadLetterReason.FAILED
                    set_attributes({"tidings.attempt": attempt, "tidings.error": error_type(exc)})
                    stack = traceback.format_exc()
                    return Dead(Letter(reason, describe(exc), stack, attempt, first_failure))
                # A stale expected version is contention, retried as a matter of course; other
                # errors are worth a look even when a retry fixes them.
                level = logging.DEBUG if isinstance(exc, ConcurrencyError) else logging.WARNING
                log.log(
                    level,
                    "group %s: %s (attempt %d of %d) failed: %s",
                    self.group,
                    record.envelope.id,
                    attempt,
                    retry.attempts,
                    exc,
                )
                with settling(
                    [record.envelope.topic],
                    group=self.group,
                    system=services.messaging_system,
                    settlement="retry",
                    error=error_type(exc),
                    attributes={"tidings.attempt": attempt},
                ):
                    await services.clock.sleep(retry.delay(attempt))
            else:
                if attempt > 1:
                    set_attributes({"tidings.attempt": attempt})
                return Done()
        return Skipped()  # no attempts at all (a budget of none): as before, not handled
