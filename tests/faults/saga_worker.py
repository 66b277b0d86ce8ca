"""A saga runner process for the fault tests: runs the conformance fulfilment saga.

Usage: python -m tests.faults.saga_worker STORE_URL SAGA_NAME [KILL_AFTER]
With KILL_AFTER = k, it SIGKILLs itself right after its k-th commit of a saga event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from tidings.app import App
from tidings.runtime.settling import COMMITTED
from tidings.testing.conformance.sagas import fulfilment


class KillAfterCommits(logging.Handler):
    def __init__(self, group: str, commits: int) -> None:
        super().__init__()
        self.group, self.left = group, commits

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == COMMITTED and isinstance(record.args, tuple) and record.args[0] == self.group:
            self.left -= 1
            if self.left == 0:
                os.kill(os.getpid(), signal.SIGKILL)


async def main(url: str, name: str, kill_after: int) -> None:
    app = App("saga-runner", store=url)
    app.add_saga(fulfilment(name))
    if kill_after:
        logger = logging.getLogger("tidings")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(KillAfterCommits(f"tidings:saga:{name}", kill_after))
    async with app, app.running(lease_ttl=0.6, poll=0.05):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
