"""The outbox relay: the store's log is the outbox. Every appended event is committed in the
append's own transaction; the relay publishes the log to the bus in order, after its own
checkpoint, and moves the checkpoint only once the bus has stored what it published.

A relay killed between publishing and moving its checkpoint publishes those events again; the
bus drops them as duplicates of their event id (and consumers' inboxes catch any the bus's
duplicate window no longer remembers). Nothing committed is ever skipped: readers of the log
never pass over an event that commits late.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tidings.ports import Bus

if TYPE_CHECKING:
    from tidings.runtime.app import App

log = logging.getLogger("tidings.outbox")


class Relay:
    """Publishes the log to the bus, a batch at a time, until stopped."""

    def __init__(self, app: App, bus: Bus, *, batch_size: int = 500, poll: float = 1.0) -> None:
        self.app = app
        self.bus = bus
        self.batch_size = batch_size
        self.poll = poll
        self.checkpoint = "relay:bus"
        self.stopping = False

    async def run(self) -> None:
        store = self.app.store
        after = await store.get_checkpoint(self.checkpoint)
        while not self.stopping:
            seen = self.app.appends
            batch = [
                r
                async for r in store.read_log(after=after, limit=self.batch_size, batch_size=self.batch_size)
            ]
            if not batch:
                await self.app.wait_for_events(self.poll, seen)
                continue
            await self.bus.publish(batch)
            after = batch[-1].position
            async with store.transaction() as tx:
                await tx.set_checkpoint(self.checkpoint, after)
