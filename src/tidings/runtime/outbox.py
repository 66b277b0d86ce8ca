"""The outbox relay: the store's log is the outbox. Every appended event is committed in the
append's own transaction; the relay publishes the log to the bus in order, after its own
checkpoint, and moves the checkpoint only once the bus has stored what it published.

Relays in several processes share the work as members of one group: each holds leases on some
of the log's partitions and publishes those, in order per partition (the order that per-key
delivery needs), with a checkpoint per partition fenced by the lease. A relay killed between
publishing and moving its checkpoint publishes those events again; the bus drops them as
duplicates of their event id (and consumers' inboxes catch any that the bus's duplicate window
no longer remembers). Nothing committed is ever skipped: readers of the log never pass over an
event that commits late.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tidings.ports import Bus
from tidings.runtime.leasing import PartitionMember

if TYPE_CHECKING:
    from tidings.runtime.app import App

log = logging.getLogger("tidings.outbox")

#: Groups of tidings' own members (such as relays); applications' groups may not start so.
RESERVED_GROUP_PREFIX = "tidings:"
#: Logged (debug) around each publish; fault tests kill a relay on them.
PUBLISHING = "relay: partition %d, publishing positions %d to %d"
PUBLISHED = "relay: partition %d, published up to position %d"


class Relay(PartitionMember):
    """Publishes the partitions of the log it holds to the bus, a batch at a time, until stopped."""

    def __init__(
        self,
        app: App,
        bus: Bus,
        *,
        batch_size: int = 500,
        poll: float = 1.0,
        lease_ttl: float = 10.0,
        group: str = f"{RESERVED_GROUP_PREFIX}relay",
    ) -> None:
        super().__init__(app.log, group, lease_ttl=lease_ttl)
        self.app = app
        self.bus = bus
        self.batch_size = batch_size
        self.poll = poll

    def checkpoint_name(self, partition: int) -> str:
        return f"{self.group}:{partition}"

    def on_stop(self) -> None:
        self.app.wake()

    async def work(self, partition: int) -> None:
        store, name = self.app.store, self.checkpoint_name(partition)
        after = await store.get_checkpoint(name)
        while not self.stopping:
            seen = self.app.appends
            batch = await self.log.read_partition(partition, after=after, limit=self.batch_size)
            if not batch:
                await self.app.wait_for_events(self.poll, seen)
                continue
            log.debug(PUBLISHING, partition, batch[0].position, batch[-1].position)
            await self.bus.publish(partition, batch)
            after = batch[-1].position
            log.debug(PUBLISHED, partition, after)
            async with store.transaction() as tx:
                await self.fence(tx, partition)
                await tx.set_checkpoint(name, after)
