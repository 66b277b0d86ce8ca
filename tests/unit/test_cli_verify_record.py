"""``tidings verify --record FILE`` / ``--against FILE`` against real SQLite files."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from tests.unit.test_cli import CliOrderPlaced, CliOrderShipped, CliPaymentReceived, append_at, tidings_cli
from tidings.testing.raw import rechain


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/x.db"
    append_at(
        url,
        [
            ("order-1", CliOrderPlaced(order_id="1", total=5), None),
            ("order-2", CliOrderPlaced(order_id="2", total=7), None),
            ("order-2", CliOrderShipped(order_id="2"), None),
            ("payment-2", CliPaymentReceived(order_id="2", amount=7), None),
        ],
    )
    return url


def _edit_and_rechain(url: str, stream: str, version: int) -> None:
    """Alter one event's data and recompute the chain and the head, as anyone with SQL access can."""
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        (data,) = connection.execute(
            "SELECT data FROM tidings_events WHERE stream = ? AND version = ?", (stream, version)
        ).fetchone()
        altered = bytes(data).replace(b'"total":7', b'"total":700')
        assert altered != bytes(data)
        connection.execute(
            "UPDATE tidings_events SET data = ? WHERE stream = ? AND version = ?", (altered, stream, version)
        )
    connection.close()
    rechain(url, stream)


def test_record_then_against_catches_a_rechained_edit(store: str, tmp_path: Path) -> None:
    record = tmp_path / "heads.json"
    recorded = tidings_cli("verify", "--store", store, "--record", str(record))
    assert recorded.exit_code == 0, recorded.output
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert "recorded 3 stream heads" in recorded.stderr
    assert tidings_cli("verify", "--store", store, "--against", str(record)).exit_code == 0

    _edit_and_rechain(store, "order-2", 1)
    assert tidings_cli("verify", "--store", store).exit_code == 0  # the unkeyed chain holds
    before = record.read_bytes()
    result = tidings_cli("verify", "--store", store, "--against", str(record), "--record", str(record))
    assert result.exit_code == 1
    assert "order-2" in result.stdout
    assert "verified record" in result.stdout
    assert "1 problem found" in result.stdout
    assert record.read_bytes() == before


def test_a_moved_partition_fails_plain_verify(store: str) -> None:
    with sqlite3.connect(store.removeprefix("sqlite:///")) as connection:
        connection.execute("UPDATE tidings_events SET partition = 99 WHERE stream = 'payment-2'")
    connection.close()
    result = tidings_cli("verify", "--store", store)
    assert result.exit_code == 1
    assert "payment-2" in result.stdout
    assert "partition" in result.stdout


def test_a_missing_record_is_one_line_and_exit_2(store: str, tmp_path: Path) -> None:
    result = tidings_cli("verify", "--store", store, "--against", str(tmp_path / "nowhere.json"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot read verified record" in result.stderr


def test_a_corrupt_record_is_one_line_and_exit_2(store: str, tmp_path: Path) -> None:
    record = tmp_path / "heads.json"
    assert tidings_cli("verify", "--store", store, "--record", str(record)).exit_code == 0
    record.write_bytes(record.read_bytes().replace(b'"partitions": ', b'"partitions": 1'))
    damaged = tidings_cli("verify", "--store", store, "--against", str(record))
    assert damaged.exit_code == 2
    assert len(damaged.stderr.strip().splitlines()) == 1
    assert "damaged" in damaged.stderr
    record.write_bytes(b"\x00garbage")
    garbage = tidings_cli("verify", "--store", store, "--against", str(record))
    assert garbage.exit_code == 2
    assert len(garbage.stderr.strip().splitlines()) == 1
    assert "not a readable verified record" in garbage.stderr


def test_an_unwritable_record_is_one_line_and_exit_2(store: str, tmp_path: Path) -> None:
    result = tidings_cli("verify", "--store", store, "--record", str(tmp_path / "no-dir" / "heads.json"))
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot write verified record" in result.stderr
