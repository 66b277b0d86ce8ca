"""The hash chain that makes tampering with stored events visible, and the verified record that
makes a rewritten chain visible too.

Each stored event carries ``sha256(previous hash ‖ canonical bytes of stream, version and
envelope)``; the first event of a stream chains to 32 zero bytes. Altering, removing or
reordering an event breaks the links from it on, and the stream's recorded head (version and
hash) catches a stream cut short at its end.

The chain has no key, so whoever can write to the database can also recompute it. What such a
writer cannot change is a copy kept elsewhere: a successful ``verify`` yields a ``VerifiedState``
(every stream's head, the log's end and a digest of where each event sits in the log), which an
operator keeps outside the database and hands back to a later ``verify`` as ``against``. Each
recorded head must then still be in its chain at the same version with the same hash, so an event
edited at or below it changes that hash however the links after it are recomputed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

import msgspec

from tidings.errors import InvalidArgument

GENESIS: Final = bytes(32)
#: Names the layout of a verified record file; a reader refuses any other.
RECORD_FORMAT: Final = "tidings-verified-heads/1"

_canonical = msgspec.msgpack.Encoder()


def chain_hash(previous: bytes, content: bytes) -> bytes:
    """``sha256(previous hash ‖ content)``; the content names the stream and version itself."""
    return hashlib.sha256(previous + content).digest()


class IntegrityProblem(msgspec.Struct, frozen=True):
    """The first break found in one stream (or in the storage itself, with ``stream`` empty)."""

    stream: str
    version: int
    position: int
    problem: str


class VerifiedHead(msgspec.Struct, frozen=True, array_like=True):
    """A stream's last event as a successful ``verify`` saw it."""

    stream: str
    version: int
    hash: bytes


class VerifiedState(msgspec.Struct, frozen=True):
    """What a successful ``verify`` saw, to keep outside the database and check against later.

    ``log_digest`` hashes (position, stream, version) of every event up to ``log_end`` in
    position order: the position and partition columns are not in the chain (the log assigns
    positions after the row's hash is made), so this is what catches an event moved in the log.
    """

    log_id: str
    partitions: int
    log_end: int
    log_digest: bytes
    heads: tuple[VerifiedHead, ...]


class IntegrityReport(msgspec.Struct, frozen=True):
    """What ``verify`` found: how much it checked and the first break of each damaged stream.

    ``verified`` is the state to record when nothing was found (``None`` otherwise)."""

    streams: int
    events: int
    problems: list[IntegrityProblem]
    verified: VerifiedState | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class StreamChecker:
    """Checks the rows of one stream, read in version order, against their chain and head, and
    against the head a verified record holds for it (if any)."""

    def __init__(self, stream: str, recorded: VerifiedHead | None = None) -> None:
        self.stream = stream
        self.recorded = recorded
        self.previous = GENESIS
        self.version = 0
        self.position = 0
        self.problem: IntegrityProblem | None = None

    def feed(self, version: int, position: int, digest: bytes, stored_hash: bytes) -> bool:
        """Check one row, given the hash its content and the chain so far give; returns False
        (and records the problem) at the first break."""
        if self.problem is not None:
            return False
        if version != self.version + 1:
            return self._fail(self.version + 1, position, f"version {self.version + 1} is missing")
        if digest != stored_hash:
            return self._fail(version, position, "hash does not match its content and chain")
        # Appends commit in position order, so a stream's positions grow with its versions; a
        # row moved in the log would be delivered out of its stream's order, and one moved to
        # position 0 or below would never be delivered (readers start after position 0).
        if position <= self.position:
            where = f"after version {self.version}'s" if self.version else "a log position (from 1 on)"
            return self._fail(version, position, f"position {position} is not {where}")
        recorded = self.recorded
        if recorded is not None and version == recorded.version and digest != recorded.hash:
            return self._fail(
                version,
                position,
                f"the chain no longer matches the verified record at version {version}: "
                "an event at or below it was changed",
            )
        self.previous = digest
        self.version = version
        self.position = position
        return True

    def finish(self, head_version: int | None, head_hash: bytes | None) -> IntegrityProblem | None:
        """Compare the last row with the stream's recorded head, and with the verified record."""
        if self.problem is None and head_version is not None:
            if head_version != self.version:
                self._fail(
                    self.version,
                    0,
                    f"stream head says version {head_version}, events end at {self.version}",
                )
            elif head_hash is not None and bytes(head_hash) != self.previous:
                self._fail(self.version, 0, "stream head hash does not match its last event")
        if self.problem is None and self.recorded is not None and self.version < self.recorded.version:
            self._fail(
                self.version,
                0,
                f"stream ends at version {self.version}, below its verified version {self.recorded.version}",
            )
        return self.problem

    def _fail(self, version: int, position: int, problem: str) -> bool:
        self.problem = IntegrityProblem(self.stream, version, position, problem)
        return False


class LogLayout:
    """Hashes (position, stream, version) of every event, fed in position order: the digest up
    to a verified record's end, to compare, and the digest up to the log's end, to record."""

    def __init__(self, recorded_end: int | None) -> None:
        self._hash = hashlib.sha256()
        self._recorded_end = recorded_end
        self.at_recorded_end: bytes | None = None
        self.end = 0

    def feed(self, position: int, stream: str, version: int) -> None:
        if self._recorded_end is not None and self.at_recorded_end is None and position > self._recorded_end:
            self.at_recorded_end = self._hash.digest()
        self._hash.update(_canonical.encode((position, stream, version)))
        self.end = position

    def digest(self) -> bytes:
        if self._recorded_end is not None and self.at_recorded_end is None:
            self.at_recorded_end = self._hash.digest()
        return self._hash.digest()


def compare_logs(
    recorded: VerifiedState, current: VerifiedState, layout_at_recorded_end: bytes
) -> list[IntegrityProblem]:
    """What differs, store-wide, between a verified record and the store as it is now."""
    if recorded.log_id != current.log_id:
        return [_store_problem(f"the verified record is of log {recorded.log_id}, not this store's")]
    problems: list[IntegrityProblem] = []
    if recorded.partitions != current.partitions:
        problems.append(
            _store_problem(
                f"the store has {current.partitions} partitions, the verified record {recorded.partitions}"
            )
        )
    if current.log_end < recorded.log_end:
        problems.append(
            _store_problem(
                f"the log ends at position {current.log_end}, before the verified end {recorded.log_end}: "
                "events were removed"
            )
        )
    elif layout_at_recorded_end != recorded.log_digest:
        problems.append(
            _store_problem(
                f"events at or below the verified end {recorded.log_end} were moved, removed or added "
                "in the log"
            )
        )
    return problems


def _store_problem(text: str) -> IntegrityProblem:
    return IntegrityProblem("", 0, 0, text)


# -- the record file -------------------------------------------------------------------------


def _state_digest(state: VerifiedState) -> str:
    return hashlib.sha256(_canonical.encode((RECORD_FORMAT, state))).hexdigest()


def encode_verified(state: VerifiedState) -> bytes:
    """The record file's text: JSON with a format name and a digest over the rest, which catches
    a damaged or hand-edited file (it is no secret: who rewrites the file can recompute it)."""
    document = {
        "format": RECORD_FORMAT,
        "state": msgspec.to_builtins(state),
        "digest": _state_digest(state),
    }
    return json.dumps(document, indent=1).encode() + b"\n"


def decode_verified(text: bytes, where: str) -> VerifiedState:
    """A record file's state; ``InvalidArgument`` naming ``where`` if it is not a whole, intact
    record of this format."""
    try:
        document = msgspec.json.decode(text, type=dict[str, object])
        if document.get("format") != RECORD_FORMAT:
            raise InvalidArgument(f"{where} is not a tidings verified record ({RECORD_FORMAT})")
        state = msgspec.convert(document.get("state"), VerifiedState)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidArgument(f"{where} is not a readable verified record: {exc}") from None
    if document.get("digest") != _state_digest(state):
        raise InvalidArgument(f"{where} is damaged: its digest does not match its content")
    return state
