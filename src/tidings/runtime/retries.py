"""Retries: how often a failing handler is tried again, and how long to wait in between."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tidings.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry budget: ``attempts`` tries in all, waiting ``backoff`` seconds after the first
    failure, ``multiplier`` times longer after each next one (at most ``max_backoff``), each wait
    shifted at random by up to ``jitter`` of itself so that failing members do not retry in step.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"Retry(attempts={self.attempts}): at least one attempt is needed")
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError(
                "Retry needs backoff >= 0, max_backoff >= 0, multiplier >= 1 and 0 <= jitter <= 1"
            )

    def delay(self, failures: int, uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th failure (1 for the first)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** max(failures - 1, 0))
        return max(0.0, base * (1 + self.jitter * (2 * uniform() - 1)))
