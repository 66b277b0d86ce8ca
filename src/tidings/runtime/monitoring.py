"""What a running App tells about itself: tidings' own metrics (OpenTelemetry metrics API, meter
``tidings``) and the answers of its health and readiness probes.

Gauges that need the store are not read at scrape time: a sampler task (``Monitor.run``, started
with the workers) asks the store and the feed every ``interval`` seconds and keeps the values,
which the instruments' callbacks (synchronous, called at each collection) only look up. So a
scrape costs no query, and however often Prometheus scrapes, the store sees one round per
interval. Each value, and what it costs:

* consumer lag (``tidings.consumer.lag``), per group and partition: the partition's head
  (``Feed.head``: one index lookup, or the JetStream stream's info) minus the group's checkpoint
  (``EventStore.get_checkpoint``: one key lookup). In the SQL logs positions are the global log's,
  so this is the distance in log positions, an upper bound of the events behind (0 exactly when
  none is); on JetStream, stream sequences: the events themselves.
* its age (``tidings.consumer.lag.seconds``): the time of the first event after the checkpoint
  (``Feed.read_partition(after=checkpoint, limit=1)``: one indexed row), read only when behind.
* dead letters by group, reason and state (``tidings.dead_letters``; summed over states, the
  counter ``tidings.dead_letters.created``): one grouped count (``GroupState.dead_letter_counts``).
* parked keys of ordered groups (``tidings.parked_keys``): ``GroupState.blocked_keys``, per
  ordered group.
* relay lag per partition (``tidings.relay.lag``): the store's head of the partition minus the
  position the bus holds, as the relay last published or learned it (no bus request).
* the soonest due timer's delay (``tidings.timers.overdue.seconds``): ``EventStore.next_timer_due``.

Partitions held and lease changes are this process's own, counted from its members at each
sample (no query). Each App's values are its groups', so that two processes of one service
report the same lags: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from tidings.ports import Feed
from tidings.runtime.consuming import GroupConsumer
from tidings.runtime.leasing import PartitionMember
from tidings.runtime.outbox import Relay
from tidings.runtime.services import Services

if TYPE_CHECKING:  # imported when the first sampler starts: the API takes a tenth of a second to import
    from opentelemetry.metrics import CallbackOptions, CallbackT, Observation

log = logging.getLogger("tidings.monitoring")

#: Seconds between two samples of the store (a scrape between them reads the last one).
SAMPLE_INTERVAL: Final = 5.0
#: Seconds a readiness probe waits for the store or the bus before it calls it unreachable.
PROBE_TIMEOUT: Final = 1.0
#: A relay whose partition is behind and has not moved for this long is stalled (not ready).
RELAY_STALL: Final = 30.0
#: Seconds between two ticks of the event loop's watch; a tick later than ``LOOP_BOUND`` (or
#: none for that long) makes the process unhealthy.
LOOP_TICK: Final = 0.25
LOOP_BOUND: Final = 5.0

Labels = tuple[tuple[str, str | int], ...]


@dataclass
class Sample:
    """The values of one sampling round, as the instruments report them."""

    lag: dict[Labels, int] = field(default_factory=dict)
    lag_seconds: dict[Labels, float] = field(default_factory=dict)
    dead_letters: dict[Labels, int] = field(default_factory=dict)
    dead_letters_created: dict[Labels, int] = field(default_factory=dict)
    parked_keys: dict[Labels, int] = field(default_factory=dict)
    relay_lag: dict[Labels, int] = field(default_factory=dict)
    timers_overdue: float | None = None


class LoopWatch:
    """Ticks on the event loop: how late the last tick came, and how long ago it did."""

    def __init__(self) -> None:
        self.lateness = 0.0
        self.last = time.monotonic()

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LOOP_TICK)
            self.last = time.monotonic()
            self.lateness = max(self.last - before - LOOP_TICK, 0.0)

    def lag(self) -> float:
        """The loop's delay now: the last tick's lateness, or how overdue the next one is."""
        overdue = time.monotonic() - self.last - LOOP_TICK
        return max(self.lateness, overdue, 0.0)


class Monitor:
    """Samples what the metrics report of an App's groups, relay and timers, and answers the
    health and readiness probes. ``watch`` hands it the workers once they run."""

    def __init__(self, services: Services, *, bus: bool, interval: float = SAMPLE_INTERVAL) -> None:
        self.services = services
        self.bus = bus
        self.interval = interval
        self.sample = Sample()
        self.loop = LoopWatch()
        self._members: list[PartitionMember] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._relay_from: Feed | None = None
        self._held: dict[str, frozenset[int]] = {}
        #: Per relayed partition: the position the bus held, and since when (monotonic).
        self._relayed_since: dict[int, tuple[int, float]] = {}
        self._stalled: list[int] = []

    @property
    def members(self) -> list[PartitionMember]:
        return self._members

    def watch(
        self, members: Sequence[PartitionMember], tasks: Sequence[asyncio.Task[None]], relay_from: Feed | None
    ) -> None:
        """The workers started (their tasks, in the same order) and the feed the relay reads."""
        self._members, self._tasks, self._relay_from = list(members), list(tasks), relay_from

    async def run(self) -> None:
        """Sample every ``interval`` until cancelled; a failed round (the store away) keeps the
        last values and tries again at the next."""
        _instruments().monitors.add(self)
        task = asyncio.current_task()
        try:
            while True:
                try:
                    await self.sample_once()
                except Exception as exc:
                    log.warning("monitoring: sampling failed (%s); again in %.1f s", exc, self.interval)
                # A cancel that arrives during a query may be absorbed by the driver (seen with
                # psycopg after the server restarted: the round ended normally, and the task
                # sampled on for ever, holding up the workers' shutdown): honour it here.
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                await asyncio.sleep(self.interval)
        finally:
            _instruments().monitors.discard(self)

    async def sample_once(self) -> None:
        """One round of queries (see the module's docstring for each)."""
        services, feed = self.services, self.services.feed
        sample = Sample()
        consumers = [m for m in self._members if isinstance(m, GroupConsumer)]
        if consumers:
            heads = [await feed.head(p) for p in range(feed.partitions)]
            now = services.clock.now()
            for consumer in consumers:
                group, pattern = consumer.group, consumer.subscription.pattern.text
                for partition, head in enumerate(heads):
                    checkpoint = await services.store.get_checkpoint(feed.checkpoint_name(group, partition))
                    labels: Labels = (("group", group), ("pattern", pattern), ("partition", partition))
                    sample.lag[labels] = max(head - checkpoint, 0)
                    age = 0.0
                    if head > checkpoint:
                        first = await feed.read_partition(partition, after=checkpoint, limit=1)
                        if first:
                            age = max((now - first[0].envelope.time).total_seconds(), 0.0)
                    sample.lag_seconds[labels] = age
                if consumer.subscription.ordered:
                    parked = await services.groups.blocked_keys(group)
                    sample.parked_keys[(("group", group),)] = len(parked)
            due = await services.store.next_timer_due()
            sample.timers_overdue = 0.0 if due is None else max((now - due).total_seconds(), 0.0)
            groups = {consumer.group for consumer in consumers}
            for (group, reason, state), count in (await services.groups.dead_letter_counts()).items():
                if group in groups:
                    created: Labels = (("group", group), ("reason", reason.value))
                    sample.dead_letters[(*created, ("state", state.value))] = count
                    sample.dead_letters_created[created] = sample.dead_letters_created.get(created, 0) + count
        await self._sample_relay(sample)
        self._count_lease_changes()
        self.sample = sample

    async def _sample_relay(self, sample: Sample) -> None:
        relay = next((m for m in self._members if isinstance(m, Relay)), None)
        if relay is None or self._relay_from is None:
            return
        stalled = []
        now = time.monotonic()
        for partition, position in sorted(relay.relayed.items()):
            if partition not in relay.held:
                continue
            behind = max(await self._relay_from.head(partition) - position, 0)
            sample.relay_lag[(("partition", partition),)] = behind
            seen, since = self._relayed_since.get(partition, (-1, now))
            if seen != position:
                self._relayed_since[partition] = (position, now)
            elif behind and now - since > RELAY_STALL:
                stalled.append(partition)
        self._stalled = stalled

    def _count_lease_changes(self) -> None:
        changes = _instruments().lease_changes
        for member in self._members:
            held, before = member.held, self._held.get(member.group, frozenset())
            if claimed := len(held - before):
                changes.add(claimed, {"group": member.group, "change": "claimed"})
            if released := len(before - held):
                changes.add(released, {"group": member.group, "change": "released"})
            self._held[member.group] = held

    # -- probes ----------------------------------------------------------------------------

    def unhealthy(self) -> list[str]:
        """Why the process is not alive and well (empty: it is): its event loop was held."""
        lag = self.loop.lag()
        return [f"event loop late by {lag:.1f} s"] if lag > LOOP_BOUND else []

    async def unready(self) -> list[str]:
        """Why the App should get no traffic now (empty: ready), each probe bounded in time:
        the store or the bus unreachable, a worker stopped, the relay stalled."""
        probes: dict[str, asyncio.Future[int]] = {
            "store": asyncio.ensure_future(self.services.store.head_position())
        }
        if self.bus:
            probes["bus"] = asyncio.ensure_future(self.services.feed.head(0))
        _, late = await asyncio.wait(probes.values(), timeout=PROBE_TIMEOUT)
        problems = []
        for name, probe in probes.items():
            if probe in late:
                # Cancelled, not awaited: a driver that holds on to a cancelled call (waiting for
                # its own timeout) must not hold the answer up.
                probe.cancel()
                probe.add_done_callback(_forget)
                problems.append(f"{name} unreachable (no answer within {PROBE_TIMEOUT:g} s)")
            elif (error := probe.exception()) is not None:
                problems.append(f"{name} unreachable ({type(error).__name__})")
        for member, task in zip(self._members, self._tasks, strict=False):
            if task.done():
                problems.append(f"group {member.group} stopped")
        if self._stalled:
            problems.append(f"relay stalled on partition(s) {', '.join(map(str, self._stalled))}")
        return problems


def _forget(probe: asyncio.Future[int]) -> None:
    """Retrieve a late probe's outcome, so that its error is not reported as never retrieved."""
    if not probe.cancelled():
        probe.exception()


class _Instruments:
    """The meter's instruments, made once per process: their callbacks report every running
    Monitor's last sample."""

    def __init__(self) -> None:
        from opentelemetry import metrics
        from opentelemetry.metrics import Observation as observation

        self.observation = observation
        self.monitors: set[Monitor] = set()
        meter = metrics.get_meter("tidings")
        gauges: tuple[tuple[str, str, str, str], ...] = (
            ("tidings.consumer.lag", "lag", "{position}", "Log positions a group is behind the head"),
            ("tidings.consumer.lag.seconds", "lag_seconds", "s", "Age of a group's oldest unhandled event"),
            ("tidings.dead_letters", "dead_letters", "{letter}", "Dead letters by group, reason and state"),
            ("tidings.parked_keys", "parked_keys", "{key}", "Keys an ordered group parks"),
            ("tidings.relay.lag", "relay_lag", "{position}", "Log positions the bus is behind the store"),
        )
        for name, attribute, unit, description in gauges:
            meter.create_observable_gauge(
                name, callbacks=[self._observer(attribute)], unit=unit, description=description
            )
        meter.create_observable_counter(
            "tidings.dead_letters.created",
            callbacks=[self._observer("dead_letters_created")],
            unit="{letter}",
            description="Dead letters ever made, by group and reason",
        )
        meter.create_observable_gauge(
            "tidings.timers.overdue.seconds",
            callbacks=[self._timers_overdue],
            unit="s",
            description="How late the soonest due timer is",
        )
        meter.create_observable_gauge(
            "tidings.partitions.held",
            callbacks=[self._held],
            unit="{partition}",
            description="Partitions this process's members hold",
        )
        meter.create_observable_gauge(
            "tidings.event_loop.lag.seconds",
            callbacks=[self._loop_lag],
            unit="s",
            description="How late the event loop runs what is due",
        )
        self.lease_changes = meter.create_counter(
            "tidings.lease.changes", unit="{partition}", description="Partitions claimed or released"
        )

    def _observer(self, attribute: str) -> CallbackT:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            for monitor in self.monitors:
                values: dict[Labels, float] = getattr(monitor.sample, attribute)
                for labels, value in values.items():
                    yield self.observation(value, dict(labels))

        return observe

    def _timers_overdue(self, _options: CallbackOptions) -> Iterable[Observation]:
        for monitor in self.monitors:
            if monitor.sample.timers_overdue is not None:
                yield self.observation(monitor.sample.timers_overdue)

    def _held(self, _options: CallbackOptions) -> Iterable[Observation]:
        for monitor in self.monitors:
            for member in monitor.members:
                yield self.observation(len(member.held), {"group": member.group})

    def _loop_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.monitors:
            yield self.observation(next(iter(self.monitors)).loop.lag())


_made: list[_Instruments] = []


def _instruments() -> _Instruments:
    """The instruments, made at the first sampler's start (through the API's global meter
    provider: whatever SDK the process set up, or none, the no-op)."""
    if not _made:
        _made.append(_Instruments())
    return _made[0]
