"""The shop demo, end to end: four service processes, a saga per order, every check holding;
embedded (as ``make demo`` runs it), distributed (PostgreSQL and JetStream), and encrypted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tidings.runtime.master_key import new_master_key_entry, write_key_file
from tidings.testing.plugin import fresh_bus_url, fresh_postgres_database
from tidings.testing.raw import raw_execute

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (
    "every order ended completed or compensated",
    "stock is never negative",
    "reserved - released = shipped",
    "every charge of a cancelled order refunded exactly once",
    "no completed order refunded",
)


def _demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.shop.demo",
            "--orders",
            "80",
            "--logs",
            str(tmp_path / "logs"),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _assert_report(output: str) -> None:
    for check in CHECKS:
        assert f"✓ {check}" in output, output[-3000:]
    assert "completed" in output and "compensated" in output
    assert "The trace of compensated" in output and "shop.PaymentRefunded" in output


@pytest.mark.timeout(180)
def test_the_demo_runs_embedded(tmp_path: Path) -> None:
    _assert_report(_demo(tmp_path, "--store", f"sqlite:///{tmp_path / 'shop.db'}"))


@pytest.mark.timeout(180)
def test_the_demo_runs_distributed(tmp_path: Path, postgres_url: str, nats_url: str) -> None:
    with fresh_postgres_database(postgres_url) as store:
        _assert_report(_demo(tmp_path, "--store", store, "--bus", fresh_bus_url(nats_url)))


@pytest.mark.timeout(180)
def test_the_demo_runs_encrypted(tmp_path: Path) -> None:
    """Every service process with the master key in its environment: sagas, timers, dead letters
    and the trace all work on sealed data, and the store holds none of it in the clear."""
    key_file = tmp_path / "master.key"
    write_key_file(key_file, new_master_key_entry(1) + "\n")
    env = {**os.environ, "TIDINGS_MASTER_KEY_FILE": str(key_file)}
    store = tmp_path / "shop.db"
    _assert_report(_demo(tmp_path, "--store", f"sqlite:///{store}", env=env))
    datas = raw_execute(f"sqlite:///{store}", "SELECT data FROM tidings_events WHERE topic LIKE ?", "order.%")
    assert datas and all(bytes(data).startswith(b"tds1") for (data,) in datas)
