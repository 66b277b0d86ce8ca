"""The outbox relay: the store's log is the outbox. Every appended event is committed in the
append's own transaction; the relay publishes the log to the bus in order per partition.

Relays in several processes share the work as members of one group: each holds leases on some
of the log's partitions and publishes those, in order (the order that per-key delivery needs).
Where to go on from is asked of the bus (``Bus.published``), not of a checkpoint of the relay's:
a relay killed after the bus stored a batch, or one that lost its lease unawares, can neither
skip an event nor publish one twice (the NATS bus refuses a publish that does not follow its
partition's last event). Nothing committed is ever skipped: readers of the log never pass over
an event that commits late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from tidings.errors import BackendUnavailable
from tidings.ports import Bus, Feed, GroupState
from tidings.runtime.leasing import PartitionMember
from tidings.runtime.telemetry import NO_TRACE, bus_system, scrubbed, sending
from tidings.runtime.wakeups import Wakeups

log = logging.getLogger("tidings.outbox")

#: Groups of tidings' own members (such as relays); applications' groups may not start so.
RESERVED_GROUP_PREFIX = "tidings:"
#: Logged (debug) around each publish; fault tests kill a relay on them.
PUBLISHING = "relay: partition %d, publishing positions %d to %d"
PUBLISHED = "relay: partition %d, published up to position %d"
#: Logged (warning) when a publish failed and the relay asks the bus again where it stands.
RESYNCING = "relay: partition %d: %s; asking the bus where it stands again in %.2f s"
#: The pause before that, doubling while publishing keeps failing, up to the last.
FIRST_PAUSE, LAST_PAUSE = 0.05, 2.0


class Relay(PartitionMember):
    """Publishes the partitions of the log it holds to the bus, a batch at a time, until stopped.
    It waits for appends on ``wakeups`` (the App's), and needs nothing else of the App."""

    def __init__(
        self,
        wakeups: Wakeups,
        bus: Bus,
        groups: GroupState,
        feed: Feed,
        *,
        batch_size: int = 500,
        poll: float = 1.0,
        lease_ttl: float = 10.0,
        group: str = f"{RESERVED_GROUP_PREFIX}relay",
    ) -> None:
        super().__init__(groups, group, lease_ttl=lease_ttl)
        self.feed = feed
        self.wakeups = wakeups
        self.bus = bus
        self.batch_size = batch_size
        self.poll = poll
        self._stopped = asyncio.Event()
        #: Per partition held, the log position the bus holds up to, as this relay last knew it
        #: (what the relay lag metric is measured from).
        self.relayed: dict[int, int] = {}
        #: ``messaging.system`` of the bus, for the relay's spans (a stand-in bus of a test may
        #: have no URL: it spans as "unknown").
        self.system = bus_system(getattr(bus, "url", "unknown"))

    def on_stop(self) -> None:
        self._stopped.set()
        self.wakeups.wake()

    async def work(self, partition: int) -> None:
        after = self.relayed[partition] = await self.bus.published(partition)
        pause = 0.0
        while not self.stopping:
            seen = self.wakeups.count
            batch = await self.feed.read_partition(partition, after=after, limit=self.batch_size)
            if not batch:
                await self.wakeups.wait(self.poll, seen)
                continue
            log.debug(PUBLISHING, partition, batch[0].position, batch[-1].position)
            # A malformed trace context (written behind tidings' back) is not passed on.
            batch = [scrubbed(record) for record in batch]
            try:
                # The publish is a ``send`` span of its own, linked to each event's.
                with sending(
                    [record.envelope.topic for record in batch],
                    parent=NO_TRACE,
                    system=self.system,
                    attributes={"tidings.partition": partition},
                    links=[(r.envelope.traceparent, r.envelope.tracestate) for r in batch],
                ):
                    await self.bus.publish(partition, batch)
            except BackendUnavailable as exc:
                # The stream moved on under the relay (junk on its subjects, a relay that lost
                # its lease unawares) or the bus is away. Asking at once, again and again, would
                # spend a flood of junk in resyncs: the pause doubles while it keeps failing.
                pause = min(max(2 * pause, FIRST_PAUSE), LAST_PAUSE)
                log.warning(RESYNCING, partition, exc, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), pause)
                after = self.relayed[partition] = await self.bus.published(partition)
                continue
            pause = 0.0
            after = self.relayed[partition] = batch[-1].position
            log.debug(PUBLISHED, partition, after)
