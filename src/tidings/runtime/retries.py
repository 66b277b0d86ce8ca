"""Retries: how often a failing handler is tried again, how long to wait in between, and which
errors are not worth another attempt."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tidings.errors import (
    AccessDenied,
    BackendUnavailable,
    ConcurrencyError,
    ConfigurationError,
    InvalidArgument,
    InvalidTopic,
    MalformedEvent,
)

#: tidings' errors that another attempt would only repeat: the policy's answer, an argument or a
#: topic that can never work, data that cannot be encoded or decoded. A handler that raises one
#: is dead-lettered at once, whatever its ``Retry`` says. ``AggregateNotFound`` and
#: ``ConcurrencyError`` are not among them: the aggregate may be created, and the stream moved
#: on, by another group's handler a moment later, and a new attempt loads it afresh.
NEVER_RETRIED: tuple[type[Exception], ...] = (AccessDenied, InvalidArgument, InvalidTopic, MalformedEvent)

#: Passing faults, retried whatever ``dead_letter_on`` says: a ``dead_letter_on`` as wide as
#: ``(Exception,)`` or ``(TidingsError,)`` would otherwise send an event to the dead letter queue
#: at the first blip of the store or the bus, or the first lost race for a stream's version.
ALWAYS_RETRIED: tuple[type[Exception], ...] = (BackendUnavailable, ConcurrencyError)


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry budget: ``attempts`` tries in all, waiting ``backoff`` seconds after the first
    failure, ``multiplier`` times longer after each next one (at most ``max_backoff``), each wait
    shifted at random by up to ``jitter`` of itself so that failing members do not retry in step.

    A handler that raises one of ``dead_letter_on`` (or of ``NEVER_RETRIED``) is not tried again:
    the event goes to the group's dead letter queue at once, with the error. ``BackendUnavailable``
    and ``ConcurrencyError`` (and their subclasses) are always retried, even when a class in
    ``dead_letter_on`` covers them, such as ``Exception`` or ``TidingsError``.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.2
    dead_letter_on: tuple[type[Exception], ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"Retry(attempts={self.attempts}): at least one attempt is needed")
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                "Retry needs backoff >= 0, max_backoff >= 0, multiplier >= 1 and 0 <= jitter <= 1"
            )
        classes: object = self.dead_letter_on
        if not isinstance(classes, tuple) or not all(
            isinstance(c, type) and issubclass(c, Exception) for c in classes
        ):
            raise ConfigurationError(
                f"Retry(dead_letter_on={classes!r}) needs a tuple of exception classes, such as (ValueError,)"
            )

    def is_transient(self, error: BaseException) -> bool:
        """Whether another attempt might pass where ``error`` failed the handler."""
        if isinstance(error, ALWAYS_RETRIED):
            return True
        return not isinstance(error, NEVER_RETRIED + self.dead_letter_on)

    def delay(self, failures: int, uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th failure (1 for the first)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** max(failures - 1, 0))
        return max(0.0, base * (1 + self.jitter * (2 * uniform() - 1)))
