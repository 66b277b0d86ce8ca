"""The ``tidings`` command: look into an event store and check its integrity.

Every command opens the store it is given with ``--store`` (or ``TIDINGS_STORE``) without ever
creating one, and turns every tidings error into one red line on stderr and exit code 2; so is an
unknown stream, id, saga or state, and a command that finds nothing to act on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Final, TypeVar

import typer
from rich.text import Text

from tidings.app import DEFAULT_STORE
from tidings.cli.acl import acl_app
from tidings.cli.certs import certs_app
from tidings.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    MAX_NUMBER,
    JsonOption,
    LimitOption,
    StoreOption,
    fail,
    note,
    parse_time,
    run_with_store,
    stdout,
)
from tidings.cli.doctor import doctor
from tidings.cli.keys import keys_app
from tidings.cli.operations import demo, dlq_app, run, trace
from tidings.cli.render import (
    events_table,
    log_line,
    problems_table,
    report_summary,
    streams_table,
    write_json_line,
)
from tidings.cli.sagas import sagas_app
from tidings.domain.envelope import RecordedEvent
from tidings.errors import IntegrityError, InvalidArgument
from tidings.ports import EventStore
from tidings.runtime.verified_record import read_verified_record, write_verified_record

T = TypeVar("T")

FOLLOW_INTERVAL: Final = 0.2  # seconds between polls of ``tidings log --follow``
#: What the stores add to an integrity error; ``verify`` is what the reader is running already.
VERIFY_ADVICE: Final = "; run `tidings verify`"

app = typer.Typer(
    name="tidings",
    help="Inspect a tidings event store: streams, events, the global log, and its integrity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a local may hold a store URL with its password
)


app.add_typer(dlq_app, name="dlq")
app.add_typer(sagas_app, name="sagas")
app.add_typer(certs_app, name="certs")
app.add_typer(keys_app, name="keys")
app.add_typer(acl_app, name="acl")
app.command("run")(run)
app.command("trace")(trace)
app.command("demo")(demo)
app.command("doctor")(doctor)


def _package_version() -> str:
    try:
        return metadata.version("tidings")
    except metadata.PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"tidings {_package_version()}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Inspect a tidings event store: streams, events, the global log, and its integrity."""


@app.command()
def streams(
    store: StoreOption = DEFAULT_STORE,
    prefix: Annotated[
        str, typer.Option("--prefix", metavar="P", help="Only streams whose name starts with P.")
    ] = "",
    limit: LimitOption = None,
) -> None:
    """List the streams with their version (event count) and first and last event times."""
    infos = run_with_store(store, lambda es: es.list_streams(prefix=prefix, limit=limit))
    if not infos:
        note(f"no streams starting with {prefix!r}" if prefix else "no streams")
        return
    stdout().print(streams_table(infos))


@app.command()
def events(
    stream: Annotated[str, typer.Argument(help="The stream to show.", show_default=False)],
    store: StoreOption = DEFAULT_STORE,
    at: Annotated[
        datetime | None,
        typer.Option(
            "--at",
            parser=parse_time,
            metavar="TIME",
            help="Time travel: the stream as it was at an ISO-8601 time (naive means UTC).",
        ),
    ] = None,
    from_version: Annotated[
        int, typer.Option("--from-version", min=1, max=MAX_NUMBER, metavar="N", help="Start at version N.")
    ] = 1,
    to_version: Annotated[
        int | None, typer.Option("--to-version", min=1, max=MAX_NUMBER, metavar="N", help="End at version N.")
    ] = None,
    backwards: Annotated[bool, typer.Option("--backwards", help="Newest first.")] = False,
    limit: LimitOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the events of one stream, checked against their hash chain as they are read."""

    async def show(es: EventStore) -> bool:
        records = await es.read_stream(
            stream, from_version=from_version, to_version=to_version, at=at, backwards=backwards, limit=limit
        )
        if not records and not await es.stream_version(stream):
            return False
        # Shown inside the runner: encoding an event for --json may raise a tidings error too.
        if as_json:
            for record in records:
                write_json_line(record)
        elif records:
            stdout().print(events_table(records))
        else:
            note(f"no events in stream {stream!r}" + (f" at {at.isoformat()}" if at else ""))
        return True

    if not run_with_store(store, show):
        fail(f"no stream {stream!r} (see `tidings streams`)")


@app.command()
def log(
    store: StoreOption = DEFAULT_STORE,
    after: Annotated[
        int,
        typer.Option(
            "--after", min=0, max=MAX_NUMBER, metavar="POSITION", help="Start after this log position."
        ),
    ] = 0,
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic", metavar="PATTERN", help="Only topics matching PATTERN ('*' one token, '>' the rest)."
        ),
    ] = None,
    limit: LimitOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the global log, every stream's events in the order they were stored."""
    console = stdout()

    def emit(record: RecordedEvent) -> None:
        if as_json:
            write_json_line(record)
        else:
            console.print(log_line(record), soft_wrap=True)

    async def tail(es: EventStore) -> int:
        position, remaining, shown = after, limit, 0
        while True:
            # Everything up to the head as it is now will have been scanned by the read below,
            # matching the pattern or not; the next poll need not scan it again.
            head = await es.head_position() if follow else 0
            async for record in es.read_log(after=position, pattern=topic, limit=remaining):
                emit(record)
                position, shown = record.position, shown + 1
                if remaining is not None:
                    remaining -= 1
            if not follow or remaining == 0:
                return shown
            position = max(position, head)
            sys.stdout.flush()
            await asyncio.sleep(FOLLOW_INTERVAL)

    # Ctrl-C is how --follow is meant to end.
    shown = run_with_store(store, tail, interrupt_code=EXIT_OK if follow else EXIT_INTERRUPTED)
    if not shown and not as_json and not follow:
        note(f"no events matching {topic!r}" if topic else "no events")


RecordOption = Annotated[
    Path | None,
    typer.Option(
        "--record",
        metavar="FILE",
        help="After a verify that finds nothing, write every stream's head and the log's end to FILE "
        "(owner-only); keep it where the database's writers cannot reach it.",
    ),
]
AgainstOption = Annotated[
    Path | None,
    typer.Option(
        "--against",
        metavar="FILE",
        help="Also check that every stream head recorded in FILE (by --record) is still in its chain, "
        "unchanged: catches edits whose hash chain was recomputed.",
    ),
]


def _on_record_file(work: Callable[[], T]) -> T:
    """Run ``work`` on a verified record file; a missing, damaged or unwritable file is one red
    line and exit code 2, like any other input the command cannot use."""
    try:
        return work()
    except InvalidArgument as exc:
        fail(str(exc))


@app.command()
def verify(
    store: StoreOption = DEFAULT_STORE, record: RecordOption = None, against: AgainstOption = None
) -> None:
    """Check every stream's hash chain and the storage itself; exit 1 if anything is wrong."""
    # Read first: a missing or damaged record is refused before the store is even opened.
    recorded = _on_record_file(lambda: read_verified_record(against)) if against is not None else None
    # Damage so bad that the store cannot even be read is a finding too, not a failure to check.
    report = run_with_store(
        store,
        lambda es: es.verify(recorded),
        exit_codes={IntegrityError: EXIT_PROBLEMS},
        unsaid=VERIFY_ADVICE,
    )
    console = stdout()
    console.print(report_summary(report))
    if report.ok:
        if record is not None and report.verified is not None:
            state = report.verified
            _on_record_file(lambda: write_verified_record(record, state))
            note(f"recorded {len(state.heads)} stream heads and log end {state.log_end} in {record}")
        console.print(Text("ok", style="bold green"))
        return
    count = len(report.problems)
    console.print(problems_table(report))
    console.print(Text(f"{count} problem{'s' if count != 1 else ''} found", style="bold red"))
    raise typer.Exit(EXIT_PROBLEMS)


def main() -> None:
    """The console script ``tidings``."""
    app()
