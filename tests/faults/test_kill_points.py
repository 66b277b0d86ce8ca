"""A worker SIGKILLed at each fixed point of an event's way: in the handler after its effect and
before the commit, right after the commit, and in the relay after the store commit before the
publish, and right after a publish. A fresh worker then finishes the
job: every effect exactly once, in order per key, and on JetStream every event stored once.
A handler that publishes at once (``ctx.publish``, outside its unit of work) and dies before its
commit publishes each event once all the same: the run again makes the same ids."""

from __future__ import annotations

import asyncio
import signal
import time

import nats
import pytest

from tidings.app import App
from tidings.testing.conformance.events import Ping
from tidings.testing.plugin import BUS_BACKENDS

from .workers import echoes, effects, progress, start_worker

KEYS = 4
PER_KEY = 25
CONSUMER_POINTS = ("effect", "committed")
RELAY_POINTS = ("relay-before-publish", "relay-after-publish")


@pytest.fixture(params=BUS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.mark.parametrize("point", CONSUMER_POINTS)
async def test_a_consumer_killed_at_a_fixed_point_loses_and_repeats_nothing(
    store_url: str, point: str
) -> None:
    await _kill_and_recover(store_url, point)


@pytest.mark.parametrize("backend", ["nats"])  # only distributed mode has a relay
@pytest.mark.parametrize("point", RELAY_POINTS)
async def test_a_relay_killed_at_a_fixed_point_loses_and_repeats_nothing(store_url: str, point: str) -> None:
    await _kill_and_recover(store_url, point)


async def test_a_consumer_killed_before_its_commit_publishes_each_event_once(store_url: str) -> None:
    await _kill_and_recover(store_url, "effect", echo=True)


async def _kill_and_recover(store_url: str, point: str, *, echo: bool = False) -> None:
    app = App("kill-points", store=store_url)
    async with app:
        for n in range(PER_KEY):
            for key in range(KEYS):
                await app.publish(Ping(key=f"key-{key}", n=n), key=f"key-{key}")
        total = KEYS * PER_KEY
        doomed = start_worker(store_url, "points", fault=point, at=PER_KEY // 2, echo=echo)
        try:
            assert await asyncio.to_thread(doomed.wait, 60) == -signal.SIGKILL, f"no kill at {point}"
        finally:
            doomed.kill()
        survivor = start_worker(store_url, "points", echo=echo)
        try:
            deadline = time.monotonic() + 60
            while await progress(app, KEYS) < total:
                assert time.monotonic() < deadline, f"stuck at {await progress(app, KEYS)} of {total}"
                await asyncio.sleep(0.1)
            while echo and app.bus_url and await _stored_messages(app.bus_url) < 2 * total:
                assert time.monotonic() < deadline, "the relay did not publish every Pong"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # time for a repeat to show, if one were coming
        finally:
            survivor.kill()
            survivor.wait()
        for name, applied in (await effects(app, KEYS)).items():
            assert applied == list(range(PER_KEY)), f"{name}: lost, repeated or reordered: {applied}"
        if echo:
            for name, published in (await echoes(app, KEYS)).items():
                assert published == list(range(PER_KEY)), f"{name}: lost, repeated or reordered: {published}"
        if app.bus_url:
            stored = await _stored_messages(app.bus_url)
            assert stored == total * (2 if echo else 1), "an event is stored twice on the bus"


async def _stored_messages(bus_url: str) -> int:
    server, _, query = bus_url.partition("?")
    stream = dict(part.split("=") for part in query.split("&"))["stream"]
    client = await nats.connect(server, connect_timeout=5)
    try:
        js = client.jetstream()
        return sum([(await js.stream_info(f"{stream}_{p}")).state.messages for p in range(8)])
    finally:
        await client.close()
