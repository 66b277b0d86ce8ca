"""A worker process for the fault tests: appends events and reports each acknowledged append.

Usage: python -m tests.faults.appender STORE_URL STREAM_PREFIX COUNT
Prints ``ack <stream> <event id>`` once each append has returned (is acknowledged).
"""

from __future__ import annotations

import asyncio
import sys

from tidings.adapters.registry import open_store
from tidings.testing.conformance.events import items


async def main(url: str, prefix: str, count: int) -> None:
    store = open_store(url)
    await store.open()
    try:
        for n in range(count):
            stream = f"{prefix}-{n % 5}"
            (envelope,) = items(stream, 1)
            await store.append(stream, [envelope])
            sys.stdout.write(f"ack {stream} {envelope.id}\n")
            sys.stdout.flush()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
