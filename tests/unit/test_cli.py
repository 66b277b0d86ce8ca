"""The ``tidings`` command line against real SQLite files."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner, Result

import tidings
from tidings.cli import app
from tidings.domain.envelope import from_structured

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class CliOrderPlaced(tidings.Event, topic="clitest.order.placed", type="CliTestOrderPlaced"):
    order_id: str
    total: int


class CliOrderShipped(tidings.Event, topic="clitest.order.shipped", type="CliTestOrderShipped"):
    order_id: str
    note: str = ""


class CliPaymentReceived(tidings.Event, topic="clitest.payment.received", type="CliTestPaymentReceived"):
    order_id: str
    amount: int


@pytest.fixture(autouse=True)
def _no_store_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDINGS_STORE", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)


def append_at(url: str, entries: Sequence[tuple[str, tidings.Event, datetime | None]]) -> None:
    """Append events stamped with the given times (``None``: now, as ``App.append`` does)."""

    async def append() -> None:
        async with tidings.App("cli-test", store=url) as shop:
            for stream, event, time in entries:
                envelope = shop.codec.encode(event, subject=stream, time=time)
                await shop.store.append(stream, [envelope])

    asyncio.run(append())


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A store with two orders and a payment, one minute apart from T0 (order-1 now)."""
    url = f"sqlite:///{tmp_path}/x.db"
    append_at(
        url,
        [
            ("order-1", CliOrderPlaced(order_id="1", total=5), None),
            ("order-2", CliOrderPlaced(order_id="2", total=7), T0 + timedelta(minutes=1)),
            ("order-2", CliOrderShipped(order_id="2", note="[bold]fast[/]"), T0 + timedelta(minutes=2)),
            ("payment-2", CliPaymentReceived(order_id="2", amount=7), T0 + timedelta(minutes=3)),
        ],
    )
    return url


def tidings_cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def json_lines(text: str) -> list[tidings.Envelope]:
    return [from_structured(line.encode()) for line in text.splitlines() if line.strip()]


# -- streams ---------------------------------------------------------------------------------


def test_streams_lists_what_was_appended(store: str) -> None:
    result = tidings_cli("streams", "--store", store)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert rows == {"order-1": "1", "order-2": "2", "payment-2": "1"}
    assert "2024-05-01T12:01:00.000000Z" in result.stdout
    assert "2024-05-01T12:02:00.000000Z" in result.stdout


def test_streams_prefix_and_limit(store: str) -> None:
    result = tidings_cli("streams", "--store", store, "--prefix", "order-", "--limit", "1")
    assert result.exit_code == 0
    assert "order-1" in result.stdout
    assert "order-2" not in result.stdout
    assert "payment-2" not in result.stdout
    empty = tidings_cli("streams", "--store", store, "--prefix", "invoice-")
    assert empty.exit_code == 0
    assert empty.stdout == ""
    assert "no streams" in empty.stderr


def test_store_comes_from_the_environment(store: str) -> None:
    result = tidings_cli("streams", env={"TIDINGS_STORE": store})
    assert result.exit_code == 0
    assert "payment-2" in result.stdout


# -- events ----------------------------------------------------------------------------------


def test_events_shows_the_stream(store: str) -> None:
    result = tidings_cli("events", "order-2", "--store", store)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["version", "position", "time", "type", "topic", "data"]
    assert lines[1].split()[:6] == [
        "1",
        "2",
        "2024-05-01T12:01:00.000000Z",
        "CliTestOrderPlaced",
        "clitest.order.placed",
        '{"order_id":"2","total":7}',
    ]
    # Stored text is shown as it is, never interpreted as Rich markup.
    assert '{"order_id":"2","note":"[bold]fast[/]"}' in lines[2]


PLACED, SHIPPED = "CliTestOrderPlaced", "CliTestOrderShipped"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], [PLACED, SHIPPED]),
        (["--at", "2024-05-01T12:01:30"], [PLACED]),  # an earlier time; naive means UTC
        (["--at", "2024-05-01T14:01:30+02:00"], [PLACED]),
        (["--backwards"], [SHIPPED, PLACED]),
        (["--from-version", "2"], [SHIPPED]),
        (["--to-version", "1"], [PLACED]),
        (["--backwards", "--limit", "1"], [SHIPPED]),
    ],
)
def test_events_selection(store: str, options: list[str], expected: list[str]) -> None:
    result = tidings_cli("events", "order-2", "--store", store, "--json", *options)
    assert result.exit_code == 0, result.output
    assert [envelope.type for envelope in json_lines(result.stdout)] == expected


def test_events_json_is_cloudevents_per_line(store: str) -> None:
    result = tidings_cli("events", "order-2", "--store", store, "--json")
    first, second = (msgspec.json.decode(line) for line in result.stdout.splitlines())
    assert first["specversion"] == "1.0"
    assert first["subject"] == "order-2"
    assert first["data"] == {"order_id": "2", "total": 7}
    assert second["topic"] == "clitest.order.shipped"


def test_events_none_at_that_time(store: str) -> None:
    result = tidings_cli("events", "order-2", "--store", store, "--at", "2024-05-01")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no events in stream 'order-2' at 2024-05-01T00:00:00+00:00" in result.stderr


@pytest.mark.parametrize("json", [[], ["--json"]])
def test_events_of_an_unknown_stream_is_an_error(store: str, json: list[str]) -> None:
    result = tidings_cli("events", "no-such-stream", "--store", store, *json)
    assert result.exit_code == 2
    assert "no stream 'no-such-stream' (see `tidings streams`)" in _single_error_line(result)


@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--at", "yesterday", "ISO-8601"),
        ("--limit", "0", "--limit"),
        ("--to-version", str(2**64), "--to-version"),
    ],
)
def test_events_usage_errors(store: str, option: str, value: str, complaint: str) -> None:
    result = tidings_cli("events", "order-2", "--store", store, option, value)
    assert result.exit_code == 2
    assert complaint in result.output


def test_control_characters_cannot_reach_the_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    append_at(url, [("evil", CliOrderShipped(order_id="1", note="\x1b[2J\u009b31m"), T0)])
    for command in (["events", "evil"], ["log"]):
        result = tidings_cli(*command, "--store", url)
        assert result.exit_code == 0
        assert "\x1b" not in result.stdout
        assert "\u009b" not in result.stdout
        assert "\\u009b31m" in result.stdout


# -- log -------------------------------------------------------------------------------------


def test_log_shows_everything_in_order(store: str) -> None:
    result = tidings_cli("log", "--store", store)
    assert result.exit_code == 0
    positions = [int(line.split()[0]) for line in result.stdout.splitlines()]
    assert positions == [1, 2, 3, 4]
    assert "payment-2 v1" in result.stdout


def test_log_filters_by_pattern(store: str) -> None:
    orders = tidings_cli("log", "--store", store, "--topic", "clitest.order.*", "--json")
    assert orders.exit_code == 0
    assert [e.topic for e in json_lines(orders.stdout)] == [
        "clitest.order.placed",
        "clitest.order.placed",
        "clitest.order.shipped",
    ]
    placed = tidings_cli("log", "--store", store, "--topic", "*.*.placed", "--after", "1", "--json")
    assert [e.subject for e in json_lines(placed.stdout)] == ["order-2"]
    everything = tidings_cli("log", "--store", store, "--topic", "clitest.>", "--limit", "2", "--json")
    assert len(json_lines(everything.stdout)) == 2
    nothing = tidings_cli("log", "--store", store, "--topic", "billing.>")
    assert nothing.exit_code == 0
    assert nothing.stdout == ""
    assert "no events matching 'billing.>'" in nothing.stderr


def test_log_invalid_pattern_is_a_friendly_error(store: str) -> None:
    result = tidings_cli("log", "--store", store, "--topic", "clitest..order")
    assert result.exit_code == 2
    assert "'clitest..order': empty token" in _single_error_line(result)


@pytest.mark.parametrize(
    ("pattern", "backlog"),
    [(">", ["order-1", "order-2", "order-2", "payment-2"]), ("clitest.order.placed", ["order-1", "order-2"])],
)
def test_log_follow_prints_new_events_until_ctrl_c(store: str, pattern: str, backlog: list[str]) -> None:
    command = [sys.executable, "-m", "tidings.cli", "log", "--store", store, "--follow", "--json"]
    command += ["--topic", pattern]
    environment = {k: v for k, v in os.environ.items() if k != "TIDINGS_STORE"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment, text=True
    ) as follower:
        assert follower.stdout is not None
        assert follower.stderr is not None
        seen = [from_structured(follower.stdout.readline().encode()) for _ in backlog]
        assert [envelope.subject for envelope in seen] == backlog
        append_at(store, [("order-3", CliOrderPlaced(order_id="3", total=9), T0 + timedelta(hours=1))])
        assert from_structured(follower.stdout.readline().encode()).subject == "order-3"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
        assert follower.stderr.read() == ""


# -- verify ----------------------------------------------------------------------------------


def test_verify_ok(store: str) -> None:
    result = tidings_cli("verify", "--store", store)
    assert result.exit_code == 0, result.output
    assert "checked 3 streams, 4 events" in result.stdout
    assert result.stdout.strip().endswith("ok")


def _tamper(url: str, stream: str, version: int) -> None:
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        (document,) = connection.execute(
            "SELECT data FROM tidings_events WHERE stream = ? AND version = ?", (stream, version)
        ).fetchone()
        altered = bytes(document).replace(b'"total":7', b'"total":700')
        assert altered != bytes(document)
        connection.execute(
            "UPDATE tidings_events SET data = ? WHERE stream = ? AND version = ?",
            (altered, stream, version),
        )
    connection.close()


def test_verify_finds_an_altered_event(store: str) -> None:
    _tamper(store, "order-2", 1)
    result = tidings_cli("verify", "--store", store)
    assert result.exit_code == 1
    assert "order-2" in result.stdout
    assert "hash does not match" in result.stdout
    assert "1 problem found" in result.stdout
    assert "order-1 " not in result.stdout
    # Reading the altered stream refuses, politely.
    events = tidings_cli("events", "order-2", "--store", store)
    assert events.exit_code == 2
    assert "error: " in events.stderr
    assert "order-2" in events.stderr
    assert "tidings verify" in events.stderr


# -- errors ----------------------------------------------------------------------------------


@pytest.fixture(params=["streams", "events", "log", "verify"])
def command(request: pytest.FixtureRequest) -> list[str]:
    return ["events", "order-1"] if request.param == "events" else [request.param]


def _single_error_line(result: Result) -> str:
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_file_is_not_created(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "nowhere" / "x.db"
    result = tidings_cli(*command, "--store", f"sqlite:///{path}")
    assert result.exit_code == 2
    assert "no tidings store at" in _single_error_line(result)
    assert not path.exists()
    assert not path.parent.exists()


def test_default_store_is_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = tidings_cli("streams")
    assert result.exit_code == 2
    assert "sqlite:///.tidings/tidings.db" in _single_error_line(result)
    assert list(tmp_path.iterdir()) == []


def test_unknown_scheme(command: list[str]) -> None:
    result = tidings_cli(*command, "--store", "foo://x")
    assert result.exit_code == 2
    assert "unknown store URL scheme 'foo'" in _single_error_line(result)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgresql://u:secret@127.0.0.1:1/db", "PostgreSQL at postgresql://u:***@127.0.0.1:1/db"),
        ("sqlite://u:secret@host/x.db", "not a SQLite URL: 'sqlite://u:***@host/x.db'"),
    ],
)
def test_password_never_shows(command: list[str], url: str, complaint: str) -> None:
    result = tidings_cli(*command, "--store", url)
    assert result.exit_code == 2
    assert complaint in _single_error_line(result)
    assert "secret" not in result.output


def test_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"this is not a database at all, just some text. " * 100)
    streams = tidings_cli("streams", "--store", f"sqlite:///{path}")
    assert streams.exit_code == 2
    assert "damaged" in _single_error_line(streams)
    verify = tidings_cli("verify", "--store", f"sqlite:///{path}")
    assert verify.exit_code == 1
    assert "damaged" in _single_error_line(verify)
    # The other commands advise running verify; verify itself is what is running.
    assert "tidings verify" in streams.stderr
    assert "tidings verify" not in verify.stderr


def test_version() -> None:
    result = tidings_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("tidings ")
