"""What metrics read of the ports, asserted on every backend: a feed's head by partition and
the dead letters' grouped counts (``Feed.head``, ``GroupState.dead_letter_counts``), and what
the monitor samples from them (``runtime/monitoring.py``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tidings.app import App
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.ports import DeadLetter
from tidings.runtime.context import Context
from tidings.runtime.retries import Retry
from tidings.testing.conformance.events import Ping, unique
from tidings.testing.eventually import eventually

RUN = {"lease_ttl": 2.0, "poll": 0.2}


async def test_a_feeds_head_is_its_partitions_last_position(store_url: str) -> None:
    """The head of each partition is the position (the bus's: its sequence) of the last event
    that reading the partition returns, and 0 for a partition that holds none."""
    app = App("heads", store=store_url)
    async with app, app.running(**RUN):  # in distributed mode, the relay fills the bus's feed
        feed = app.feed
        assert [await feed.head(p) for p in range(feed.partitions)] == [0] * feed.partitions
        key = unique("head")
        partition = feed.partition_of(key)
        for n in range(5):
            await app.publish(Ping(key=key, n=n), key=key)

        async def read_all() -> bool:
            return len(await feed.read_partition(partition, after=0, limit=100)) == 5

        await eventually(read_all)
        records = await feed.read_partition(partition, after=0, limit=100)
        assert await feed.head(partition) == records[-1].position
        others = [p for p in range(feed.partitions) if p != partition]
        assert [await feed.head(p) for p in others] == [0] * len(others)
        # The head moves with each new event, and only its partition's.
        await app.publish(Ping(key=key, n=5), key=key)

        async def moved() -> bool:
            return await feed.head(partition) > records[-1].position

        await eventually(moved)
        assert [await feed.head(p) for p in others] == [0] * len(others)


def _letter(group: str, reason: DeadLetterReason, n: int) -> DeadLetter:
    return DeadLetter(
        group=group, reason=reason, error=f"error {n}", event_id=f"e-{group}-{n}", dead_at=datetime.now(UTC)
    )


async def test_dead_letter_counts_are_grouped_by_group_reason_and_state(store_url: str) -> None:
    app = App("counts", store=store_url)
    billing, audit = unique("billing"), unique("audit")
    async with app:
        assert await app.groups.dead_letter_counts() == {}
        entries: list[int] = []
        async with app.store.transaction() as tx:
            for n in range(3):
                entries.append(await tx.groups.dead_letter(_letter(billing, DeadLetterReason.FAILED, n)))
            entries.append(await tx.groups.dead_letter(_letter(billing, DeadLetterReason.EXPIRED, 3)))
            entries.append(await tx.groups.dead_letter(_letter(audit, DeadLetterReason.FAILED, 4)))
        await app.groups.set_dead_letter_state(entries[:1], DeadLetterState.PURGED)
        await app.groups.set_dead_letter_state(entries[1:2], DeadLetterState.REDRIVE)
        counts = await app.groups.dead_letter_counts()
    assert counts == {
        (billing, DeadLetterReason.FAILED, DeadLetterState.PURGED): 1,
        (billing, DeadLetterReason.FAILED, DeadLetterState.REDRIVE): 1,
        (billing, DeadLetterReason.FAILED, DeadLetterState.DEAD): 1,
        (billing, DeadLetterReason.EXPIRED, DeadLetterState.DEAD): 1,
        (audit, DeadLetterReason.FAILED, DeadLetterState.DEAD): 1,
    }
    assert all(isinstance(reason, DeadLetterReason) for _, reason, _ in counts)
    assert all(isinstance(state, DeadLetterState) for _, _, state in counts)


async def test_the_monitor_samples_lag_dead_letters_and_parked_keys(store_url: str) -> None:
    """What the metrics report, sampled from a running App (``App.running(monitoring=...)``):
    a held handler's partition lags (in positions and in seconds) and catches up to 0; a poison
    event is counted as a dead letter, and the later event of its key as a parked one."""
    app = App("sampled", store=store_url)
    group, release = unique("sampled"), asyncio.Event()

    @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=1), ordered=True)
    async def handle(event: Ping, ctx: Context) -> None:
        if event.n < 0:
            raise RuntimeError("poison")
        await release.wait()

    async with app, app.running(**RUN, monitoring=0.05):
        monitor = app.monitor
        assert monitor is not None
        key = unique("held")
        partition = app.feed.partition_of(key)
        for n in range(3):
            await app.publish(Ping(key=key, n=n), key=key)
        labels = (("group", group), ("pattern", "conformance.bus.ping"), ("partition", partition))
        await eventually(lambda: monitor.sample.lag.get(labels, 0) > 0)
        await eventually(lambda: monitor.sample.lag_seconds.get(labels, 0.0) >= 0.3)
        release.set()
        await eventually(
            lambda: monitor.sample.lag.get(labels) == 0 and monitor.sample.lag_seconds[labels] == 0
        )

        poisoned = unique("poisoned")
        await app.publish(Ping(key=poisoned, n=-1), key=poisoned)
        await app.publish(Ping(key=poisoned, n=1), key=poisoned)  # parked behind it
        failed = (("group", group), ("reason", "failed"))
        await eventually(lambda: monitor.sample.dead_letters.get((*failed, ("state", "dead"))) == 1)
        await eventually(lambda: monitor.sample.parked_keys.get((("group", group),)) == 1)
        parked = (("group", group), ("reason", "parked"), ("state", "dead"))
        await eventually(lambda: monitor.sample.dead_letters.get(parked) == 1)
        # Both dead-lettered: past the checkpoint, no longer lag.
        await eventually(lambda: set(monitor.sample.lag.values()) == {0})
        assert monitor.sample.dead_letters_created[failed] == 1
        if app.bus_url is not None:  # the relay caught up with every partition it holds
            await eventually(lambda: bool(monitor.sample.relay_lag))
            await eventually(lambda: set(monitor.sample.relay_lag.values()) == {0})
        assert await monitor.unready() == []
        assert monitor.unhealthy() == []
