"""The shop demo, end to end: four service processes, a saga per order, every check holding;
embedded (as ``make demo`` runs it) and distributed (PostgreSQL and JetStream)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tidings.testing.plugin import fresh_bus_url, fresh_postgres_database

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (
    "every order ended completed or compensated",
    "stock is never negative",
    "reserved - released = shipped",
    "every charge of a cancelled order refunded exactly once",
    "no completed order refunded",
)


def _demo(tmp_path: Path, *args: str) -> str:
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
