"""What the durability doctor asks a SQLite store: the file's journal mode, the ``synchronous``
level tidings' connections run at, and who else may read or replace the files.

Blocking (sqlite3 and stat calls): the caller runs it on a thread. Nothing is written: the file
is opened read-only, as ``tidings`` inspects a store.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Final
from urllib.parse import quote

from tidings.adapters.sqlite.settings import SqliteSettings
from tidings.domain.findings import Finding, Level

#: ``PRAGMA synchronous`` answers with a number.
_SYNCHRONOUS: Final = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
#: Journal modes that keep committed transactions through a crash, if not tidings' own (WAL).
_DURABLE_JOURNALS: Final = ("delete", "truncate", "persist")
_SIBLINGS: Final = ("", "-wal", "-shm")


def examine_sqlite(settings: SqliteSettings) -> list[Finding]:
    """The findings about the store file that ``settings`` name (it exists: the store opened)."""
    findings = examine_files(settings.path)
    connection = sqlite3.connect(f"file:{quote(str(settings.path))}?mode=ro", uri=True)
    try:
        # ``synchronous`` is a connection's, not the file's: this is the level that tidings'
        # connections set from the URL (``?synchronous=``), read back as SQLite took it.
        connection.execute(f"PRAGMA synchronous={settings.synchronous}")
        findings += examine_connection(connection)
    finally:
        connection.close()
    return findings


def examine_connection(connection: sqlite3.Connection) -> list[Finding]:
    """The journal mode of the file open on ``connection`` and the connection's ``synchronous``."""
    findings: list[Finding] = []
    (journal,) = connection.execute("PRAGMA journal_mode").fetchone()
    journal = str(journal).lower()
    if journal != "wal" and journal in _DURABLE_JOURNALS:
        findings.append(
            Finding(
                "sqlite.journal_mode",
                Level.WARNING,
                f"journal_mode is {journal}, not wal",
                "tidings runs its store in WAL mode: readers beside the writer, and the check for a "
                "damaged WAL at open; in a rollback journal every read waits for the writer, and a "
                "process that keeps the file open in this mode stalls tidings' workers",
                "open the store once with tidings (its writer sets WAL back), or "
                "`sqlite3 FILE 'PRAGMA journal_mode=WAL'` while no process has it open",
            )
        )
    elif journal != "wal":
        findings.append(
            Finding(
                "sqlite.journal_mode",
                Level.ERROR,
                f"journal_mode is {journal}",
                "without a journal on disk a crash in the middle of a transaction leaves the database "
                "half written: committed events may be lost and the file damaged",
                "`sqlite3 FILE 'PRAGMA journal_mode=WAL'` while no process has it open",
            )
        )
    (level,) = connection.execute("PRAGMA synchronous").fetchone()
    name = _SYNCHRONOUS.get(int(level), str(level))
    if name == "OFF":
        findings.append(
            Finding(
                "sqlite.synchronous",
                Level.ERROR,
                "synchronous is OFF",
                "SQLite never waits for the disk: a power loss or an OS crash may lose acknowledged "
                "events and damage the file",
                "leave synchronous at FULL (tidings' default; drop any ?synchronous= from the URL)",
            )
        )
    elif name == "NORMAL":
        findings.append(
            Finding(
                "sqlite.synchronous",
                Level.WARNING,
                "synchronous is NORMAL (the store URL's ?synchronous=NORMAL)",
                "in WAL mode NORMAL syncs only at checkpoints: a power loss or an OS crash loses the "
                "last acknowledged transactions (a process crash loses nothing)",
                "drop ?synchronous=NORMAL from the store URL: FULL, the default, survives power loss",
            )
        )
    return findings


def examine_files(path: Path) -> list[Finding]:
    """Who may read or replace the database file, its -wal and -shm, and the directory."""
    by_mode: dict[int, list[str]] = {}  # files of one mode share a finding
    for suffix in _SIBLINGS:
        file = Path(f"{path}{suffix}")
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue  # no -wal or -shm at rest: SQLite makes them with the database's mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            by_mode.setdefault(mode, []).append(file.name)
    findings = [_file_mode(names, mode) for mode, names in by_mode.items()]
    directory = path.resolve().parent
    if finding := _directory_mode(directory, stat.S_IMODE(directory.stat().st_mode)):
        findings.append(finding)
    return findings


def _file_mode(names: list[str], mode: int) -> Finding:
    others = mode & (stat.S_IROTH | stat.S_IWOTH)
    who = "every user of the machine" if others else "the files' group"
    writable = mode & (stat.S_IWOTH | stat.S_IWGRP)
    return Finding(
        "sqlite.file_mode",
        Level.ERROR if others or writable else Level.WARNING,
        f"{', '.join(names)}: mode {mode:o}, {who} may {'write' if writable else 'read'} "
        f"{'them' if len(names) > 1 else 'it'}",
        "the database holds every event (with encryption on, still every stream name, topic and "
        "time), and so do its -wal and -shm; one who may write them may alter or delete the log",
        f"`chmod 600 {' '.join(names)}` (tidings creates its files owner-only; SQLite gives the "
        "-wal and -shm the database's mode)",
    )


def _directory_mode(directory: Path, mode: int) -> Finding | None:
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        level, who = Level.ERROR, "every user of the machine"
    elif mode & stat.S_IWGRP:
        level, who = Level.WARNING, "the directory's group"
    else:
        return None
    return Finding(
        "sqlite.directory_mode",
        level,
        f"the store's directory has mode {mode:o}: {who} may create, delete and rename files in it",
        "one who may delete the -wal file while no process has the store open loses every "
        "transaction not yet checkpointed into the database; one who may rename files may put "
        "another database in the store's place",
        f"`chmod 700 {directory.name}` (or 750), or keep the store in a directory of its own",
    )
