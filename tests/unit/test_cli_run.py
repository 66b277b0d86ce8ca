"""``tidings run`` as a real process: its URL flags, its logging, and what its logs say."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from tidings.app import App
from tidings.errors import ConfigurationError
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]

#: A module with one subscription, whose handler logs through ``ctx.log`` and a logger of its own.
LOGGING_APP = """
import logging

from tidings.app import App
from tidings.testing.conformance.events import Ping

app = App("logger", store="sqlite:///named-in-code.db")


@app.subscribe("conformance.bus.ping", group="loggers")
async def note(event: Ping, ctx) -> None:
    logging.getLogger("user.code").info("user line for %s", event.n)
    ctx.log.info("context line for %s", event.n)
    async with ctx.unit_of_work() as uow:
        uow.put("seen", event.key, event.n)
"""

#: Two groups save one aggregate for every ping: their members keep meeting a stale version.
CONTENDED_APP = """
from tidings.errors import AggregateNotFound
from tidings.app import App
from tidings.runtime.retries import Retry
from tidings.testing.conformance.aggregates import Cart
from tidings.testing.conformance.events import Ping

app = App("contended")


def count_in(group: str) -> None:
    @app.subscribe("conformance.bus.ping", group=group, retry=Retry(attempts=200, backoff=0.001))
    async def count(event: Ping, ctx) -> None:
        async with ctx.unit_of_work() as uow:
            try:
                cart = await uow.load(Cart, "shared")
            except AggregateNotFound:
                cart = Cart("shared")
            cart.add(group)
            uow.save(cart)


count_in("left")
count_in("right")
"""


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {**env, "PYTHONPATH": str(ROOT / "src")}


def _start(tmp_path: Path, module: str, source: str, *options: str) -> subprocess.Popen[str]:
    """``tidings run module:app`` on ``source``; its stderr goes to a file (a pipe that nobody
    reads while it runs would fill up and stop it)."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    with (tmp_path / f"{module}.err").open("w") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tidings", "run", f"{module}:app", "--lease-ttl", "1", *options],
            cwd=tmp_path,
            env=_environment(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )


def _children(pid: int) -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit() and _parent_of(entry) == pid]


def _parent_of(process: Path) -> int | None:
    try:  # the fields after the command's name, which may hold spaces and parentheses
        return int((process / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _stop(runner: subprocess.Popen[str], tmp_path: Path, module: str) -> str:
    """Stop the runner (as an operator does, with SIGTERM); what it wrote on stderr."""
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=30)
    err = (tmp_path / f"{module}.err").read_text()
    assert runner.returncode == 0, err
    return err


def _json_lines(err: str) -> list[dict[str, object]]:
    """Every line on stderr is one JSON object (a line that is not fails the test)."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


async def _publish(url: str, pings: Sequence[tuple[str, int]], correlation_id: str) -> list[str]:
    async with App("publisher", store=url) as app:
        records = [
            await app.publish(Ping(key=key, n=n), key=key, correlation_id=correlation_id) for key, n in pings
        ]
    return [record.envelope.id for record in records]


def test_json_logs_carry_time_level_and_where_they_were_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'given.db'}"
    runner = _start(tmp_path, "logapp", LOGGING_APP, "--store", url, "--workers", "2", "--log-format", "json")

    async def publish_and_wait() -> str:
        (event_id,) = await _publish(url, [("k", 7)], "journey-7")
        async with App("watcher", store=url) as app:

            async def seen() -> bool:
                return await app.store.get_document("seen", "k") is not None

            await eventually(seen, within=30)

        async def both_workers_opened() -> bool:  # either may handle the event before the other opens
            return (tmp_path / "logapp.err").read_text().count('"logger": "tidings.app"') >= 2

        await eventually(both_workers_opened, within=30)
        # The workers got the URL through their environment: their command lines, which every
        # user of the machine may list, hold no store URL (it may carry a password).
        children = _children(runner.pid)
        assert len(children) == 2
        assert all(url.encode() not in (child / "cmdline").read_bytes() for child in children)
        return event_id

    try:
        event_id = asyncio.run(publish_and_wait())
    finally:
        err = _stop(runner, tmp_path, "logapp")
    lines = _json_lines(err)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines), err
    # Said at open by each worker: whether it encrypts. INFO, so the level reached the workers.
    opened = [line for line in lines if line["logger"] == "tidings.app"]
    assert len(opened) == 2, err
    assert all(line["level"] == "INFO" and line["app"] == "logger" for line in opened)
    assert all("encrypt" in str(line["message"]) for line in opened)
    assert len({line["pid"] for line in opened}) == 2
    # The handler's own lines, and its context's, carry where they were written.
    for logger, text in (("user.code", "user line for 7"), ("tidings.consumer", "context line for 7")):
        (line,) = [line for line in lines if line["logger"] == logger]
        assert line["message"] == text
        assert line["level"] == "INFO"
        assert str(line["time"]).endswith("Z")
        assert line["app"] == "logger" and line["group"] == "loggers"
        assert isinstance(line["partition"], int)
        assert line["event_id"] == event_id and line["correlation_id"] == "journey-7"
    # --store replaced the URL in the App's code.
    assert not (tmp_path / "named-in-code.db").exists()


def test_text_logs_name_level_and_context(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'given.db'}"
    runner = _start(tmp_path, "textapp", LOGGING_APP, "--store", url, "--log-level", "info")

    async def publish_and_wait() -> None:
        await _publish(url, [("k", 1)], "journey-1")
        async with App("watcher", store=url) as app:

            async def seen() -> bool:
                return await app.store.get_document("seen", "k") is not None

            await eventually(seen, within=30)

    try:
        asyncio.run(publish_and_wait())
    finally:
        err = _stop(runner, tmp_path, "textapp")
    (line,) = [line for line in err.splitlines() if "user line for 1" in line]
    assert " INFO " in line and " user.code: " in line
    assert "app=logger group=loggers partition=" in line and "correlation_id=journey-1" in line
    assert any("tidings.app: App logger: event data" in line for line in err.splitlines())


def test_contention_is_debug_not_a_warning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'contended.db'}"
    runner = _start(
        tmp_path,
        "contended",
        CONTENDED_APP,
        "--store",
        url,
        "--workers",
        "2",
        "--log-level",
        "DEBUG",
        "--log-format",
        "json",
    )
    pings = [(f"key-{n % 8}", n) for n in range(40)]

    async def publish_and_wait() -> None:
        await _publish(url, pings, "contention")
        async with App("watcher", store=url) as app:

            async def all_counted() -> bool:
                return len(await app.store.read_stream("conformance_cart-shared")) == 2 * len(pings)

            await eventually(all_counted, within=60)

    try:
        asyncio.run(publish_and_wait())
    finally:
        err = _stop(runner, tmp_path, "contended")
    lines = _json_lines(err)
    contention = [
        line
        for line in lines
        if "handling again one by one" in str(line["message"])
        or "but the append expected" in str(line["message"])
    ]
    assert contention, "no contention happened, so this test proves nothing"
    assert {line["level"] for line in contention} == {"DEBUG"}
    assert not [line for line in lines if line["level"] in ("WARNING", "ERROR", "CRITICAL")], err


@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--log-level", "loud", "error: --log-level must be one of DEBUG, INFO, WARNING, ERROR, not 'loud'"),
        ("--log-format", "xml", "error: --log-format must be one of text, json, not 'xml'"),
    ],
)
def test_bad_log_choices_are_one_line(tmp_path: Path, option: str, value: str, complaint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "run", "anything:app", option, value],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == complaint


def test_bus_flag_reaches_the_app(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'given.db'}"
    runner = _start(tmp_path, "busapp", LOGGING_APP, "--store", url, "--bus", "carrier-pigeon://loft")
    runner.wait(timeout=60)
    err = (tmp_path / "busapp.err").read_text()
    assert runner.returncode == 2
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("error: unknown bus URL scheme 'carrier-pigeon'")
    assert "Traceback" not in err


async def test_urls_are_replaced_before_open_only(tmp_path: Path) -> None:
    app = App("urls", store="sqlite:///in-code.db", bus="nats://in-code:4222")
    app.use_urls(store=f"sqlite:///{tmp_path / 'flag.db'}")
    assert app.store_url == f"sqlite:///{tmp_path / 'flag.db'}"
    assert app.bus_url == "nats://in-code:4222"  # None keeps the one it has
    app.use_urls(bus="nats://flag:4222")
    assert app.bus_url == "nats://flag:4222"
    app.bus_url = None
    async with app:
        with pytest.raises(ConfigurationError, match="its URLs are set before open"):
            app.use_urls(store="sqlite:///late.db")
