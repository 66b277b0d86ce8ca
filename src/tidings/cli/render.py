"""How the CLI shows things: Rich tables and lines, data as compact JSON, nothing from the store
interpreted as markup or as terminal control sequences."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import msgspec
from rich.table import Table
from rich.text import Text

from tidings.domain.envelope import JSON, MSGPACK, Envelope, RecordedEvent, to_structured
from tidings.domain.integrity import IntegrityReport
from tidings.errors import Undecryptable
from tidings.ports import StreamInfo
from tidings.runtime.crypto import SEALED
from tidings.runtime.keyring import Erasure, KeyRing

# C0 and C1 controls (ESC, CSI, ...) and the bidirectional overrides that reorder what is shown.
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_DECODE_ERRORS: Final = (msgspec.MsgspecError, ValueError, TypeError, RecursionError)


def printable(text: str) -> str:
    """``text`` with every control character shown as an escape, so that stored values cannot
    move the cursor, recolour or clear an operator's terminal."""
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def cell(text: str, style: str = "") -> Text:
    """A table cell that is never parsed as Rich markup (stored text may contain ``[...]``)."""
    return Text(printable(text), style=style)


def when(moment: datetime) -> str:
    """RFC 3339 in UTC, always with microseconds (aligned columns; exact enough for ``--at``)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_keys: KeyRing | None = None


def use_keys(keys: KeyRing | None) -> None:
    """Open sealed data with these keys from now on (the command's store loads them as it reads)."""
    global _keys
    _keys = keys


def current_keys() -> KeyRing | None:
    return _keys


def data_text(envelope: Envelope) -> str:
    """The event's data as compact JSON, decoded generically (no event classes needed)."""
    if not envelope.data:
        return ""
    kind = envelope.datacontenttype
    if kind == SEALED and _keys is not None:
        try:
            opened = _keys.open_event(envelope)
        except Undecryptable as exc:
            return f"<undecryptable: {exc}>"
        if isinstance(opened, Erasure):
            return "<erased: its data key was shredded>"
        envelope, kind = opened, opened.datacontenttype
    try:
        if kind == JSON or kind.endswith("+json"):
            value = msgspec.json.decode(envelope.data)
        elif kind == MSGPACK:
            value = msgspec.msgpack.decode(envelope.data)
        else:
            return f"<{len(envelope.data):,} bytes of {kind}>"
        return msgspec.json.encode(value).decode()
    except _DECODE_ERRORS as exc:
        return f"<undecodable {kind} data: {exc}>"


def streams_table(infos: Iterable[StreamInfo]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("stream", overflow="fold", style="cyan")
    table.add_column("version", justify="right")
    table.add_column("first event", no_wrap=True)
    table.add_column("last event", no_wrap=True)
    for info in infos:
        table.add_row(cell(info.stream), str(info.version), when(info.first_time), when(info.last_time))
    return table


def events_table(records: Iterable[RecordedEvent]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("version", justify="right")
    table.add_column("position", justify="right", style="dim")
    table.add_column("time", no_wrap=True)
    table.add_column("type", overflow="fold", style="cyan")
    table.add_column("topic", overflow="fold", style="magenta")
    table.add_column("data", overflow="fold")
    for record in records:
        envelope = record.envelope
        table.add_row(
            str(record.version),
            str(record.position),
            when(envelope.time),
            cell(envelope.type),
            cell(envelope.topic),
            cell(data_text(envelope)),
        )
    return table


def log_line(record: RecordedEvent) -> Text:
    """One event of the global log on one line (the log is streamed, not tabulated)."""
    envelope = record.envelope
    line = Text()
    line.append(f"{record.position:>8}", style="dim")
    line.append(f"  {when(envelope.time)}  ")
    line.append(printable(record.stream), style="cyan")
    line.append(f" v{record.version}  ")
    line.append(printable(envelope.type), style="bold")
    line.append("  ")
    line.append(printable(envelope.topic), style="magenta")
    data = data_text(envelope)
    if data:
        line.append("  " + printable(data))
    return line


def write_json_line(record: RecordedEvent) -> None:
    """The event as one CloudEvents structured JSON document on its own line of stdout."""
    sys.stdout.write(to_structured(record.envelope).decode() + "\n")


def report_summary(report: IntegrityReport) -> Text:
    streams = "stream" if report.streams == 1 else "streams"
    events = "event" if report.events == 1 else "events"
    return Text(f"checked {report.streams} {streams}, {report.events} {events}")


def problems_table(report: IntegrityReport) -> Table:
    table = Table(header_style="bold", title_style="bold red", title_justify="left")
    table.add_column("stream", overflow="fold", style="cyan")
    table.add_column("version", justify="right")
    table.add_column("position", justify="right")
    table.add_column("problem", overflow="fold", style="red")
    for problem in report.problems:
        table.add_row(
            cell(problem.stream) if problem.stream else cell("(storage)", "dim"),
            str(problem.version) if problem.version else "-",
            str(problem.position) if problem.position else "-",
            cell(problem.problem, "red"),
        )
    return table
