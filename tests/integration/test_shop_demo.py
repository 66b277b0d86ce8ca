"""The shop demo, end to end: four service processes, a saga per order, every check holding;
embedded (as ``make demo`` runs it), distributed (PostgreSQL and JetStream), and encrypted."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import tidings
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


def _demo(tmp_path: Path, *args: str, env: dict[str, str] | None = None, orders: int = 80) -> str:
    done = _run_demo(tmp_path, *args, env=env, orders=orders)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _run_demo(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, orders: int = 80
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.shop.demo",
            "--orders",
            str(orders),
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


def _tidings(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: the script beside this interpreter."""
    script = Path(sys.executable).parent / "tidings"
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _printed_commands(output: str, prefix: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith(f"  {prefix} ")]


def _paste(command: str, cwd: Path) -> None:
    """Run a printed command exactly as printed, through a shell, as a user pasting it."""
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=60)  # noqa: S602
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


def _assert_report(output: str) -> None:
    for check in CHECKS:
        assert f"✓ {check}" in output, output[-3000:]
    assert "completed" in output and "compensated" in output
    assert "The trace of compensated" in output and "shop.PaymentRefunded" in output


@pytest.mark.timeout(240)
def test_the_demo_runs_embedded_and_its_printed_commands_run_when_pasted(tmp_path: Path) -> None:
    """At 80 columns each command is still one line, runnable as printed (the script's path,
    the store URL quoted); the output says where the services log."""
    store = f"sqlite:///{tmp_path / 'shop db?synchronous=NORMAL'}"  # a space and a query: quoting
    output = _demo(tmp_path, "--store", store, env={**os.environ, "COLUMNS": "80"})
    _assert_report(output)
    prefix = os.path.relpath(Path(sys.executable).parent / "tidings", ROOT)
    commands = _printed_commands(output, prefix)
    assert len(commands) >= 4, output[-3000:]
    assert any(" trace " in command for command in commands), commands
    for command in commands:
        assert command.endswith(f"--store {shlex.quote(store)}"), command
        _paste(command, ROOT)
    assert f"logged to {tmp_path / 'logs'}/" in output
    assert f"logging to {tmp_path / 'logs'}/<service>.log" in output


@pytest.mark.timeout(240)
def test_after_tidings_demo_the_cli_reads_its_store_by_default(tmp_path: Path) -> None:
    """`tidings demo` writes the CLI's default store: its printed commands carry no --store, and
    the README's `tidings streams` works right after it (from where the demo ran)."""
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    done = _tidings("demo", "--orders", "40", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / ".tidings" / "tidings.db").exists()
    commands = _printed_commands(done.stdout, shlex.quote(str(Path(sys.executable).parent / "tidings")))
    assert len(commands) >= 4, done.stdout[-3000:]
    for command in commands:
        assert "--store" not in command, command
        _paste(command, tmp_path)
    streams = _tidings("streams", cwd=tmp_path, env=env)
    assert streams.returncode == 0 and "stock-kettle" in streams.stdout, streams.stderr
    # The README's commands, pasted where `make demo` ran: `.venv/bin/tidings` is the CLI there.
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "tidings").symlink_to(Path(sys.executable).parent / "tidings")
    readme = _readme_commands()
    assert len(readme) >= 8
    for command in readme:
        _paste(command, tmp_path)


def _readme_commands() -> list[str]:
    """The lines of the README's shell block under "The command line", comments cut off."""
    section = (ROOT / "README.md").read_text().split("### The command line", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(240)
def test_the_distributed_demo_runs_twice_on_one_database_and_one_nats_server(
    tmp_path: Path, postgres_url: str, nats_url: str
) -> None:
    """The second run replaces the first's store (its own) and its JetStream streams; each
    store has streams of its own, so nothing of the first run is met or left behind."""
    with fresh_postgres_database(postgres_url) as store:
        for _ in range(2):
            _assert_report(_demo(tmp_path, "--store", store, "--bus", nats_url, orders=40))
        assert len(asyncio.run(_shop_streams(nats_url))) == 8  # the first run's streams are gone


async def _shop_streams(nats_url: str) -> list[str]:
    import nats

    client = await nats.connect(nats_url)
    try:
        return [
            info.config.name or ""
            for info in await client.jetstream().streams_info()
            if (info.config.name or "").startswith("SHOP_")
        ]
    finally:
        await client.close()


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
    output = _demo(tmp_path, "--store", f"sqlite:///{store}", env=env)
    _assert_report(output)
    # Orders go in at the pace the services keep: none times out for want of a reply, and the
    # summary names the causes of the compensations.
    assert "payment declined" in output and "no reply in time" not in output, output[-3000:]
    datas = raw_execute(f"sqlite:///{store}", "SELECT data FROM tidings_events WHERE topic LIKE ?", "order.%")
    assert datas and all(bytes(data).startswith(b"tds1") for (data,) in datas)


@pytest.mark.timeout(180)
def test_the_summary_says_why_steps_timed_out(tmp_path: Path) -> None:
    """Steps given too little time: the summary says that the services fell behind their step
    timeout, and how to give them longer. The shipping service stalls on every order for longer
    than the timeout (and no command expires first): however fast the machine, its step times out."""
    env = {
        **os.environ,
        "SHOP_STEP_TIMEOUT_SECONDS": "0.3",
        "SHOP_SHIPPING_STALL_RATE": "1",
        "SHOP_SHIPPING_STALL_SECONDS": "1.0",
        "SHOP_SHIPPING_DEADLINE_SECONDS": "60",
    }
    output = _run_demo(tmp_path, "--store", f"sqlite:///{tmp_path / 'shop.db'}", env=env, orders=20).stdout
    assert "no reply in time (ship)" in output, output[-3000:]
    assert "a step got no reply within its 0.3 s timeout: the services fell behind" in " ".join(
        output.split()
    )
    assert "SHOP_STEP_TIMEOUT_SECONDS=10" in output


def _mark_store(url: str, *, runs: int, then: tidings.Event | None) -> None:
    from examples.shop.demo_contents import MARK_STREAM, DemoRunEnded, DemoStoreMade

    async def work() -> None:
        async with tidings.App("someone", store=url) as app:
            if runs:
                await app.append(MARK_STREAM, DemoStoreMade(), expected_version=tidings.NO_STREAM)
                await app.append(MARK_STREAM, DemoRunEnded(orders=1))
            if then is not None:
                await app.append("invoice-1", then)

    asyncio.run(work())


class InvoiceSent(tidings.Event, topic="billing.invoice_sent", type="tests.demo.InvoiceSent"):
    number: int


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("another store", "holds a store the demo did not make (streams invoice-1)"),
        ("added to after the demo", "holds streams the demo does not write (invoice-1)"),
        ("not a store", "is not a tidings store"),
    ],
)
def test_tidings_demo_refuses_a_store_it_did_not_make_and_leaves_it_untouched(
    tmp_path: Path, kind: str, said: str
) -> None:
    path = tmp_path / "mine.db"
    url = f"sqlite:///{path}"
    if kind == "not a store":
        path.write_bytes(b"my notes, not a database\n" * 200)
    else:
        _mark_store(url, runs=int(kind != "another store"), then=InvoiceSent(number=7))
    before = {file.name: file.read_bytes() for file in tmp_path.iterdir()}
    done = _tidings("demo", "--store", url, "--orders", "5")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "give it another --store" in lines[0], done.stderr
    assert {file.name: file.read_bytes() for file in tmp_path.iterdir()} == before
