"""Deadlines: an event past its ``expirytime``, or older than a subscription's ``max_age``, is never
handed to a handler. The clock is injectable, so that tests decide what "now" is."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol

from tidings.domain.envelope import Envelope


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def lateness(envelope: Envelope, now: datetime, max_age: timedelta | None) -> timedelta | None:
    """How late the event is past its deadline, or None if it is still in time."""
    deadlines = [envelope.expirytime] if envelope.expirytime else []
    if max_age is not None:
        deadlines.append(envelope.time + max_age)
    if not deadlines:
        return None
    deadline = min(deadlines)
    return now - deadline if now > deadline else None
