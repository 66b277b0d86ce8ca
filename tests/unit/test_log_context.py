"""The context fields of log records: set around work, inherited by tasks, never leaked."""

from __future__ import annotations

import asyncio
import logging

from tidings.runtime.log_context import LogContextFilter, current_log_fields, log_fields


def _record(**extra: object) -> dict[str, object]:
    """The attributes of a record that went through the filter."""
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "message", None, None)
    record.__dict__.update(extra)
    LogContextFilter().filter(record)
    return record.__dict__


async def test_fields_nest_reach_tasks_and_are_reset() -> None:
    seen: dict[str, object] = {}

    async def in_task() -> None:
        seen.update(current_log_fields())
        with log_fields(event_id="e-2"):  # a task's own fields stay in the task
            pass

    with log_fields(app="a", group="g"):
        with log_fields(partition=0, event_id="e-1"):
            record = _record()
            assert [record[name] for name in ("app", "group", "partition", "event_id")] == [
                "a",
                "g",
                0,
                "e-1",
            ]
            await asyncio.create_task(in_task())
        assert dict(current_log_fields()) == {"app": "a", "group": "g"}
    assert seen == {"app": "a", "group": "g", "partition": 0, "event_id": "e-1"}
    assert dict(current_log_fields()) == {}
    assert "app" not in _record()


def test_an_extra_given_at_the_call_wins() -> None:
    with log_fields(app="outer", event_id="e-1"):
        record = _record(event_id="given")
    assert record["event_id"] == "given" and record["app"] == "outer"
