"""Consumers killed with SIGKILL at random moments: nothing lost, nothing applied twice, order kept."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from tidings.runtime.app import App
from tidings.testing.conformance.events import Ping

ROOT = Path(__file__).resolve().parents[2]
KEYS = 20
# The numbers: 10,000 events, at least 50 kills (smaller values speed up local runs).
PER_KEY = int(os.environ.get("TIDINGS_FAULT_EVENTS", "10000")) // KEYS
KILLS = int(os.environ.get("TIDINGS_FAULT_KILLS", "50"))


def _worker(url: str, group: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.consumer_worker", url, group],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _progress(app: App) -> int:
    done = 0
    for key in range(KEYS):
        raw = await app.store.get_document("effects", f"key-{key}")
        done += 0 if raw is None else len(msgspec.json.decode(raw))
    return done


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
        workers = [_worker(store_url, "survivors"), _worker(store_url, "survivors")]
        try:
            while await _progress(app) < total:
                assert time.monotonic() < deadline, f"stuck at {await _progress(app)} of {total}"
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                if kills < KILLS:
                    victim = rng.randrange(len(workers))
                    os.kill(workers[victim].pid, signal.SIGKILL)
                    workers[victim].wait()
                    workers[victim] = _worker(store_url, "survivors")
                    kills += 1
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
        assert kills == KILLS, f"only {kills} kills happened before the work was done"
        for key in range(KEYS):
            raw = await app.store.get_document("effects", f"key-{key}")
            assert raw is not None
            effects = msgspec.json.decode(raw, type=list[int])
            assert effects == list(range(PER_KEY)), f"key-{key}: lost, repeated or reordered: {effects}"
