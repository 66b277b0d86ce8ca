"""A clock that tests move by hand (deadlines are checked against it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class ManualClock:
    """``now`` is what the test says; ``sleep`` really sleeps (briefly), so retries still yield."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, by: timedelta) -> None:
        self._now += by

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, 0.01))
