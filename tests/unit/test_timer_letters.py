"""A timer that cannot fire is dead-lettered with texts any store can hold: a NUL quoted from its
event in an error would fail the letter's insert on PostgreSQL, and the timer worker would retry
that transaction, with every timer behind it, for ever."""

from __future__ import annotations

from datetime import UTC, datetime

from tidings.domain.dead_letters import DeadLetterReason
from tidings.errors import InvalidArgument, MalformedEvent
from tidings.ports import Timer
from tidings.runtime.timers import _letter


def test_a_timer_letter_holds_no_control_character() -> None:
    timer = Timer(id="t-1", stream="s-1", envelope=None, error="bad\x00row", raw=b"\x00")
    now = datetime.now(UTC)
    malformed = _letter(timer, DeadLetterReason.MALFORMED, MalformedEvent("timer t-1: bad\x00row"), now)
    try:
        raise InvalidArgument("refused key 'a\x00b'")
    except InvalidArgument as exc:
        failed = _letter(timer, DeadLetterReason.FAILED, exc, now)
    for letter in (malformed, failed):
        assert "\x00" not in letter.error and "\x00" not in letter.traceback
    assert "bad" in malformed.error and "row" in malformed.error  # escaped, not dropped
    assert "InvalidArgument" in failed.traceback
