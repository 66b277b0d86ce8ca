"""Whether a JetStream stream keeps every event until tidings' groups have read it.

tidings creates its partition streams with no limits, so the server never removes a message: a
group may lag by days and still read everything. An operator may later give a stream a limit;
with ``discard: new`` the server then refuses new messages at the limit (the relay waits and
tries again, nothing is lost), but with ``discard: old`` (the default) it silently deletes the
oldest messages, events that lagging groups have not read yet. A retention other than ``limits``
(work queue, interest) deletes messages once a consumer acknowledges them or when no consumer is
interested, and tidings reads with direct gets and no consumers. Either is refused at open.
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig


def dropping_settings(config: StreamConfig) -> str | None:
    """Which of the stream's settings let the server delete unread events; None if none does."""
    if config.retention not in (None, RetentionPolicy.LIMITS):
        return f"retention {config.retention.value}"
    if config.discard == DiscardPolicy.NEW:
        return None  # at a limit the server refuses the publish: the relay waits, nothing is lost
    limits = [
        f"{name} {value}"
        for name, value in (
            ("max_msgs", config.max_msgs),
            ("max_bytes", config.max_bytes),
            ("max_msgs_per_subject", config.max_msgs_per_subject),
        )
        if value is not None and value > 0
    ]
    if config.max_age:  # seconds; 0 or None: kept for ever
        limits.append(f"max_age {config.max_age:g} s")
    return f"{', '.join(limits)} with discard old" if limits else None
