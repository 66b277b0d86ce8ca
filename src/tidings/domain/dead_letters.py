"""The vocabulary of the dead letter queue: why a group gave an event up, and where its letter
stands. Stored as their string values, so ``reason == "failed"`` holds for a plain string too."""

from __future__ import annotations

from enum import StrEnum

from tidings.errors import InvalidArgument


class DeadLetterReason(StrEnum):
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


class DeadLetterState(StrEnum):
    """Where a dead letter stands."""

    DEAD = "dead"  # in the queue
    REDRIVE = "redrive"  # asked for: its group hands it to the handler again
    REDRIVEN = "redriven"  # handled on redrive
    PURGED = "purged"  # dealt with by an operator; kept on record, out of the queue

    @classmethod
    def named(cls, state: str) -> DeadLetterState:
        """The state called ``state``; ``InvalidArgument`` naming the states otherwise."""
        try:
            return cls(state)
        except ValueError:
            choices = ", ".join(member.value for member in cls)
            raise InvalidArgument(f"dead letter state must be one of {choices}, got {state!r}") from None
