"""A consumer process for the fault tests: applies each event's effect through the unit of work.

Usage: python -m tests.faults.consumer_worker STORE_URL GROUP
Runs until killed. Each ``Ping(key, n)`` appends ``n`` to the document of its key, so the test
can tell lost, repeated and reordered effects apart.
"""

from __future__ import annotations

import asyncio
import sys

from tidings.runtime.app import App
from tidings.runtime.consuming import Context
from tidings.testing.conformance.events import Ping


def build(url: str, group: str) -> App:
    app = App("fault-worker", store=url)

    @app.subscribe("conformance.bus.ping", group=group, batch_size=20)
    async def apply(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            seen = await uow.get("effects", event.key, list[int]) or []
            uow.put("effects", event.key, [*seen, event.n])

    return app


async def main(url: str, group: str) -> None:
    app = build(url, group)
    async with app, app.running(lease_ttl=0.6, poll=0.02):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
