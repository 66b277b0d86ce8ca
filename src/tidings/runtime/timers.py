"""Firing durable timers: a due timer's event is appended, and the timer deleted, in one
transaction. Every App that runs sagas fires timers; racing workers cannot fire one twice (a
timer's event id is fixed when it is set, and appending a stored id again is a no-op).

Timers fire in due order, a batch per transaction. A timer that can never fire (unreadable,
too large, unopenable, denied) is dead-lettered in that transaction, under ``TIMERS_GROUP``,
instead of failing it: else the batch would roll back and the same timer come first again,
for ever, and no timer behind it (saga timeouts included) would fire. A passing fault of the
store fails the batch, which is tried again later.

Such a letter queued for redrive (``App.redrive``, ``tidings dlq redrive``) is set again as a
timer, due at once, by the next timer worker that looks (``REARM_EVERY``): the letter keeps the
timer's stream and its event as it was stored, which is all a timer is. (No group consumed
these letters: a redrive left them queued for ever, and the timer never fired.) A letter without
its event (its row could not be read) cannot be set again: it goes back to ``dead``, said in
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from datetime import datetime

from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import Envelope, from_structured, to_structured
from tidings.errors import AccessDenied, IntegrityError, MalformedEvent, Undecryptable, describe
from tidings.ports import DeadLetter, StoreTransaction, Timer
from tidings.runtime.crypto import SEALED
from tidings.runtime.deadletter import Letter
from tidings.runtime.outbox import RESERVED_GROUP_PREFIX
from tidings.runtime.retries import NEVER_RETRIED
from tidings.runtime.services import Services

log = logging.getLogger("tidings.timers")

#: The dead letter queue of timers that cannot fire (``tidings dlq list --group tidings:timers``).
TIMERS_GROUP = f"{RESERVED_GROUP_PREFIX}timers"

#: Seconds between two looks of a timer worker for letters of ``TIMERS_GROUP`` queued for redrive.
REARM_EVERY = 1.0

#: What firing a timer again would only repeat: the verdicts on its data (malformed, too large,
#: denied) and stored data that cannot be opened or was altered (``Undecryptable``).
_CANNOT_FIRE: tuple[type[Exception], ...] = (*NEVER_RETRIED, IntegrityError)


class TimerWorker:
    """Fires the store's due timers, and sets again those whose letters are queued for redrive."""

    def __init__(self, services: Services, *, poll: float = 0.2, batch: int = 100) -> None:
        self.services = services
        self.poll = poll
        self.batch = batch
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        pause = self.poll
        next_look = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + REARM_EVERY
                try:
                    await self.rearm()
                except Exception as exc:  # timers due now fire all the same
                    log.warning("timers: re-arming redriven timers: %s: %s", type(exc).__name__, exc)
            try:
                wait = await self.fire()
                pause = self.poll
            except Exception as exc:
                # The store may be away: keep going, ever more slowly while it lasts; a dead
                # timer loop would leave every saga without timeouts.
                log.warning("timers: %s: %s", type(exc).__name__, exc)
                wait, pause = pause, min(pause * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def fire(self) -> float:
        """Fire what is due; returns how long to wait before looking again."""
        store, now = self.services.store, self.services.clock.now()
        due = await store.next_timer_due()
        if due is None or due > now:
            until = self.poll if due is None else (due - now).total_seconds()
            return max(0.001, min(self.poll, until))
        async with store.transaction() as tx:
            timers = await tx.due_timers(now, self.batch)
            for timer in timers:
                await self._fire_one(tx, timer, now)
        if not timers:
            return self.poll  # due, but another worker holds them (SKIP LOCKED)
        self.services.wakeups.notify()
        return 0.0  # look again at once: more may be due

    async def _fire_one(self, tx: StoreTransaction, timer: Timer, now: datetime) -> None:
        try:
            if timer.envelope is None:
                raise MalformedEvent(f"timer {timer.id}: {timer.error}")
            await tx.append(timer.stream, [timer.envelope])
        except _CANNOT_FIRE as exc:
            # These are found before the event's row is written (on PostgreSQL the insert runs
            # under a savepoint besides), so the transaction goes on with the next timer.
            reason = _reason(exc)
            log.error("timers: dead-lettering timer %s of %s (%s): %s", timer.id, timer.stream, reason, exc)
            await tx.groups.dead_letter(_letter(timer, reason, exc, now))
        await tx.cancel_timer(timer.id)

    async def rearm(self) -> int:
        """Set again, due at once, the timers whose dead letters an operator queued for
        redrive; returns how many."""
        letters = await self.services.groups.dead_letters(
            TIMERS_GROUP, state=DeadLetterState.REDRIVE, limit=self.batch
        )
        rearmed = 0
        for letter in letters:
            rearmed += await self._rearm_one(letter)
        return rearmed

    async def _rearm_one(self, letter: DeadLetter) -> bool:
        store = self.services.store
        try:
            stream, envelope = await self._timer_of(letter)
        except (MalformedEvent, Undecryptable) as exc:
            log.error("timers: dead letter %d cannot be set again as a timer: %s", letter.id, exc)
            async with store.transaction() as tx:
                await tx.groups.settle_dead_letter(letter.id, DeadLetterState.DEAD)
            return False
        try:
            async with store.transaction() as tx:
                # Timers first, as everywhere (see ``UnitOfWork.write_timers``). Its id is its
                # event's: set again twice, it is replaced, and fired twice, appended once.
                await tx.schedule_timer(envelope.id, self.services.clock.now(), stream, envelope)
                if not await tx.groups.settle_dead_letter(letter.id, DeadLetterState.REDRIVEN):
                    raise _AlreadySettled  # another worker set it again, or it was purged
        except _AlreadySettled:
            return False
        log.info("timers: dead letter %d set again as timer %s of %s", letter.id, envelope.id, stream)
        return True

    async def _timer_of(self, letter: DeadLetter) -> tuple[str, Envelope]:
        """The stream and event of the timer that the letter holds, its data open (the
        store's transaction seals it again for the timer)."""
        if letter.envelope is None or letter.stream is None:
            raise MalformedEvent("the timer's row could not be read: its event was not kept")
        # The document carries the data in base64 when it is sealed: a third larger.
        envelope = from_structured(letter.envelope, max_size=self.services.codec.max_size * 2)
        if envelope.datacontenttype != SEALED:
            return letter.stream, envelope
        keys = self.services.keys
        if keys is None:
            raise Undecryptable("its event is sealed, and this App has no master key")
        await keys.load([envelope.data])
        return letter.stream, keys.open_pending(envelope, letter.stream)


class _AlreadySettled(Exception):
    """Rolls back a timer set again from a letter that left ``redrive`` meanwhile."""


def _reason(exc: Exception) -> DeadLetterReason:
    """The dead letter's reason, as consumers give it for the same failures."""
    if isinstance(exc, Undecryptable):
        return DeadLetterReason.UNDECRYPTABLE
    if isinstance(exc, MalformedEvent):
        return DeadLetterReason.MALFORMED
    return DeadLetterReason.DENIED if isinstance(exc, AccessDenied) else DeadLetterReason.FAILED


def _letter(timer: Timer, reason: DeadLetterReason, exc: Exception, now: datetime) -> DeadLetter:
    envelope, document = timer.envelope, None
    if envelope is not None:
        with contextlib.suppress(MalformedEvent):
            document = to_structured(envelope)  # as stored: sealed data stays sealed
    trace = "".join(traceback.format_exception(exc)) if reason is DeadLetterReason.FAILED else ""
    letter = Letter(reason, describe(exc), trace, attempts=1)  # its texts escaped as every letter's
    return DeadLetter(
        group=TIMERS_GROUP,
        reason=letter.reason,
        error=letter.error,
        traceback=letter.trace,
        attempts=letter.attempts,
        event_id=envelope.id if envelope is not None else None,
        stream=timer.stream,
        topic=envelope.topic if envelope is not None else None,
        key=(envelope.partitionkey if envelope is not None else None) or timer.stream,
        envelope=document,
        raw=None if document is not None else timer.raw or None,
        dead_at=now,
    )
