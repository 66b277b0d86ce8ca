"""Where a log line was written: the App, group, partition, event and correlation at work.

The consumer runtime sets these as context variables around the work it does (an App's tasks,
a group member, a partition, an event), so that every record logged inside, by tidings, by a
handler through ``ctx.log`` or by a handler's own loggers, can carry them. Nothing is attached
to any logger here: ``LogContextFilter`` adds the fields to records, and only whoever configures
logging (``tidings run``) installs it on its handler. A library never configures logging.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Final

#: The record attributes this module sets, in the order formatters show them.
FIELDS: Final = ("app", "group", "partition", "event_id", "correlation_id")

LogValue = str | int

# Immutable, so that a task that inherits the mapping from its parent cannot change the parent's.
_fields: ContextVar[Mapping[str, LogValue]] = ContextVar("tidings_log_fields", default=MappingProxyType({}))


@contextlib.contextmanager
def log_fields(
    *,
    app: str | None = None,
    group: str | None = None,
    partition: int | None = None,
    event_id: str | None = None,
    correlation_id: str | None = None,
) -> Iterator[None]:
    """Within the block (and the tasks created in it), records carry the fields given, beside
    those set further out."""
    given = {
        "app": app,
        "group": group,
        "partition": partition,
        "event_id": event_id,
        "correlation_id": correlation_id,
    }
    merged = {**_fields.get(), **{name: value for name, value in given.items() if value is not None}}
    token = _fields.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _fields.reset(token)


def current_log_fields() -> Mapping[str, LogValue]:
    """The fields set where the caller runs."""
    return _fields.get()


class LogContextFilter(logging.Filter):
    """Adds the current fields to each record that does not carry them already (an ``extra=``
    given at the call wins). Installed on a handler, it sees records of every logger; a handler's
    filters run in the task that logs, so the fields are that task's."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _fields.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
