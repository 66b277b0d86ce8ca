"""Where a log line was written: the App, group, partition, event and correlation at work.

The consumer runtime sets these as context variables around the work it does (an App's tasks,
a group member, a partition, an event), so that every record logged inside, by tidings, by a
handler through ``ctx.log`` or by a handler's own loggers, can carry them. Nothing is attached
to any logger here: ``LogContextFilter`` adds the fields to records, and only whoever configures
logging (``tidings run``) installs it on its handler. A library never configures logging.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Final

#: The record attributes this module sets, in the order formatters show them.
FIELDS: Final = ("app", "group", "partition", "event_id", "correlation_id")

LogValue = str | int

# Immutable, so that a task that inherits the mapping from its parent cannot change the parent's.
_fields: ContextVar[Mapping[str, LogValue]] = ContextVar("tidings_log_fields", default=MappingProxyType({}))


class log_fields:  # named as the function it replaces: ``with log_fields(...)``
    """Within the block (and the tasks created in it), records carry the fields given, beside
    those set further out.

    A class rather than a generator-based context manager: the consumer enters one per event,
    and a generator, its helper and its wrapper cost about ten Python calls each time."""

    __slots__ = ("_given", "_token")

    def __init__(
        self,
        *,
        app: str | None = None,
        group: str | None = None,
        partition: int | None = None,
        event_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        given: dict[str, LogValue] = {}
        if app is not None:
            given["app"] = app
        if group is not None:
            given["group"] = group
        if partition is not None:
            given["partition"] = partition
        if event_id is not None:
            given["event_id"] = event_id
        if correlation_id is not None:
            given["correlation_id"] = correlation_id
        self._given = given
        self._token: Token[Mapping[str, LogValue]] | None = None

    def __enter__(self) -> None:
        self._token = _fields.set(MappingProxyType({**_fields.get(), **self._given}))

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _fields.reset(self._token)
            self._token = None


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
