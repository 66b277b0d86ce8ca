"""The store under killed processes, concurrent processes, damaged files and bad URLs."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tidings import Context
from tidings.adapters.registry import open_store
from tidings.app import App
from tidings.domain.attributes import escape_controls
from tidings.domain.events import Erased
from tidings.errors import BackendUnavailable, ConfigurationError, IntegrityError, InvalidArgument
from tidings.runtime.encryption import Encryption
from tidings.runtime.master_key import LocalMasterKey
from tidings.testing.conformance.events import ItemAdded, items, unique
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url, fresh_postgres_database

ROOT = Path(__file__).resolve().parents[2]


def _appender(url: str, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.appender", url, prefix, str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _acknowledged(output: str) -> set[str]:
    return {line.split()[2] for line in output.splitlines() if line.startswith("ack ")}


async def test_several_processes_append_to_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    store = open_store(url)
    await store.open()  # create the schema once, so that the workers race on appends only
    workers = [_appender(url, f"shared{n % 2}", 150) for n in range(4)]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    acknowledged = set().union(*(_acknowledged(out) for out, _ in outputs))
    assert len(acknowledged) == 600
    stored = [record async for record in store.read_log()]
    assert {r.envelope.id for r in stored} == acknowledged
    assert [r.position for r in stored] == sorted({r.position for r in stored})
    report = await store.verify()
    assert report.ok and report.events == 600 and report.streams == 10
    await store.close()


async def test_nothing_acknowledged_is_lost_when_an_appender_is_killed(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    prefix = unique("killed")
    worker = _appender(store_url, prefix, 100_000)
    assert worker.stdout is not None
    acknowledged: set[str] = set()
    loop = asyncio.get_running_loop()
    while len(acknowledged) < 150:
        line = await loop.run_in_executor(None, worker.stdout.readline)
        assert line, worker.stderr.read() if worker.stderr else "appender died"
        acknowledged |= _acknowledged(line)
    os.kill(worker.pid, signal.SIGKILL)
    rest, _ = worker.communicate(timeout=30)
    acknowledged |= _acknowledged(rest)
    stored = {r.envelope.id async for r in store.read_log()}
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged events were lost"
    assert len(stored) - len(acknowledged) <= 1  # at most the append in flight at the kill
    assert (await store.verify()).ok
    # The store takes appends again at once: no lock or half-written state was left behind.
    stream = f"{prefix}-0"
    await store.append(stream, items(stream, 1), expected_version=await store.stream_version(stream))
    await store.close()


async def test_a_sqlite_file_cut_short_is_reported_not_served(tmp_path: Path) -> None:
    path = tmp_path / "cut.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    for _ in range(20):
        stream = unique("doomed")
        await store.append(stream, items(stream, 50))
    await store.close()
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    for wal in (tmp_path / "cut.db-wal", tmp_path / "cut.db-shm"):
        wal.unlink(missing_ok=True)
    damaged = open_store(f"sqlite:///{path}", create=False)

    async def inspect() -> None:
        await damaged.open()
        report = await damaged.verify()
        if not report.ok:  # reported; and the damaged log is not served either
            _ = [record async for record in damaged.read_log()]

    with pytest.raises(IntegrityError, match=r"damaged|malformed"):
        await inspect()
    await damaged.close()


async def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the events you are looking for" * 100)
    store = open_store(f"sqlite:///{path}", create=False)
    with pytest.raises(IntegrityError, match=r"notes\.db"):
        await store.open()
    await store.close()
    assert path.read_bytes().startswith(b"these are not")


async def test_a_missing_file_is_not_created_when_only_inspecting(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    store = open_store(f"sqlite:///{path}", create=False)
    with pytest.raises(BackendUnavailable, match="does not exist"):
        await store.open()
    await store.close()
    assert not path.exists()


async def test_a_new_sqlite_file_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.close()
    assert path.stat().st_mode & 0o077 == 0


def _modes(directory: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()}


async def test_the_wal_and_shm_files_are_private_too_whatever_the_umask(tmp_path: Path) -> None:
    """The policy does not bound a process that can open the file; file modes do. SQLite gives
    the -wal and -shm files the database file's mode, which tidings makes 0600."""
    path = tmp_path / "private.db"
    previous = os.umask(0)  # the most permissive: nothing masked off
    try:
        store = open_store(f"sqlite:///{path}")
        await store.open()
        try:
            await store.append("s-1", items("s-1", 1))
            files = _modes(tmp_path)  # while open: the -wal and -shm files exist
        finally:
            await store.close()
    finally:
        os.umask(previous)
    assert files == {"private.db": 0o600, "private.db-wal": 0o600, "private.db-shm": 0o600}


async def test_a_down_postgres_names_the_url_without_its_password() -> None:
    store = open_store("postgresql://alice:s3cret-pw@127.0.0.1:1/events?connect_timeout=2")
    with pytest.raises(BackendUnavailable) as caught:
        await store.open()
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "alice:***@" in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(caught.value.__cause__)


async def test_a_wrong_database_name_is_a_clear_error(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_database_here"
    store = open_store(url)
    with pytest.raises(BackendUnavailable, match="no_such_database_here"):
        await store.open()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://u:pw@h/db", "unknown store URL scheme"),
        ("sqlite://", "not a SQLite URL"),
        ("sqlite:///x.db?synchronous=SOMETIMES", "synchronous"),
        ("sqlite:///x.db?colour=blue", "unknown SQLite URL option"),
        ("postgresql://u:pw@h/db?partitions=zero", "bad option"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle) as caught:
        open_store(url)
    assert ":pw@" not in str(caught.value)


async def test_bad_stream_names_are_refused(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    for name in ("", "x" * 600, "line\nbreak", "nul\x00", "lone-\ud800"):
        with pytest.raises(InvalidArgument, match="stream name"):
            await store.append(name, items("x", 1))
    await store.close()


#: Names with DEL and C1 controls, which tidings stored before its name rule (that refused C0 only).
_OLDER_NAMES = ("del-\x7f", "c1-\x85-\x9f")


async def test_streams_named_with_del_or_c1_controls_stay_usable_on_sqlite(tmp_path: Path) -> None:
    """A store may hold streams whose names have DEL or C1 controls: they are appended to and read
    (sealed too, under their own scope), never refused as bad names."""
    await _older_names_are_usable(f"sqlite:///{tmp_path / 'older.db'}")


async def test_streams_named_with_del_or_c1_controls_stay_usable_on_postgres(postgres_url: str) -> None:
    with fresh_postgres_database(postgres_url) as url:
        await _older_names_are_usable(url)


async def test_events_of_such_streams_cross_nats(tmp_path: Path, nats_url: str) -> None:
    """The relay publishes them (the name percent-encoded), and a group handles them."""
    app = App("older-names-bus", store=f"sqlite:///{tmp_path / 'bus.db'}", bus=fresh_bus_url(nats_url))
    handled: list[tuple[str, str]] = []

    @app.subscribe("conformance.item.added", group="older-names")
    async def handle(event: ItemAdded, ctx: Context) -> None:
        handled.append((ctx.envelope.subject or "", event.cart_id))

    async with app, app.running(lease_ttl=2.0, poll=0.2):
        for name in _OLDER_NAMES:
            await app.append(name, ItemAdded(cart_id=name, sku="a"))
        await eventually(lambda: len(handled) == len(_OLDER_NAMES), within=30)
    assert handled == [(escape_controls(name), name) for name in _OLDER_NAMES]


async def _older_names_are_usable(url: str) -> None:
    encryption = Encryption(master_key=LocalMasterKey({1: os.urandom(32)}, "names"))
    async with App("older-names", store=url, encryption=encryption) as app:
        for name in _OLDER_NAMES:
            await app.append(name, ItemAdded(cart_id=name, sku="a"))
            await app.append(name, ItemAdded(cart_id=name, sku="b"), expected_version=1)
            read = [(s.stream, s.version, s.event) for s in await app.read_stream(name)]
            assert read == [
                (name, 1, ItemAdded(cart_id=name, sku="a")),
                (name, 2, ItemAdded(cart_id=name, sku="b")),
            ]
            assert await app.shred_keys(name) == 1
            assert {type(s.event) for s in await app.read_stream(name)} == {Erased}


async def test_a_value_postgresql_cannot_store_is_an_invalid_argument(postgres_url: str) -> None:
    """A NUL in text is refused by the driver: the caller's argument, never the store being down
    (which a handler retries for ever), wherever it reaches the adapter."""
    with fresh_postgres_database(postgres_url) as url:
        await _refuses_nul(url)


async def _refuses_nul(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        with pytest.raises(InvalidArgument, match="cannot store a value"):
            await store.key_store.data_keys(["scope\x00"])
        with pytest.raises(InvalidArgument, match="cannot store a value"):
            await store.read_stream("stream\x00")
        with pytest.raises(InvalidArgument, match="cannot store a value"):
            async with store.transaction() as tx:
                await tx.key_store.newest_data_key("scope\x00")
        stream = unique("after")
        await store.append(stream, items("x", 1))  # the store is as usable as before
        assert len(await store.read_stream(stream)) == 1
    finally:
        await store.close()
