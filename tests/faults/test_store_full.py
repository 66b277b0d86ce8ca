"""A store whose disk fills up under load: SQLite on a small filesystem of its own, PostgreSQL with
tidings' tables in a tablespace on one. Every append that the full disk refuses raises ``StoreFull``
(a tidings error that says so; nothing of it is stored), every append that returned is stored,
and when space returns the producer and the consumer group carry on by themselves: every effect
once, in order per key. Mounting a filesystem needs root; elsewhere the test is skipped (with
``CI`` set, it fails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tidings.errors import StoreFull
from tidings.testing.plugin import missing
from tidings.testing.servers import server_account

from .store_load import Producer, consuming_app, count_faults, throwaway_postgres
from .workers import effects

KEYS = 4
AFTER_FULL = 40  # rounds of publications once space has returned
SEEDS = range(3)


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        missing(f"no {name} program here")
    return found


@contextlib.contextmanager
def small_filesystem(size_kib: int) -> Iterator[Path]:
    """A tmpfs of ``size_kib`` KiB, unmounted afterwards."""
    mount_point = Path(tempfile.mkdtemp(prefix="tidings-full-"))
    mounted = subprocess.run(
        [_program("mount"), "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        missing(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run([_program("umount"), "-l", str(mount_point)], check=False)
        shutil.rmtree(mount_point, ignore_errors=True)


def grow(mount_point: Path, size_kib: int) -> None:
    subprocess.run([_program("mount"), "-o", f"remount,size={size_kib}k", str(mount_point)], check=True)


def _disk_size(seed: int, smallest: int) -> int:
    """KiB: the disk fills at a different point of the load for each seed."""
    return random.Random(seed).randrange(smallest, smallest * 3 // 2, 4)


@pytest.fixture(scope="module")
def tablespace_server() -> Iterator[str]:
    """A throwaway PostgreSQL of this module's own (a tablespace is a path on its machine)."""
    with throwaway_postgres() as server:
        yield f"postgresql://{server.user}@127.0.0.1:{server.port}/{server.database}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_full_sqlite_disk_refuses_clearly_and_work_resumes(seed: int) -> None:
    # SQLite's WAL takes pages of 4 KiB by the dozen for each commit: a few MiB for a few hundred.
    with small_filesystem(_disk_size(seed, 3072)) as disk:
        await _fill_and_recover(f"sqlite:///{disk / 'store.db'}", disk, seed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_full_postgresql_tablespace_refuses_clearly_and_work_resumes(
    tablespace_server: str, seed: int
) -> None:
    with small_filesystem(_disk_size(seed, 1024)) as disk:
        account = server_account()
        if account is not None:
            os.chown(disk, account.pw_uid, account.pw_gid)
        name = f"full_{seed}_{os.getpid()}"
        with psycopg.connect(tablespace_server, autocommit=True) as admin:
            admin.execute(f"CREATE TABLESPACE {name} LOCATION '{disk}'")
            admin.execute(f"CREATE DATABASE {name}")  # its catalog stays on the large disk
            admin.execute(f"ALTER DATABASE {name} SET default_tablespace = {name}")
        try:
            await _fill_and_recover(tablespace_server.rsplit("/", 1)[0] + f"/{name}", disk, seed)
        finally:
            with psycopg.connect(tablespace_server, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                admin.execute(f"DROP TABLESPACE IF EXISTS {name}")


async def _fill_and_recover(store_url: str, disk: Path, seed: int) -> None:
    rng = random.Random(seed + 1)
    app = consuming_app("full-disk", store_url)
    async with app, app.running(lease_ttl=1.0, poll=0.05):
        producer = Producer(app, KEYS)
        full_at = -1
        n = 0
        while full_at < 0:  # until the disk is full
            for key in range(KEYS):
                if not await producer.publish(n, key, give_up=lambda: len(producer.refusals) >= 3):
                    full_at = n
                    stuck_key = key
                    break
            n += 1
            if rng.random() < 0.1:
                await asyncio.sleep(0.01)  # let the consumers write too
        assert all(isinstance(r, StoreFull) for r in producer.refusals), producer.refusals
        print(f"\nfull after {len(producer.acknowledged)} events: {producer.refusals[0]}")
        stored = {r.envelope.id async for r in app.store.read_log()}
        assert not producer.refused_ids & stored, "a refused append was stored"
        assert set(producer.acknowledged) <= stored, "an acknowledged append is missing"
        grow(disk, 64 * 1024)
        space_back = time.monotonic()
        for key in range(stuck_key, KEYS):
            assert await producer.publish(full_at, key)
        resumed = time.monotonic() - space_back
        per_key = full_at + 1 + AFTER_FULL
        for n in range(full_at + 1, per_key):
            for key in range(KEYS):
                assert await producer.publish(n, key)
        deadline = time.monotonic() + 60
        while sum(map(len, (await effects(app, KEYS)).values())) < KEYS * per_key:
            assert time.monotonic() < deadline, "the consumers did not catch up"
            await asyncio.sleep(0.1)
        caught_up = time.monotonic() - space_back
        await asyncio.sleep(0.3)  # time for a repeat to show, if one were coming
        counts = count_faults(await effects(app, KEYS), per_key)
    print(
        f"{KEYS * per_key} events, {counts}; first append {resumed:.2f} s and consumers caught up "
        f"{caught_up:.2f} s after space returned"
    )
    assert (counts.lost, counts.duplicated, counts.out_of_order) == (0, 0, 0), counts
