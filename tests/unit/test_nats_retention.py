"""Which JetStream stream settings let the server delete events that groups have not read."""

from __future__ import annotations

import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

from tidings.adapters.nats.retention import dropping_settings


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, None),  # as tidings creates its streams: no limit at all
        ({"max_msgs": -1, "max_bytes": -1, "max_age": 0}, None),  # the server's way to say none
        ({"max_bytes": 1 << 20}, "max_bytes 1048576 with discard old"),
        ({"max_msgs": 10, "max_age": 60.0}, "max_msgs 10, max_age 60 s with discard old"),
        ({"max_msgs_per_subject": 1}, "max_msgs_per_subject 1 with discard old"),
        ({"max_bytes": 1 << 20, "discard": DiscardPolicy.NEW}, None),  # refused, not dropped
        ({"retention": RetentionPolicy.INTEREST}, "retention interest"),
        ({"retention": RetentionPolicy.WORK_QUEUE, "discard": DiscardPolicy.NEW}, "retention workqueue"),
    ],
)
def test_limits_that_drop_unread_events_are_named(settings: dict[str, object], named: str | None) -> None:
    assert dropping_settings(StreamConfig(name="s", **settings)) == named  # type: ignore[arg-type]
