"""The verified record on disk: what ``verify --record`` writes and ``verify --against`` reads.

The record is only worth something kept where the database's writers cannot reach it (another
machine, a write-once bucket, a signed commit); this module writes it owner-only and atomically,
so a crash never leaves half a record to compare against.
"""

from __future__ import annotations

from pathlib import Path

from tidings.domain.integrity import IntegrityReport, VerifiedState, decode_verified, encode_verified
from tidings.errors import InvalidArgument
from tidings.ports import EventStore
from tidings.runtime.master_key import write_key_file


def read_verified_record(path: Path) -> VerifiedState:
    """The state a record file holds; ``InvalidArgument`` if it is missing, unreadable or damaged."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read verified record {path}: {exc.strerror}") from None
    return decode_verified(text, f"verified record {path}")


def write_verified_record(path: Path, state: VerifiedState) -> None:
    """Write ``state`` to ``path``, readable by its owner only, replacing any older record whole."""
    try:
        # Written like a key file: owner-only from creation, atomic rename, fsync of both.
        write_key_file(path, encode_verified(state).decode())
    except OSError as exc:
        raise InvalidArgument(f"cannot write verified record {path}: {exc.strerror}") from None


async def verify_store(store: EventStore, *, against: Path | None, record: Path | None) -> IntegrityReport:
    """``store.verify``, against the record in the file ``against`` if given; a clean report is
    written to the file ``record`` if given (``App.verify``, ``tidings verify``)."""
    recorded = read_verified_record(against) if against is not None else None
    report = await store.verify(recorded)
    if record is not None and report.verified is not None:
        write_verified_record(record, report.verified)
    return report
