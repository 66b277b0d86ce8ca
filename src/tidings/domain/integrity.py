"""The hash chain that makes tampering with stored events visible.

Each stored event carries ``sha256(previous hash ‖ canonical bytes of stream, version and
envelope)``; the first event of a stream chains to 32 zero bytes. Altering, removing or
reordering an event breaks the links from it on, and the stream's recorded head (version and
hash) catches a stream cut short at its end.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

GENESIS: Final = bytes(32)


def chain_hash(previous: bytes, content: bytes) -> bytes:
    """``sha256(previous hash ‖ content)``; the content names the stream and version itself."""
    return hashlib.sha256(previous + content).digest()


class IntegrityProblem(msgspec.Struct, frozen=True):
    """The first break found in one stream (or in the storage itself, with ``stream`` empty)."""

    stream: str
    version: int
    position: int
    problem: str


class IntegrityReport(msgspec.Struct, frozen=True):
    """What ``verify`` found: how much it checked and the first break of each damaged stream."""

    streams: int
    events: int
    problems: list[IntegrityProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


class StreamChecker:
    """Checks the rows of one stream, read in version order, against their chain and head."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.previous = GENESIS
        self.version = 0
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
        self.previous = digest
        self.version = version
        return True

    def finish(self, head_version: int | None, head_hash: bytes | None) -> IntegrityProblem | None:
        """Compare the last row with the stream's recorded head."""
        if self.problem is None and head_version is not None:
            if head_version != self.version:
                self._fail(
                    self.version,
                    0,
                    f"stream head says version {head_version}, events end at {self.version}",
                )
            elif head_hash is not None and bytes(head_hash) != self.previous:
                self._fail(self.version, 0, "stream head hash does not match its last event")
        return self.problem

    def _fail(self, version: int, position: int, problem: str) -> bool:
        self.problem = IntegrityProblem(self.stream, version, position, problem)
        return False
