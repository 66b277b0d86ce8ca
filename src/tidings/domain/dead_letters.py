"""The vocabulary of the dead letter queue: why a group gave an event up, and where its letter
stands. Stored as their string values, so ``reason == "failed"`` holds for a plain string too."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from tidings.errors import InvalidArgument


class _Readable(StrEnum):
    """A vocabulary that reads any stored value: one written by another version of tidings (a
    rolling upgrade, a rollback) becomes a member of its own, named by its value, instead of an
    error that would make a queue unlistable and stop its redrives. What tidings writes is
    always a declared member; ``DeadLetterState.named`` refuses what a caller mistypes."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value
        member._value_ = value
        return member


class DeadLetterReason(_Readable):
    """Why a group dead-lettered an event."""

    #: The handler raised on its last attempt (or an error no retry can mend).
    FAILED = "failed"
    #: Past its deadline (``ttl``, ``expires_at``, the group's ``max_age``) before it was handled.
    EXPIRED = "expired"
    #: Not an event tidings can read: its raw bytes are kept.
    MALFORMED = "malformed"
    #: Its data does not open with the keys at hand (altered, or sealed for something else).
    UNDECRYPTABLE = "undecryptable"
    #: The handler did what the access policy does not allow its principal.
    DENIED = "denied"
    #: An earlier event of its key is in the queue (ordered groups keep per-key order).
    PARKED = "parked"
    #: A saga gave up compensating: an operator must act.
    STUCK = "stuck"


class DeadLetterState(_Readable):
    """Where a dead letter stands."""

    DEAD = "dead"  # in the queue
    REDRIVE = "redrive"  # asked for: its group hands it to the handler again
    REDRIVEN = "redriven"  # handled on redrive
    PURGED = "purged"  # dealt with by an operator; kept on record, out of the queue

    @classmethod
    def named(cls, state: str) -> DeadLetterState:
        """The state called ``state``; ``InvalidArgument`` naming the states otherwise."""
        if state not in cls._value2member_map_:
            choices = ", ".join(member.value for member in cls)
            raise InvalidArgument(f"dead letter state must be one of {choices}, got {state!r}")
        return cls(state)
