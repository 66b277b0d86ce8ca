"""The saga runner SIGKILLed right after each of its commits in turn (between any two steps, and
during compensation), then started again: each instance ends as it would have, and each command
reaches its service once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tidings.app import App
from tidings.domain.saga import SagaInstance
from tidings.errors import AggregateNotFound
from tidings.testing.conformance.events import unique
from tidings.testing.conformance.sagas import OrderPlaced, Shop

ROOT = Path(__file__).resolve().parents[2]


def _runner(url: str, name: str, kill_after: int = 0) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.faults.saga_worker", url, name, str(kill_after)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _ended(app: App, instance: str) -> str:
    try:
        return (await app.load(SagaInstance, instance)).status
    except AggregateNotFound:
        return "not started"


# A happy saga commits 4 times (start, then each reply); one whose shipment fails commits 6
# (start, 2 replies, the failure, then the refund and the release confirmed).
@pytest.mark.parametrize(
    ("trouble", "commits", "outcome"), [("", 4, "completed"), ("fail", 6, "compensated")]
)
@pytest.mark.timeout(240)
async def test_a_saga_runner_killed_after_any_commit_resumes(
    store_url: str, trouble: str, commits: int, outcome: str
) -> None:
    services = App("services", store=store_url)
    shop = Shop(services)
    async with services, services.running(lease_ttl=2.0, poll=0.05):
        for kill_after in range(1, commits):
            name, order = unique("killed"), unique("order")
            doomed = _runner(store_url, name, kill_after)
            await services.publish(OrderPlaced(order_id=order, amount=9, trouble=trouble), key=order)
            assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL
            survivor = _runner(store_url, name)
            try:
                deadline = time.monotonic() + 60
                while (status := await _ended(services, f"{name}:{order}")) != outcome:
                    assert time.monotonic() < deadline, f"killed after commit {kill_after}: {status}"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)
            finally:
                survivor.send_signal(signal.SIGTERM)
                await asyncio.to_thread(survivor.wait, 30)
            sent = Counter(what for what, key in shop.seen.elements() if key == order)
            assert set(sent.values()) == {1}, f"killed after commit {kill_after}: {sent}"
