"""Firing durable timers: a due timer's event is appended, and the timer deleted, in one
transaction. Every App that runs sagas fires timers; racing workers cannot fire one twice (a
timer's event id is fixed when it is set, and appending a stored id again is a no-op)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from tidings.errors import Undecryptable

if TYPE_CHECKING:
    from tidings.runtime.app import App

log = logging.getLogger("tidings.timers")


class TimerWorker:
    def __init__(self, app: App, *, poll: float = 0.2, batch: int = 100) -> None:
        self.app = app
        self.poll = poll
        self.batch = batch
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        pause = self.poll
        while not self._stopping.is_set():
            try:
                wait = await self.fire()
                pause = self.poll
            except Exception as exc:
                # The store may be away, or a timer unreadable: keep going, ever more slowly
                # while it lasts; a dead timer loop would leave every saga without timeouts.
                log.warning("timers: %s: %s", type(exc).__name__, exc)
                wait, pause = pause, min(pause * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)

    async def fire(self) -> float:
        """Fire what is due; returns how long to wait before looking again."""
        store, now = self.app.store, self.app.clock.now()
        due = await store.next_timer_due()
        if due is None or due > now:
            until = self.poll if due is None else (due - now).total_seconds()
            return max(0.001, min(self.poll, until))
        async with store.transaction() as tx:
            timers = await tx.due_timers(now, self.batch)
            for timer in timers:
                try:
                    await tx.append(timer.stream, [timer.envelope])
                except Undecryptable as exc:
                    # Its scope was shredded or its row altered: it can never fire. Holding it
                    # would stop every timer behind it, so it goes, on record.
                    log.error("timers: dropping timer %s of %s: %s", timer.id, timer.stream, exc)
                await tx.cancel_timer(timer.id)
        if not timers:
            return self.poll  # due, but another worker holds them (SKIP LOCKED)
        self.app.notify()
        return 0.0  # look again at once: more may be due
