"""The shop demo's store: an interrupted run's store is still the demo's, the shell's
TIDINGS_STORE and TIDINGS_BUS are not the demo's business, only a place holding nothing at
all is taken as new, a store holding anything another App wrote is refused, one demo at a time
runs on a store, and replacing the demo's store on PostgreSQL leaves the database's other
tables and views alone."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from examples.shop.demo import prepare
from examples.shop.demo_contents import order_id
from examples.shop.demo_lock import exclusive, lock_path
from examples.shop.demo_store import Found, claim, sqlite_path
from examples.shop.events import OrderPlaced

import tidings
from tidings.adapters.registry import open_store
from tidings.errors import ConfigurationError
from tidings.ports import DataKeyRecord
from tidings.testing.plugin import fresh_postgres_database
from tidings.testing.raw import raw_execute

ROOT = Path(__file__).resolve().parents[2]


def _tidings_demo(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "tidings"
    return subprocess.run(
        [str(script), "demo", *args],
        cwd=cwd,
        env={**(env or os.environ), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(folder.iterdir()) if file.is_file()}


def _claim(url: str) -> Found:
    """What one demo run does first: hold the store, and judge (and maybe replace) it."""
    with exclusive(url, sqlite_path(url)) as held:
        return claim(url, None, held)


@pytest.mark.timeout(120)
def test_a_store_the_demo_prepared_and_never_ended_is_replaced_by_the_next_claim(tmp_path: Path) -> None:
    """A run that died after ``prepare`` (its store has no end mark) left the demo's store: the
    next run takes it and starts afresh, on a new log."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    _claim(url)
    first = asyncio.run(prepare(url))
    assert _claim(url).state == "demo"
    assert not (tmp_path / "demo.db").exists()
    assert asyncio.run(prepare(url)) != first


@pytest.mark.timeout(120)
def test_an_interrupted_demo_on_postgresql_is_replaced_by_the_next_claim(postgres_url: str) -> None:
    with fresh_postgres_database(postgres_url) as url:
        assert _claim(url).state == "new"
        first = asyncio.run(prepare(url))
        assert _claim(url).state == "demo"
        assert raw_execute(url, "SELECT count(*) FROM tidings_events") == [(0,)]
        assert raw_execute(url, "SELECT count(*) FROM tidings_meta") == [(0,)]
        assert asyncio.run(prepare(url)) != first


def _streams(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            return [name for (name,) in connection.execute("SELECT stream FROM tidings_streams")]
    except sqlite3.Error:
        return []


@pytest.mark.timeout(240)
def test_a_demo_killed_mid_run_leaves_a_store_the_next_run_replaces(tmp_path: Path) -> None:
    """The demo and its services killed (SIGKILL) while orders are in their sagas: no end mark,
    sagas half done. Once the killed services' leases ran out, the next run replaces the store."""
    path = tmp_path / "demo.db"
    url = f"sqlite:///{path}"
    logs = str(tmp_path / "logs")
    demo = subprocess.Popen(
        [sys.executable, "-m", "examples.shop.demo", "--store", url, "--orders", "2000", "--logs", logs],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the demo and its services, killed at once
    )
    try:
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up and not any(s.startswith("saga-") for s in _streams(path)):
            assert demo.poll() is None, "the demo ended before it was killed"
            time.sleep(0.2)
    finally:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    assert any(stream.startswith("saga-") for stream in _streams(path))
    time.sleep(4)  # the killed services' leases (3 s) run out
    done = _tidings_demo("--store", url, "--orders", "10", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "order-0010" not in _streams(path)  # the killed run's orders are gone with its store


def _foreign_store(url: str) -> None:
    async def work() -> None:
        async with tidings.App("billing", store=url) as app:
            await app.append("invoice-1", InvoiceSent(number=1))

    asyncio.run(work())


class InvoiceSent(tidings.Event, topic="billing.invoice_sent", type="tests.demo_store.InvoiceSent"):
    number: int


@pytest.mark.timeout(180)
@pytest.mark.parametrize("entry", ["tidings demo", "python -m examples.shop.demo"])
def test_the_demo_ignores_the_shells_tidings_store_and_bus(tmp_path: Path, entry: str) -> None:
    """A shell set up for a real service: the demo runs on its own default store, without a bus,
    and the service's store is byte for byte as it was."""
    service = tmp_path / "service"
    service.mkdir()
    _foreign_store(f"sqlite:///{service / 'billing.db'}")
    before = _files(service)
    env = {
        **os.environ,
        "TIDINGS_STORE": f"sqlite:///{service / 'billing.db'}",
        "TIDINGS_BUS": "nats://127.0.0.1:9",  # nothing listens there: using it would fail the run
        "PYTHONPATH": str(ROOT),
    }
    here = tmp_path / "here"
    here.mkdir()
    if entry == "tidings demo":
        done = _tidings_demo("--orders", "10", cwd=here, env=env)
    else:
        done = subprocess.run(
            [sys.executable, "-m", "examples.shop.demo", "--orders", "10"],
            cwd=here,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _files(service) == before
    assert "stock-kettle" in _streams(here / ".tidings" / "tidings.db")


async def _put_document(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.put_document("notes", "n-1", b"keep me")
    finally:
        await store.close()


async def _add_key(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        record = DataKeyRecord(
            scope="customer-1",
            version=1,
            master_version=1,
            wrapped=b"\0" * 40,
            uses=0,
            created=datetime.now(UTC),
        )
        async with store.transaction() as tx:
            await tx.key_store.add_data_key(record)
    finally:
        await store.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("what", "put"), [("tidings_documents", _put_document), ("tidings_keys", _add_key)])
def test_a_store_without_events_but_not_empty_is_refused_and_left_unchanged(
    tmp_path: Path, what: str, put: Callable[[str], Coroutine[object, object, None]]
) -> None:
    path = tmp_path / "mine.db"
    url = f"sqlite:///{path}"
    asyncio.run(put(url))
    before = _files(tmp_path)
    done = _tidings_demo("--store", url, "--orders", "5", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"holds no events but is not empty (rows or tables: {what})" in lines[0]
    assert f"rm -f {path} {path}-wal {path}-shm" in lines[0]
    assert _files(tmp_path) == before


@pytest.mark.timeout(120)
def test_a_store_with_a_document_is_refused_by_claim_on_postgresql(postgres_url: str) -> None:
    with fresh_postgres_database(postgres_url) as url:
        asyncio.run(_put_document(url))
        with pytest.raises(ConfigurationError, match="holds no events but is not empty"):
            _claim(url)
        assert raw_execute(url, "SELECT value FROM tidings_documents") == [(b"keep me",)]


def _demo_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    _claim(url)
    asyncio.run(prepare(url))
    return url


async def _append_to_first_order(url: str, source: str, event: tidings.Event) -> None:
    async with tidings.App(source, store=url) as app:
        await app.append(order_id(1), event)


_ORDER = OrderPlaced(order_id=order_id(1), customer="c-1", sku="kettle", quantity=1, amount=900)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("source", "event", "said"),
    [
        ("someone-else", _ORDER, "holds an event from 'someone-else' in order-0001 at position"),
        (
            "shop-demo",
            InvoiceSent(number=1),
            "holds an event of type 'tests.demo_store.InvoiceSent' in order-0001",
        ),
    ],
)
def test_a_demo_store_with_an_event_the_demo_does_not_write_is_refused_and_left_unchanged(
    tmp_path: Path, source: str, event: tidings.Event, said: str
) -> None:
    """An App that is not the demo's (or an event type the demo has not) in a stream the demo
    writes: the store holds someone else's data, and the demo does not delete it."""
    url = _demo_store(tmp_path)
    asyncio.run(_append_to_first_order(url, source, event))
    before = _files(tmp_path)
    done = _tidings_demo("--store", url, "--orders", "5", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "give it another --store" in lines[0], done.stderr
    assert _files(tmp_path) == before


async def _put_report(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.put_document("order-report", order_id(1), b"a user's projection")
    finally:
        await store.close()


async def _set_projection_checkpoint(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        async with store.transaction() as tx:
            await tx.set_checkpoint("projection:order-report", 3)
    finally:
        await store.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("put", "said"),
    [
        (_put_report, "the document order-report/order-0001"),
        (_set_projection_checkpoint, "the checkpoint projection:order-report"),
    ],
)
def test_a_demo_store_holding_what_another_projection_wrote_is_refused_and_left_unchanged(
    tmp_path: Path, put: Callable[[str], Coroutine[object, object, None]], said: str
) -> None:
    url = _demo_store(tmp_path)
    asyncio.run(put(url))
    before = _files(tmp_path)
    with pytest.raises(ConfigurationError, match="holds what the demo does not write") as refused:
        _claim(url)
    assert said in str(refused.value)
    assert _files(tmp_path) == before


@pytest.mark.timeout(120)
def test_a_second_demo_on_a_store_a_demo_holds_is_refused(tmp_path: Path) -> None:
    """The first demo holds its store from judging it to its end: a second one started meanwhile
    (here right after the first prepared it, before any service leased anything) neither
    judges nor deletes it."""
    path = tmp_path / "demo.db"
    url = f"sqlite:///{path}"
    with exclusive(url, path) as held:
        claim(url, None, held)
        asyncio.run(prepare(url))
        before = path.read_bytes()
        with pytest.raises(ConfigurationError, match="another demo is running on this store"):
            _claim(url)
        done = _tidings_demo("--store", url, "--orders", "5", cwd=tmp_path)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "another demo is running on this store" in lines[0], done.stderr
        assert path.read_bytes() == before
    assert not lock_path(path).exists()
    assert _claim(url).state == "demo"  # the first run ended: the next one takes the store


@pytest.mark.timeout(120)
def test_a_second_demo_on_postgresql_is_refused(postgres_url: str) -> None:
    with fresh_postgres_database(postgres_url) as url, exclusive(url, None) as held:
        claim(url, None, held)
        asyncio.run(prepare(url))
        with pytest.raises(ConfigurationError, match="another demo is running on this store"):
            _claim(url)
        assert raw_execute(url, "SELECT count(*) FROM tidings_events")[0][0] > 0


@pytest.mark.timeout(120)
def test_replacing_the_demos_store_on_postgresql_leaves_other_tables_and_views(postgres_url: str) -> None:
    """A table of the user's that begins with ``tidings_`` and a view over the demo's events are
    not the demo's store: they are there after the replacement, and the view shows the new run."""
    with fresh_postgres_database(postgres_url) as url:
        _claim(url)
        first = asyncio.run(prepare(url))
        raw_execute(url, "CREATE TABLE tidings_reports (id INTEGER PRIMARY KEY, line TEXT)")
        raw_execute(url, "INSERT INTO tidings_reports VALUES (1, 'keep me')")
        raw_execute(url, "CREATE VIEW order_events AS SELECT position, stream FROM tidings_events")
        assert _claim(url).state == "demo"
        assert raw_execute(url, "SELECT line FROM tidings_reports") == [("keep me",)]
        assert raw_execute(url, "SELECT count(*) FROM order_events") == [(0,)]
        assert asyncio.run(prepare(url)) != first
        assert raw_execute(url, "SELECT count(*) FROM order_events")[0][0] > 0


@pytest.mark.timeout(120)
def test_a_demo_store_another_table_refers_to_on_postgresql_is_refused(postgres_url: str) -> None:
    """A user's table with a foreign key on the demo's events: emptying the store would break it
    (or, with CASCADE, empty it too), so the store is refused untouched."""
    with fresh_postgres_database(postgres_url) as url:
        _claim(url)
        asyncio.run(prepare(url))
        raw_execute(url, "CREATE TABLE audit_notes (position BIGINT REFERENCES tidings_events (position))")
        raw_execute(url, "INSERT INTO audit_notes SELECT min(position) FROM tidings_events")
        events = raw_execute(url, "SELECT count(*) FROM tidings_events")
        with pytest.raises(ConfigurationError, match="a foreign key of audit_notes on tidings_events"):
            _claim(url)
        assert raw_execute(url, "SELECT count(*) FROM tidings_events") == events
        assert raw_execute(url, "SELECT count(*) FROM audit_notes") == [(1,)]
