"""``tidings keys rotate --key-file`` against real key files, SQLite stores and CLI processes: it
holds the key file's lock from reading it to the end of the rotation, so rotations at once each
add their own version; and a key file that does not match the store is refused untouched."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

import tidings
from tests.unit.test_cli import tidings_cli
from tidings.runtime.encryption import Encryption
from tidings.runtime.keyring import CHECK_SCOPE
from tidings.runtime.master_key import (
    ENV_KEY,
    ENV_KEY_FILE,
    LocalMasterKey,
    add_master_key_version,
    locked_key_file,
    new_master_key_entry,
    write_key_file,
)

#: How long a rotation is given to finish while the test holds the lock: far more than the CLI
#: needs to start and rotate a small store, so that one which does not wait is seen finishing.
_BLOCKED_FOR = 6.0


class Noted(tidings.Event, topic="keylock.noted", type="KeyLockNoted"):
    text: str


@pytest.fixture(autouse=True)
def _no_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    monkeypatch.delenv("TIDINGS_STORE", raising=False)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    write_key_file(path, new_master_key_entry(1) + "\n")
    return path


def encrypted_store(tmp_path: Path, key_file: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"

    async def append() -> None:
        encryption = Encryption(master_key=LocalMasterKey.from_file(key_file))
        async with tidings.App("keylock", store=url, encryption=encryption) as app:
            for number in range(3):
                await app.append(f"note-{number}", [Noted(text="sealed")])

    asyncio.run(append())
    return url


def rotation(url: str, key_file: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable,
        "-m",
        "tidings.cli",
        "keys",
        "rotate",
        "--store",
        url,
        "--key-file",
        str(key_file),
    ]
    environment = {k: v for k, v in os.environ.items() if k not in (ENV_KEY, ENV_KEY_FILE, "TIDINGS_STORE")}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )


@contextmanager
def holding_lock(key_file: Path) -> Iterator[None]:
    """The lock as another process takes it: flock on ``.<name>.lock`` beside the key file."""
    with open(key_file.with_name(f".{key_file.name}.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def versions_in(key_file: Path) -> list[int]:
    return LocalMasterKey.from_file(key_file).versions


def store_rows(url: str, sql: str, *params: str) -> list[tuple[int, ...]]:
    with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
        return list(connection.execute(sql, params).fetchall())


def test_a_rotation_waits_for_the_key_file_lock(key_file: Path, tmp_path: Path) -> None:
    url = encrypted_store(tmp_path, key_file)
    before = key_file.read_text()
    with holding_lock(key_file):
        waiting = rotation(url, key_file)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                waiting.wait(timeout=_BLOCKED_FOR)
            assert key_file.read_text() == before
        except BaseException:
            waiting.kill()
            waiting.communicate()
            raise
    _, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, stderr
    assert versions_in(key_file) == [1, 2]


def test_two_rotations_at_once_keep_both_new_versions(key_file: Path, tmp_path: Path) -> None:
    url = encrypted_store(tmp_path, key_file)
    runs = [rotation(url, key_file) for _ in range(2)]
    results = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert versions_in(key_file) == [1, 2, 3]
    wrappers = store_rows(
        url, "SELECT DISTINCT master_version FROM tidings_keys WHERE scope <> ?", CHECK_SCOPE
    )
    assert wrappers == [(3,)]  # the second rotation saw the first one's version and went past it
    checked = store_rows(
        url, "SELECT version FROM tidings_keys WHERE scope = ? ORDER BY version", CHECK_SCOPE
    )
    assert checked == [(1,), (2,), (3,)]

    async def read() -> list[str]:
        encryption = Encryption(master_key=LocalMasterKey.from_file(key_file))
        async with tidings.App("keylock", store=url, encryption=encryption) as app:
            return [s.event.text for n in range(3) for s in await app.read_stream(f"note-{n}")]  # type: ignore[attr-defined]

    assert asyncio.run(read()) == ["sealed"] * 3


def test_threads_adding_versions_under_the_lock_lose_none(key_file: Path) -> None:
    def add(times: int) -> None:
        for _ in range(times):
            with locked_key_file(key_file):
                add_master_key_version(key_file)

    threads = [threading.Thread(target=add, args=(3,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert versions_in(key_file) == list(range(1, 20))


def test_a_key_file_that_does_not_match_the_store_is_refused_untouched(
    key_file: Path, tmp_path: Path
) -> None:
    url = encrypted_store(tmp_path, key_file)
    wrong = tmp_path / "wrong.key"
    write_key_file(wrong, new_master_key_entry(1) + "\n")
    before = wrong.read_text()
    result = tidings_cli("keys", "rotate", "--store", url, "--key-file", str(wrong))
    assert result.exit_code == 2
    assert f"the master key version 1 given (master key file {wrong}) does not match" in result.stderr
    assert wrong.read_text() == before
    wrapped = store_rows(
        url, "SELECT DISTINCT master_version FROM tidings_keys WHERE scope <> ?", CHECK_SCOPE
    )
    assert wrapped == [(1,)]
