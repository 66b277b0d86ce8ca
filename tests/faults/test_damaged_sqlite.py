"""A SQLite store damaged while closed: bits flipped and the file cut at seeded random offsets,
in the database file and in its write-ahead log (WAL) holding committed transactions not yet
copied into the database file. Opened again, tidings either reports the damage (an
``IntegrityError`` at open or on read, or a problem in ``verify``) or serves events exactly as
appended, in order, without a hole.

SQLite reads a WAL only up to its first frame that fails its checksum and silently drops the
transactions after it; tidings notices an intact commit frame past that point and refuses the
store. A WAL cut short (or damaged in its last transaction) leaves nothing to notice: the store
serves an intact, shorter log: only a record of what was verified, kept outside the store
(``verify --record``), can tell. So each store here is verified and its state recorded after the
last append, as an operator would, and opened again it is verified against that record: a WAL cut
short is reported then. Without a record the same run serves the shorter log, which the test
counts (``tail_lost``) and prints.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tidings.adapters.registry import open_store
from tidings.domain.envelope import RecordedEvent
from tidings.domain.integrity import VerifiedState
from tidings.errors import IntegrityError
from tidings.testing.conformance.events import items

ROOT = Path(__file__).resolve().parents[2]
STREAMS = 12
PER_STREAM = 30
SEEDS = range(8)


@dataclass
class Outcome:
    reported: str = ""  # what tidings said, if it noticed
    served: int = 0
    holes: int = 0  # events missing before the last one served
    altered: int = 0  # events served otherwise than appended (or out of order)
    tail_lost: int = 0  # newest events missing, nothing after them served
    tail_lost_without_record: int = 0  # what a verify without the record would have let through


async def _write_store(directory: Path) -> tuple[list[RecordedEvent], VerifiedState]:
    """A store whose file holds the first half of the events and whose WAL holds the rest: a
    second connection keeps a read transaction open, so that no checkpoint copies them over.
    Also what ``verify`` saw after the last append, the record an operator keeps elsewhere."""
    path = directory / "store.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    appended: list[RecordedEvent] = []
    holder: sqlite3.Connection | None = None
    try:
        for n in range(STREAMS):
            stream = f"cart-{n}"
            if n == STREAMS // 2:
                _checkpoint(path)
                holder = sqlite3.connect(path, isolation_level=None)
                holder.execute("BEGIN")
                holder.execute("SELECT count(*) FROM sqlite_master").fetchone()
            appended += await store.append(stream, items(stream, PER_STREAM))
        verified = (await store.verify()).verified
        assert verified is not None, "the store should verify before it is damaged"
        damaged = directory / "copy"
        damaged.mkdir()
        # No write is running: the file and its WAL copied together are one consistent store.
        for name in ("store.db", "store.db-wal"):
            shutil.copyfile(directory / name, damaged / name)
    finally:
        if holder is not None:
            holder.close()
        await store.close()
    return appended, verified


def _checkpoint(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


def _damage(path: Path, rng: random.Random, kind: str) -> str:
    size = path.stat().st_size
    if kind == "cut":
        offset = rng.randrange(size)
        with path.open("r+b") as handle:
            handle.truncate(offset)
        return f"{path.name} cut at {offset} of {size}"
    offsets = sorted(rng.randrange(size) for _ in range(rng.randint(1, 8)))
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"{path.name} bits flipped at {offsets} of {size}"


async def _reopen(path: Path, appended: list[RecordedEvent], verified: VerifiedState) -> Outcome:
    outcome = Outcome()
    store = open_store(f"sqlite:///{path}")
    try:
        await store.open()
        unrecorded = await store.verify()
        if unrecorded.ok:
            newest = max([r.position async for r in store.read_log()], default=0)
            outcome.tail_lost_without_record = sum(1 for r in appended if r.position > newest)
        report = await store.verify(against=verified)
        if not report.ok:
            outcome.reported = f"verify: {report.problems[0]}"
            return outcome
        served = [record async for record in store.read_log()]
        for stream in {r.stream for r in appended}:
            served_stream = await store.read_stream(stream)
            expected = [r for r in appended if r.stream == stream][: len(served_stream)]
            outcome.altered += sum(a != b for a, b in zip(served_stream, expected, strict=True))
    except IntegrityError as exc:
        outcome.reported = f"{type(exc).__name__}: {exc}"
        return outcome
    finally:
        await store.close()
    outcome.served = len(served)
    by_position = {r.position: r for r in appended}
    outcome.altered += sum(by_position.get(r.position) != r for r in served)
    newest = served[-1].position if served else 0
    outcome.holes = sum(1 for r in appended if r.position <= newest) - len(served)
    outcome.tail_lost = sum(1 for r in appended if r.position > newest)
    return outcome


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("target", ["store.db", "store.db-wal"])
@pytest.mark.parametrize("kind", ["flip", "cut"])
async def test_a_damaged_file_or_wal_is_reported_or_served_intact(
    tmp_path: Path, seed: int, target: str, kind: str
) -> None:
    appended, verified = await _write_store(tmp_path)
    copy = tmp_path / "copy"
    assert (copy / "store.db-wal").stat().st_size > 0, "the WAL should hold committed events"
    how = _damage(copy / target, random.Random(f"{seed}-{target}-{kind}"), kind)
    outcome = await _reopen(copy / "store.db", appended, verified)
    print(f"\n{how}: {outcome}")
    assert outcome.holes == 0, f"{how}: a hole was served silently ({outcome})"
    assert outcome.altered == 0, f"{how}: altered events were served silently ({outcome})"
    assert outcome.reported or outcome.tail_lost == 0, f"{how}: events went missing silently ({outcome})"


async def test_a_damaged_wal_stays_refused_until_an_operator_removes_its_copy(tmp_path: Path) -> None:
    """Closing the store lets SQLite drop the damaged WAL: tidings sets a copy aside first, and
    refuses the store as long as that copy is there, so that the loss is never served silently
    on the next start; and once the operator removes the copy, a verify against the record kept
    before the damage still names what is missing."""
    appended, verified = await _write_store(tmp_path)
    wal = tmp_path / "copy" / "store.db-wal"
    data = bytearray(wal.read_bytes())
    data[len(data) // 2] ^= 0x10  # a frame in the middle: intact commits follow it
    wal.write_bytes(bytes(data))
    path = tmp_path / "copy" / "store.db"
    for _ in range(2):
        store = open_store(f"sqlite:///{path}")
        with pytest.raises(IntegrityError, match="write-ahead log"):
            await store.open()
        await store.close()
    set_aside = tmp_path / "copy" / "store.db-wal.damaged"
    assert set_aside.read_bytes() == bytes(data)
    assert set_aside.stat().st_mode & 0o077 == 0
    set_aside.unlink()  # the operator goes on without the lost transactions
    outcome = await _reopen(path, appended, verified)
    assert outcome.reported.startswith("verify:") and outcome.tail_lost_without_record > 0, outcome


def _appender(url: str, prefix: str, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.appender", url, prefix, str(count)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


async def test_opening_a_store_that_other_processes_write_finds_no_damage(tmp_path: Path) -> None:
    """The WAL check reads a WAL that other processes append to and start over: it must never
    take their work in progress for damage (nor disturb them: their appends all succeed)."""
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    first = open_store(url)
    await first.open()
    await first.close()
    writers = [_appender(url, f"busy{n}", 300) for n in range(3)]
    opened = 0
    try:
        while any(writer.poll() is None for writer in writers):
            store = open_store(url)
            await store.open()  # raises IntegrityError if it took a write in progress for damage
            await store.close()
            opened += 1
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert [writer.returncode for writer in writers] == [0, 0, 0]
    assert opened > 0 and not (tmp_path / "busy.db-wal.damaged").exists()


def _frames(data: bytes) -> tuple[int, list[int]]:
    """A WAL's frame size and its commit frames' numbers (from 1), read off its frame headers."""
    frame_size = 24 + struct.unpack(">I", data[8:12])[0]
    count = (len(data) - 32) // frame_size
    commits = [
        n for n in range(1, count + 1) if struct.unpack(">I", data[32 + (n - 1) * frame_size + 4 :][:4])[0]
    ]
    return frame_size, commits


async def test_a_last_transaction_torn_by_a_power_cut_is_no_damage(tmp_path: Path) -> None:
    """SQLite writes a transaction's frames, then syncs: a power cut before the sync may leave
    its commit frame on disk without an earlier frame of it. That transaction was never
    acknowledged; the store opens and serves every event before it."""
    appended, _ = await _write_store(tmp_path)
    wal = tmp_path / "copy" / "store.db-wal"
    data = bytearray(wal.read_bytes())
    frame_size, commits = _frames(bytes(data))
    first_of_last = commits[-2] + 1
    assert commits[-1] - first_of_last >= 1, "the last transaction should span frames"
    start = 32 + (first_of_last - 1) * frame_size
    data[start : start + frame_size] = bytes(frame_size)  # never reached the disk
    wal.write_bytes(bytes(data))
    store = open_store(f"sqlite:///{tmp_path / 'copy' / 'store.db'}")
    try:
        await store.open()
        served = [record async for record in store.read_log()]
    finally:
        await store.close()
    last_stream = appended[-1].stream
    assert served == [r for r in appended if r.stream != last_stream]


async def test_inspecting_a_store_with_a_damaged_wal_reports_it(tmp_path: Path) -> None:
    """Read-only opens (`tidings verify`, `streams`, ...) see the same damage a writer refuses,
    and change nothing: no copy set aside, the WAL as it was."""
    await _write_store(tmp_path)
    wal = tmp_path / "copy" / "store.db-wal"
    data = bytearray(wal.read_bytes())
    data[len(data) // 2] ^= 0x10  # a frame in the middle: intact commits follow it
    wal.write_bytes(bytes(data))
    store = open_store(f"sqlite:///{tmp_path / 'copy' / 'store.db'}", create=False)
    with pytest.raises(IntegrityError, match="write-ahead log is damaged"):
        await store.open()
    await store.close()
    assert not (tmp_path / "copy" / "store.db-wal.damaged").exists()
    assert wal.read_bytes() == bytes(data)
