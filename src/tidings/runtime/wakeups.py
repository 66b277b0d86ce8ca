"""Wake-ups within one process: appends seen, and the idle readers waiting for the next one."""

from __future__ import annotations

import asyncio


class Wakeups:
    def __init__(self) -> None:
        #: Counts appends seen (``notify``); a reader that saw nothing waits for it to move.
        self.count = 0
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        """New events are in the log: count them and wake every idle reader."""
        self.count += 1
        self.wake()

    def wake(self) -> None:
        """Wake every idle reader (to see new events, or that it must stop)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, poll: float, since: int) -> None:
        """Until an append after the ``since`` value of ``count`` (at once if one happened
        already: a reader takes the count before it reads), or ``poll`` seconds pass."""
        if self.count != since:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            # Not wait_for: before Python 3.12 it swallows a cancel that meets a wake-up, and a
            # partition task cancelled on a lost lease would read on.
            await asyncio.wait((waiter,), timeout=poll)
        finally:
            self._waiters.discard(waiter)
