"""One demo at a time on a store: the lock a run holds from judging the store to its end.

Judging a store, replacing it, preparing it and running the services on it is one run: a second
demo that judged the store in between would take (and delete) what the first one is writing.
On SQLite the lock is ``flock`` on a file beside the database (``<db>.demo-lock``, removed when
the run ends); on PostgreSQL, a session advisory lock on a connection of its own. The kernel or
the server lets go of it when the process dies, so a killed demo does not lock out the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tidings.adapters.urls import redact_url
from tidings.errors import BackendUnavailable, ConfigurationError

#: The advisory lock key of a demo run ("tidings" in ASCII and "D"), unlike tidings' own keys.
DEMO_LOCK: Final = 0x7469_6469_6E67_7344


@dataclass(frozen=True)
class Held:
    """The proof that this process runs the one demo on ``url`` (see ``exclusive``)."""

    url: str


def lock_path(database: Path) -> Path:
    return Path(f"{database}.demo-lock")


def busy(url: str) -> ConfigurationError:
    return ConfigurationError(
        f"{redact_url(url)}: another demo is running on this store; wait until it ends, or give"
        " this one another --store"
    )


@contextlib.contextmanager
def exclusive(url: str, database: Path | None) -> Iterator[Held]:
    """Hold the store at ``url`` (a SQLite file at ``database``, or PostgreSQL) for one demo run;
    raise ``ConfigurationError`` at once if another run holds it."""
    if database is None:
        with _postgres_lock(url):
            yield Held(url)
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(url, lock_path(database)):
        yield Held(url)


@contextlib.contextmanager
def _file_lock(url: str, path: Path) -> Iterator[None]:
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise busy(url) from None
        # The run before may have removed the file between our open and our lock: then the lock
        # is on a file no one else will open, and it must be taken again on the file there now.
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked: no one holds the next file yet
        os.close(descriptor)


@contextlib.contextmanager
def _postgres_lock(url: str) -> Iterator[None]:
    import psycopg

    from tidings.adapters.postgres import PostgresSettings

    def unavailable(exc: psycopg.Error) -> BackendUnavailable:
        return BackendUnavailable(
            f"PostgreSQL at {redact_url(url)}: cannot lock the store ({type(exc).__name__})"
        )

    try:
        connection = psycopg.connect(PostgresSettings.from_url(url).conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise unavailable(exc) from None
    with connection:
        try:
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (DEMO_LOCK,)).fetchone()
        except psycopg.Error as exc:
            raise unavailable(exc) from None
        if not (row and row[0]):
            raise busy(url)
        yield  # closing the connection ends its session, and the session's lock with it
