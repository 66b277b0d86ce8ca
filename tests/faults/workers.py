"""Starting consumer worker processes and reading what they did, for the fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec

from tidings.app import App
from tidings.testing.conformance.events import Pong

ROOT = Path(__file__).resolve().parents[2]


def start_worker(
    url: str, group: str, *, fault: str = "", at: int = -1, echo: bool = False
) -> subprocess.Popen[bytes]:
    """``tests.faults.consumer_worker`` in a new process; it inherits ``TIDINGS_BUS``. With
    ``echo``, its handler also publishes a ``Pong`` per event at once (``ctx.publish``)."""
    env = {
        **os.environ,
        "TIDINGS_FAULT_POINT": fault,
        "TIDINGS_FAULT_AT": str(at),
        "TIDINGS_WORKER_ECHO": "1" if echo else "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.consumer_worker", url, group],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def effects(app: App, keys: int) -> dict[str, list[int]]:
    """Per key, the ``n`` of every event whose effect was committed, in commit order."""
    found = {}
    for key in range(keys):
        raw = await app.store.get_document("effects", f"key-{key}")
        found[f"key-{key}"] = [] if raw is None else msgspec.json.decode(raw, type=list[int])
    return found


async def echoes(app: App, keys: int) -> dict[str, list[int]]:
    """Per key, the ``n`` of every ``Pong`` its events' handler published, in log order."""
    found = {}
    for key in range(keys):
        stored = await app.read_stream(f"echo-key-{key}")
        found[f"key-{key}"] = [s.event.n for s in stored if isinstance(s.event, Pong)]
    return found


async def progress(app: App, keys: int) -> int:
    return sum(len(done) for done in (await effects(app, keys)).values())
