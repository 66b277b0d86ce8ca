"""Logging for ``tidings run``: every record on stderr with its time, level, logger and the
context it was written in (App, group, partition, event id, correlation id), as text for a
terminal or as one JSON object per line for a log collector.

Only the command line configures logging; the library's modules merely log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final

from tidings.domain.attributes import escape_controls
from tidings.runtime.log_context import FIELDS, LogContextFilter
from tidings.runtime.telemetry import recording_span_ids

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS: Final = ("text", "json")


def _time(record: logging.LogRecord) -> str:
    """The record's time in UTC, ISO 8601 to the millisecond (``2026-12-07T12:01:12.345Z``)."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None}


def _indented(block: str) -> str:
    return "".join(f"\n  | {line}" for line in escape_controls(block, lines=True).split("\n"))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> app=… group=… partition=… event_id=… correlation_id=…``,
    then the traceback, if any, on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{name}={escape_controls(str(value))}" for name, value in _context(record).items())
        line = f"{_time(record)} {record.levelname:<7} {record.name}: {escape_controls(record.getMessage())}"
        text = f"{line}  {fields}" if fields else line
        # A traceback's lines are marked, so that none of them (an exception's text may come
        # from the bus) can pass for a record of its own.
        if record.exc_info:
            text += _indented(self.formatException(record.exc_info))
        if record.stack_info:
            text += _indented(self.formatStack(record.stack_info))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record and line: ``time``, ``level``, ``logger``, ``message``, ``pid``,
    the context fields that are set, ``trace_id`` and ``span_id`` (hex) of the span it was
    written in if one is recorded, and ``exception`` with the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            **_context(record),
        }
        # The span the record was written in (the formatter runs in the task that logs), so
        # that a log collector joins the record to its trace.
        ids = recording_span_ids()
        if ids is not None:
            document["trace_id"], document["span_id"] = ids
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # default=str: a field set through ``extra=`` by a handler may be any object.
        return json.dumps(document, ensure_ascii=False, default=str)


class _StderrHandler(logging.Handler):
    """Writes each record to ``sys.stderr`` as it is when the record comes (as ``logging``'s last
    resort does), not to the stream that was stderr when logging was configured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: str, format: str) -> None:
    """Send every logger's records at ``level`` and above to stderr, formatted as ``format`` (one
    of ``FORMATS``), with the context fields added. Replaces the root logger's handlers: the
    process is the command's."""
    handler = _StderrHandler()
    handler.addFilter(LogContextFilter())
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
