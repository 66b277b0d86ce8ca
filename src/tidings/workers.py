"""The workers an open App runs (``App.running``): a consumer per group, the relay that feeds the
bus, the timer worker, and the watchers that wake them when events are appended anywhere.

Each worker gets the App's ``Services`` (the relay: only the wake-ups), never the App itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Collection

from tidings.ports import Bus, Feed
from tidings.runtime.consuming import GroupConsumer, Subscription
from tidings.runtime.leasing import PartitionMember
from tidings.runtime.log_context import log_fields
from tidings.runtime.monitoring import Monitor
from tidings.runtime.outbox import Relay
from tidings.runtime.services import Services
from tidings.runtime.timers import TimerWorker


@contextlib.asynccontextmanager
async def workers_running(
    services: Services,
    subscriptions: Collection[Subscription],
    *,
    bus: Bus | None,
    relay_from: Feed | None,
    lease_ttl: float,
    poll: float,
    monitor: Monitor | None = None,
) -> AsyncIterator[list[PartitionMember]]:
    """Run a consumer for each of ``subscriptions`` and, given ``relay_from``, a relay from that
    feed (the store's) to ``bus``, until the block ends; then let them finish the events in hand and stop.
    The block is given the members started (the consumers and the relay).

    Appends by any process wake the consumers at once (``Feed.watch``); ``poll`` is only the
    fallback interval at which an idle partition looks again. A ``monitor`` is shown the workers
    and samples what the metrics report of them, beside them."""
    # Wake-ups: the store's change signal (new events for a relay, or for consumers of the
    # store's log) and, in distributed mode, the bus's doorbell (new events on the bus).
    watched = [services.store.feed] if subscriptions or bus else []
    if bus is not None and subscriptions:
        watched.append(services.feed)
    members: list[PartitionMember] = [
        GroupConsumer(services, s, lease_ttl=lease_ttl, poll=poll) for s in subscriptions
    ]
    if bus is not None and relay_from is not None:
        members.append(
            Relay(services.wakeups, bus, services.groups, relay_from, lease_ttl=lease_ttl, poll=poll)
        )
    timers = TimerWorker(services, poll=min(poll, 0.2)) if subscriptions else None
    notify = services.wakeups.notify
    with log_fields(app=services.name):  # the tasks take a copy: all they log names this App
        watchers = [asyncio.create_task(feed.watch(notify)) for feed in watched]
        tasks = [asyncio.create_task(member.run()) for member in members]
        if timers is not None:
            watchers.append(asyncio.create_task(timers.run()))
        if monitor is not None:
            monitor.watch(members, tasks, relay_from if bus is not None else None)
            watchers.append(asyncio.create_task(monitor.run()))
    try:
        yield members
    finally:
        for member in members:
            member.stop()
        if timers is not None:
            timers.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def until_signalled() -> None:
    """Wait for SIGTERM or SIGINT (``App.run``: then the workers finish what they hold)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
