"""What an App's consumer groups run: a subscription per group, handlers and sagas alike, each
checked when it is made (a name, a pattern, the policy), so that a mistake fails at import time
rather than when the App runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from tidings.domain.events import EventRegistry
from tidings.domain.saga import Saga
from tidings.domain.topics import AnyOf, Pattern, compile_pattern
from tidings.errors import ConfigurationError
from tidings.runtime.access import Guard
from tidings.runtime.consuming import Subscription
from tidings.runtime.context import Handler
from tidings.runtime.outbox import RESERVED_GROUP_PREFIX
from tidings.runtime.retries import Retry
from tidings.runtime.saga_engine import SagaEngine


class Subscriptions:
    """The App ``app``'s groups (``by_group``) and its sagas (``sagas``, each also a group)."""

    def __init__(self, app: str, registry: EventRegistry, now: Callable[[], datetime], guard: Guard | None):
        self._app = app
        self._registry = registry
        self._now = now
        self._guard = guard
        self.by_group: dict[str, Subscription] = {}
        self.sagas: dict[str, SagaEngine] = {}

    def check(self, pattern: str, group: str) -> Pattern | AnyOf:
        """The compiled ``pattern``, if ``group`` may subscribe to it under that name: with a
        policy, ``AccessDenied`` unless the principal may subscribe to all of it."""
        compiled = compile_pattern(pattern)
        if not group or any(c.isspace() for c in group):
            raise ConfigurationError(f"a group needs a name without spaces, got {group!r}")
        if group.startswith(RESERVED_GROUP_PREFIX):
            raise ConfigurationError(f"group names starting {RESERVED_GROUP_PREFIX!r} are tidings' own")
        if self._guard is not None:
            self._guard.check_subscribe(pattern)
        return compiled

    def add(
        self,
        pattern: Pattern | AnyOf,
        group: str,
        handler: Handler,
        *,
        retry: Retry | None,
        max_age: timedelta | None,
        batch_size: int,
        ordered: bool,
    ) -> None:
        if group in self.by_group:
            raise ConfigurationError(f"group {group!r} already has a handler in App {self._app!r}")
        self.by_group[group] = Subscription(
            pattern, group, handler, retry or Retry(), max_age, batch_size, ordered
        )

    def add_saga(self, saga: Saga) -> None:
        """Run the saga's instances: a consumer group of its own reads its starting events, the
        replies of its steps and its timeouts (see ``runtime/saga_engine.py``)."""
        engine = SagaEngine(saga, self._registry, self._now)
        if engine.group in self.by_group:
            raise ConfigurationError(f"saga {saga.name!r} is already added to App {self._app!r}")
        if not saga.steps:
            raise ConfigurationError(f"saga {saga.name!r} has no steps")
        if self._guard is not None:
            for pattern in engine.pattern.patterns:  # its start, its replies and its timeouts
                self._guard.check_subscribe(pattern.text)
        self.sagas[saga.name] = engine
        self.by_group[engine.group] = Subscription(engine.pattern, engine.group, engine.handle)
