"""Waiting in tests for what consumers do in the background."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], *, within: float = 10.0
) -> None:
    """Poll ``check`` until it holds; fail with ``AssertionError`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within} s: {getattr(check, '__name__', check)}")
        await asyncio.sleep(0.02)
