"""Wake-ups: a reader's wait ends on an append, on the poll interval, or when it is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from tidings.runtime.wakeups import Wakeups


async def test_a_cancel_that_meets_a_wake_up_still_cancels() -> None:
    """A partition task cancelled (its lease lost) in the same moment an append wakes it must
    end: were the cancel swallowed, it would read on, and whoever awaits it would wait for ever."""
    wakeups = Wakeups()
    reader = asyncio.create_task(wakeups.wait(60.0, wakeups.count))
    await asyncio.sleep(0)  # the reader is waiting now
    wakeups.notify()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_a_wait_ends_at_the_poll_interval_and_forgets_its_waiter() -> None:
    wakeups = Wakeups()
    await wakeups.wait(0.01, wakeups.count)
    assert not wakeups._waiters


async def test_an_append_already_seen_returns_at_once() -> None:
    wakeups = Wakeups()
    seen = wakeups.count
    wakeups.notify()
    await asyncio.wait_for(wakeups.wait(60.0, seen), 1.0)
