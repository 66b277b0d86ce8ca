"""Noticing a damaged write-ahead log (WAL) at open, before SQLite's recovery hides it.

SQLite reads a WAL only up to its first frame that fails its checksum, and treats every later
transaction as never committed, silently: a bit flipped in the middle of the WAL loses the newest
committed events, and the store serves a shorter, intact-looking log. A power cut while the last
transaction was being written may tear that transaction anywhere (SQLite writes its frames, then
syncs), but with ``synchronous=FULL`` every earlier transaction was synced before the next one
began. So past the end of what SQLite took as valid, the first intact commit frame may close a
torn last transaction, never acknowledged; a second one, which carries the WAL's current salts
and matches its own checksum, can only be there if a frame before it was damaged. (A break in the
last transaction, or on the commit frame just before it, cannot be told from such a power cut:
a verify against a record kept outside the store catches that loss.)

Format (https://www.sqlite.org/fileformat.html#the_write_ahead_log): a 32-byte header (magic,
version, page size, checkpoint sequence, two salts, a checksum), then frames of a 24-byte header
(page number, database size after a commit or 0, the two salts, a cumulative checksum) and a page.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tidings.errors import IntegrityError

_HEADER: Final = 32
_FRAME_HEADER: Final = 24
_MAGIC_LITTLE: Final = 0x377F0682
_MAGIC_BIG: Final = 0x377F0683
_MASK: Final = 0xFFFFFFFF
#: A WAL grows this large only while a reader keeps checkpoints from finishing for long; reading
#: it whole at every open, under the write lock, would stall the other processes' writes.
_LARGEST_CHECKED: Final = 256 * 1024 * 1024


def refuse_set_aside(path: Path, url: str) -> None:
    """Refuse a store whose damaged WAL ``check`` set aside, until an operator removes it."""
    set_aside = _set_aside(path)
    if set_aside.exists():
        raise IntegrityError(
            f"{url}: its write-ahead log was found damaged and set aside as {set_aside.name}, with "
            "committed transactions the store no longer holds: restore from a backup, or remove "
            "that file to go on without them"
        )


def check(connection: sqlite3.Connection, path: Path, url: str, *, inspecting: bool = False) -> None:
    """Refuse a WAL that SQLite reads only in part because a frame in it is damaged. Closing the
    store makes SQLite drop that WAL, so a copy of it is set aside first (``refuse_set_aside``).
    ``inspecting`` (a read-only open, which must change nothing): the same verdict, nothing set
    aside.

    A writer reads the WAL under the write lock: no other process writes frames or starts the WAL
    over meanwhile, which could look like damage (a read-only connection cannot take that lock;
    a torn end, all a concurrent write can show, is not taken for damage). (SQLite's own files are
    never opened here: closing another descriptor of the database or its -shm file would drop
    SQLite's locks.)"""
    wal_path = Path(f"{path}-wal")
    if not inspecting:
        connection.execute("BEGIN IMMEDIATE")
    try:
        if wal_path.stat().st_size > _LARGEST_CHECKED:
            return
        data = wal_path.read_bytes()
    except OSError:  # none (or unreadable, which SQLite reports itself)
        return
    finally:
        if not inspecting:
            connection.execute("COMMIT")
    wal = _Wal.of(data)
    last = wal.last_intact_commit() if wal is not None else 0
    if wal is None or not last:
        return
    if not inspecting:
        # Most often SQLite holds every frame of the copy valid (cheap to ask; it may count more
        # by now). Otherwise (damage, or another process has started the WAL over since) the
        # copy's chain of checksums decides, which costs a moment per MiB.
        (_, valid, _) = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if valid >= last:
            return
    valid = wal.end_of_chain()
    if len(wal.intact_commits_after(valid)) > 1:  # the first may close a torn last transaction
        if inspecting:
            raise IntegrityError(
                f"{url}: its write-ahead log is damaged after frame {valid}: SQLite would drop the "
                f"committed transactions up to frame {last} without a word: restore from a backup"
            )
        set_aside = _set_aside(path)
        with os.fdopen(os.open(set_aside, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "wb") as copy:
            copy.write(data)
        raise IntegrityError(
            f"{url}: its write-ahead log is damaged after frame {valid}: SQLite would drop the "
            f"committed transactions up to frame {last} without a word; set aside as "
            f"{set_aside.name}: restore from a backup"
        )


def _set_aside(path: Path) -> Path:
    return Path(f"{path}-wal.damaged")


@dataclass(frozen=True)
class _Wal:
    data: bytes
    order: str  # the byte order of its checksums
    salts: bytes
    frame_size: int
    frames: int

    @classmethod
    def of(cls, data: bytes) -> _Wal | None:
        if len(data) < _HEADER:
            return None
        magic, _, page_size = struct.unpack(">3I", data[:12])
        if magic not in (_MAGIC_LITTLE, _MAGIC_BIG) or not 512 <= page_size <= 65536:
            return None
        frame_size = _FRAME_HEADER + page_size
        order = "<" if magic == _MAGIC_LITTLE else ">"
        return cls(data, order, data[16:24], frame_size, (len(data) - _HEADER) // frame_size)

    def last_intact_commit(self) -> int:
        """The last commit frame of the WAL's current generation that matches its own checksum
        (taking the checksum stored before it as given), or 0."""
        for number in range(self.frames, 0, -1):
            if self._commit_of_this_generation(number) and self._matches(number, self._stored(number - 1)):
                return number
        return 0

    def intact_commits_after(self, number: int) -> list[int]:
        """The commit frames after frame ``number`` that match their own checksums."""
        return [
            later
            for later in range(number + 1, self.frames + 1)
            if self._commit_of_this_generation(later) and self._matches(later, self._stored(later - 1))
        ]

    def end_of_chain(self) -> int:
        """The last commit frame that SQLite reads: the end of the unbroken chain of checksums."""
        if self._checksum(self.data[:24], (0, 0)) != self._stored(0):
            return 0  # a damaged header: SQLite ignores the whole WAL
        end, running = 0, self._stored(0)
        for number in range(1, self.frames + 1):
            start = self._start(number)
            if self.data[start + 8 : start + 16] != self.salts or not self._matches(number, running):
                break
            running = self._stored(number)
            if self._commit_of_this_generation(number):
                end = number
        return end

    def _start(self, number: int) -> int:
        return _HEADER + (number - 1) * self.frame_size

    def _stored(self, number: int) -> tuple[int, int]:
        """The checksum stored in frame ``number`` (0: in the WAL's header)."""
        at = self._start(number) + 16 if number else _HEADER - 8
        first, second = struct.unpack(">2I", self.data[at : at + 8])
        return first, second

    def _commit_of_this_generation(self, number: int) -> bool:
        start = self._start(number)
        (size_after,) = struct.unpack(">I", self.data[start + 4 : start + 8])
        return size_after != 0 and self.data[start + 8 : start + 16] == self.salts

    def _matches(self, number: int, seed: tuple[int, int]) -> bool:
        start = self._start(number)
        content = self.data[start : start + 8] + self.data[start + _FRAME_HEADER : start + self.frame_size]
        return self._checksum(content, seed) == self._stored(number)

    def _checksum(self, content: bytes, seed: tuple[int, int]) -> tuple[int, int]:
        """SQLite's WAL checksum of ``content`` (whole 32-bit words), continuing from ``seed``."""
        s0, s1 = seed
        words = struct.unpack(f"{self.order}{len(content) // 4}I", content)
        for index in range(0, len(words), 2):
            s0 = (s0 + words[index] + s1) & _MASK
            s1 = (s1 + words[index + 1] + s0) & _MASK
        return s0, s1
