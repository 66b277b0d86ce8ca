"""Consumers killed with SIGKILL at random moments: nothing lost, nothing applied twice, order kept.

On ``nats`` the workers also run the relay, which is killed with them."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from tidings.app import App
from tidings.testing.conformance.events import Ping
from tidings.testing.plugin import BUS_BACKENDS

from .workers import effects, progress, start_worker

KEYS = 20
# The numbers: 10,000 events, at least 50 kills (smaller values speed up local runs).
PER_KEY = int(os.environ.get("TIDINGS_FAULT_EVENTS", "10000")) // KEYS
KILLS = int(os.environ.get("TIDINGS_FAULT_KILLS", "50"))


@pytest.fixture(params=BUS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.mark.timeout(400)
async def test_killed_consumers_lose_nothing_and_repeat_nothing(store_url: str) -> None:
    rng = random.Random(20261126)
    app = App("fault-test", store=store_url)
    async with app:
        for n in range(PER_KEY):
            for key in range(KEYS):
                await app.publish(Ping(key=f"key-{key}", n=n), key=f"key-{key}")
        total = PER_KEY * KEYS
        kills = 0
        deadline = time.monotonic() + 360
        workers = [start_worker(store_url, "survivors"), start_worker(store_url, "survivors")]
        # Kill at random moments, but only once the workers have made progress since the last
        # kill (a random amount, on average an eighth of an even share, since progress is only
        # sampled and runs on past the mark): every kill hits a worker at work, and all the
        # kills happen before the work is done, however fast it goes.
        spacing = max(1, total // (KILLS * 4))
        next_kill = rng.randint(1, spacing)
        try:
            while (done := await progress(app, KEYS)) < total:
                assert time.monotonic() < deadline, f"stuck at {done} of {total}"
                await asyncio.sleep(rng.uniform(0.002, 0.03))
                if kills < KILLS and done >= next_kill:
                    victim = rng.randrange(len(workers))
                    os.kill(workers[victim].pid, signal.SIGKILL)
                    workers[victim].wait()
                    workers[victim] = start_worker(store_url, "survivors")
                    kills += 1
                    next_kill = done + rng.randint(1, spacing)
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
        assert kills == KILLS, f"only {kills} kills happened before the work was done"
        for name, applied in (await effects(app, KEYS)).items():
            assert applied == list(range(PER_KEY)), f"{name}: lost, repeated or reordered: {applied}"
