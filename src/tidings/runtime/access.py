"""The access guard: an App runs as one principal of a policy, and may publish and subscribe only
as the policy allows.

Every event that gets a topic on its way into the log passes ``Codec.encode``, and the App's
codec calls ``Guard.check_publish`` there: appends, aggregate saves, publications, the units of
work of handlers, saga commands and timers (checked when scheduled, not when fired). Groups are
checked when registered (``App.subscribe``, ``App.add_saga``). A check is synchronous, so a
denial is kept here and recorded by the App, as soon as it can write, as a ``security.denied``
event on a stream of the principal's own; those events are tidings' own and pass no guard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tidings.domain.ids import uuid7
from tidings.domain.policy import PUBLISH, SUBSCRIBE, Policy, Principal, SecurityDenied
from tidings.errors import AccessDenied, ConfigurationError
from tidings.ports import EventStore
from tidings.runtime.codec import Codec

log = logging.getLogger("tidings.access")

#: Denials of a principal are appended to stream ``security-denied-<principal>``.
AUDIT_STREAM_PREFIX = "security-denied-"


def load_policy(source: str | os.PathLike[str] | Policy) -> Policy:
    """A policy, or the policy in a TOML file (errors name the file)."""
    if isinstance(source, Policy):
        return source
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the access policy {path}: {exc}") from None
    return Policy.from_toml(text, source=str(path))


class Guard:
    """Checks what one principal does against the policy; keeps each denial until it is recorded."""

    def __init__(self, policy: Policy, principal: str, now: Callable[[], datetime]) -> None:
        self.policy = policy
        self.principal: Principal = policy.principal(principal)
        self.audit_stream = AUDIT_STREAM_PREFIX + self.principal.name
        self._now = now
        # Each with the id its event gets when recorded: a recording that is tried again after
        # a failure it cannot see through (a cancelled append) stores each denial once.
        self._denials: list[tuple[str, SecurityDenied]] = []

    @property
    def relay(self) -> bool:
        """Whether this principal runs the relay that feeds the bus."""
        return self.principal.relay

    def check_publish(self, topic: str) -> None:
        if not self.principal.may_publish(topic):
            self._deny(PUBLISH, topic)

    def check_subscribe(self, pattern: str) -> None:
        if not self.principal.may_subscribe(pattern):
            self._deny(SUBSCRIBE, pattern)

    def _deny(self, operation: str, topic: str) -> None:
        name = self.principal.name
        denial = SecurityDenied(principal=name, operation=operation, topic=topic, time=self._now())
        self._denials.append((uuid7(), denial))
        error = AccessDenied(name, operation, topic)
        log.warning("%s", error)  # at once: a denial at subscribe time is recorded only at open
        raise error

    @property
    def pending(self) -> int:
        """Denials not recorded yet."""
        return len(self._denials)

    async def record(self, store: EventStore, codec: Codec) -> int:
        """Append the denials not recorded yet to the audit stream; returns how many. ``codec``
        has no guard: these events are tidings' own. A store that fails keeps them here for the
        next try (it is logged, not raised: the caller has a denial of its own to report)."""
        denials, self._denials = self._denials, []
        if not denials:
            return 0
        envelopes = [
            codec.encode(denial, event_id=event_id, subject=self.audit_stream, time=denial.time)
            for event_id, denial in denials
        ]
        try:
            await store.append(self.audit_stream, envelopes)
        except BaseException as exc:
            self._denials[:0] = denials
            if not isinstance(exc, Exception):
                raise
            log.warning(
                "access: %d denial(s) not recorded yet: %s: %s", len(denials), type(exc).__name__, exc
            )
            return 0
        return len(denials)
