"""A consumer process for the fault tests: applies each event's effect through the unit of work.

Usage: python -m tests.faults.consumer_worker STORE_URL GROUP
Runs until killed. Each ``Ping(key, n)`` appends ``n`` to the document of its key, so the test
can tell lost, repeated and reordered effects apart. With ``TIDINGS_FAULT_POINT`` set, the
worker SIGKILLs itself at that point:

- ``effect``: in the handler of the event with ``n == TIDINGS_FAULT_AT``, after its effect is
  made in the unit of work, before the commit;
- ``committed``: right after that event's unit of work is committed, before anything else;
- ``relay-before-publish``: in the relay, with a batch read from the store, before publishing;
- ``relay-after-publish``: in the relay, right after the bus stored a batch.

With ``TIDINGS_WORKER_ECHO=1`` the handler first publishes ``Pong(key, n)`` at once
(``ctx.publish``, outside the unit of work) to the stream ``echo-<key>``, so the test can count
publications that a handler run again would make twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from tidings.app import App
from tidings.runtime.context import Context
from tidings.runtime.outbox import PUBLISHED, PUBLISHING
from tidings.runtime.settling import COMMITTED
from tidings.testing.conformance.events import Ping, Pong

FAULT_POINT = os.environ.get("TIDINGS_FAULT_POINT", "")
FAULT_AT = int(os.environ.get("TIDINGS_FAULT_AT", "-1"))
ECHO = os.environ.get("TIDINGS_WORKER_ECHO") == "1"
_LOGGED_POINTS = {
    COMMITTED: "committed",
    PUBLISHING: "relay-before-publish",
    PUBLISHED: "relay-after-publish",
}
_marked: set[str] = set()  # ids of the events at which to die


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtPoint(logging.Handler):
    """Dies when the runtime logs the chosen point (logging is the runtime's observation hook)."""

    def emit(self, record: logging.LogRecord) -> None:
        if _LOGGED_POINTS.get(str(record.msg)) != FAULT_POINT:
            return
        if record.msg != COMMITTED or (isinstance(record.args, tuple) and record.args[1] in _marked):
            die()


def build(url: str, group: str) -> App:
    app = App("fault-worker", store=url)

    @app.subscribe("conformance.bus.ping", group=group, batch_size=20)
    async def apply(event: Ping, ctx: Context) -> None:
        if ECHO:
            await ctx.publish(Pong(key=event.key, n=event.n), key=f"echo-{event.key}")
        async with ctx.unit_of_work() as uow:
            seen = await uow.get("effects", event.key, list[int]) or []
            uow.put("effects", event.key, [*seen, event.n])
            if event.n == FAULT_AT:
                _marked.add(ctx.envelope.id)
                if FAULT_POINT == "effect":
                    die()

    return app


async def main(url: str, group: str) -> None:
    if FAULT_POINT:
        logger = logging.getLogger("tidings")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(KillAtPoint())
    app = build(url, group)
    async with app, app.running(lease_ttl=0.6, poll=0.02):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
