"""The relay's pause when publishing keeps failing (junk that keeps coming on a partition's
subjects moves its stream on under every publish): it doubles up to a bound, each said in a log
line, and a publish that goes through ends it. A bus of the test's own that fails on cue
(the real one, with junk, in tests/faults/test_forged_positions.py)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from tidings.app import App
from tidings.domain.envelope import RecordedEvent
from tidings.errors import BackendUnavailable
from tidings.ports import Bus
from tidings.runtime.outbox import FIRST_PAUSE, LAST_PAUSE, Relay
from tidings.testing.conformance.events import ItemAdded
from tidings.testing.eventually import eventually


class FailingBus:
    """Refuses the first ``failures`` publishes as junk would make JetStream refuse them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published_positions: list[int] = []
        self.asked = 0

    async def published(self, partition: int) -> int:
        self.asked += 1
        return self.published_positions[-1] if self.published_positions else 0

    async def publish(self, partition: int, records: Sequence[RecordedEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise BackendUnavailable("JetStream did not store message 1 of 1: wrong last sequence")
        self.published_positions += [record.position for record in records]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())


async def test_the_relay_pauses_longer_while_publishing_keeps_failing(tmp_path: Path) -> None:
    failures = 8
    lines = Lines()
    logging.getLogger("tidings.outbox").addHandler(lines)
    async with App("relay-backoff", store=f"sqlite:///{tmp_path / 'relay.db'}") as app:
        stored = await app.append("cart-1", [ItemAdded(cart_id="cart-1", sku=s) for s in "abc"])
        partition = app.store.feed.partition_of("cart-1")
        bus = FailingBus(failures)
        relay = Relay(app.wakeups, cast(Bus, bus), app.groups, app.store.feed, poll=0.05)
        work = asyncio.create_task(relay.work(partition))
        try:
            await eventually(lambda: bus.published_positions == [r.position for r in stored], within=30)
        finally:
            logging.getLogger("tidings.outbox").removeHandler(lines)
            relay.stop()
            await asyncio.wait_for(work, 10)
    pauses = [p for line in lines.said for p in re.findall(r"again in ([0-9.]+) s", line)]
    expected = [f"{min(FIRST_PAUSE * 2**n, LAST_PAUSE):.2f}" for n in range(failures)]
    assert pauses == expected
    assert pauses[-2:] == [f"{LAST_PAUSE:.2f}"] * 2  # bounded: the pause stopped doubling
    assert bus.asked == failures + 1  # where it stands: asked at the start and after each failure
