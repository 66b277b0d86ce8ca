"""``tidings sagas list`` and ``tidings sagas show``: where each saga instance stands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final, get_args

import typer
from rich.table import Table
from rich.text import Text

from tidings.app import DEFAULT_STORE
from tidings.cli.common import LimitOption, StoreOption, fail, note, one_of, run_with_store, stdout
from tidings.cli.render import current_keys, data_text, printable
from tidings.domain.envelope import RecordedEvent, format_time
from tidings.domain.events import Event
from tidings.domain.saga import (
    SagaCommandSent,
    SagaEnded,
    SagaInstance,
    SagaReplied,
    SagaStarted,
    SagaTimedOut,
    Status,
)
from tidings.ports import EventStore
from tidings.runtime.codec import Codec
from tidings.runtime.crypto import SEALED
from tidings.runtime.master_key import ENV_KEY_FILE

sagas_app = typer.Typer(help="Saga instances: where each stands, and its history.", no_args_is_help=True)

SAGA_STATES: Final = get_args(Status)
# What `sagas list` shows for an instance whose events it cannot open without the master key;
# it can be asked for like the others.
SEALED_STATE: Final = "sealed"
LISTED_STATES: Final = (*SAGA_STATES, SEALED_STATE)
_STYLE = {
    "completed": "green",
    "compensated": "yellow",
    "stuck": "bold red",
    "running": "cyan",
    SEALED_STATE: "dim",
}


@dataclass
class _Seen:
    """A saga instance as far as the CLI can read it: without the master key its sealed events
    stay sealed (``None`` in the history), and so does its state."""

    instance: SagaInstance
    history: list[tuple[RecordedEvent, Event | None]]

    @property
    def sealed(self) -> int:
        """How many bytes of its events' data could not be opened."""
        return sum(len(record.envelope.data) for record, event in self.history if event is None)

    @property
    def status(self) -> str:
        return SEALED_STATE if self.sealed else self.instance.status


async def _instance(store: EventStore, stream: str) -> _Seen:
    codec = Codec(source="tidings-cli")
    keys = current_keys()
    codec.use_keys(keys)  # opens sealed instances when a master key is configured
    instance = SagaInstance(stream.removeprefix(f"{SagaInstance.category}-"))
    history: list[tuple[RecordedEvent, Event | None]] = []
    for record in await store.read_stream(stream):
        if keys is None and record.envelope.datacontenttype == SEALED:
            history.append((record, None))  # shown by its size: reading never needs the key
            continue
        event = codec.decode(record.envelope, record.stream, record.version)
        instance.apply(event)
        history.append((record, event))
    instance.version = len(history)
    return _Seen(instance, history)


@sagas_app.command("list")
def sagas_list(
    store: StoreOption = DEFAULT_STORE,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="|".join(LISTED_STATES),
            callback=one_of("--state", LISTED_STATES),
            help="Only instances in this state (sealed: those that need the master key to read).",
        ),
    ] = None,
    saga: Annotated[str | None, typer.Option("--saga", help="Only instances of this saga.")] = None,
    limit: LimitOption = 100,
) -> None:
    """Saga instances, newest activity last: state, step in hand, and why they ended so."""
    prefix = f"{SagaInstance.category}-{saga + ':' if saga else ''}"

    async def work(opened: EventStore) -> list[_Seen] | None:
        infos = await opened.list_streams(prefix=prefix)
        if saga and not infos:
            return None
        return [await _instance(opened, info.stream) for info in infos]

    seen = run_with_store(store, work)
    if seen is None:
        fail(f"no saga {saga!r} in this store (see `tidings sagas list`)")
    found = [one for one in seen if state is None or one.status == state]
    left_out = sum(1 for one in seen if state not in (None, SEALED_STATE) and one.sealed)
    if left_out:
        note(f"{left_out} sealed instance(s) left out: their state needs the master key ({ENV_KEY_FILE})")
    found = found[-limit:] if limit else found
    if not found:
        note("no saga instances" + (f" in state {state!r}" if state else ""))
        return
    table = Table(title="saga instances")
    for column in ("instance", "state", "steps done", "events", "last change", "reason"):
        table.add_column(column)
    for one in found:
        instance = one.instance
        last = format_time(one.history[-1][0].envelope.time) if one.history else "-"
        table.add_row(
            instance.id,
            Text(one.status, style=_STYLE.get(one.status, "")),
            ",".join(str(step) for step in instance.done) or "-",
            str(len(one.history)),
            last,
            f"{one.sealed:,} bytes sealed (set {ENV_KEY_FILE} to open)" if one.sealed else instance.reason,
        )
    stdout().print(table)


@sagas_app.command("show")
def sagas_show(
    instance_id: Annotated[
        str, typer.Argument(metavar="INSTANCE", help="<saga>:<key>, as `sagas list` shows")
    ],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """One instance's timeline: started, each command sent and answered, timeouts, the end."""

    async def work(opened: EventStore) -> _Seen:
        return await _instance(opened, SagaInstance.stream_of(instance_id))

    seen = run_with_store(store, work)
    if not seen.history:
        fail(f"no saga instance {instance_id!r} (see `tidings sagas list`)")
    console = stdout()
    console.print(
        Text(f"{seen.instance.id}: ", style="bold"), Text(seen.status, style=_STYLE.get(seen.status, ""))
    )
    table = Table()
    for column in ("time", "what"):
        table.add_column(column)
    for record, event in seen.history:
        envelope = record.envelope
        what = _describe(event) if event is not None else f"{envelope.type} {data_text(envelope)}"
        table.add_row(format_time(envelope.time), Text(printable(what)))
    console.print(table)


def _describe(event: Event) -> str:
    match event:
        case SagaStarted():
            return f"started by {event.start_type} (key {event.key})"
        case SagaCommandSent():
            what = "compensation" if event.kind == "undo" else "command"
            step = f"step {event.step} ({event.step_name})" if event.step_name else f"step {event.step}"
            return f"{step}: {what} {event.command_type} sent (attempt {event.attempt})"
        case SagaReplied(late=True):
            return f"step {event.step}: late success {event.reply_type}; undoing it"
        case SagaReplied():
            verdict = "succeeded" if event.succeeded else "failed"
            what = "compensation confirmed" if event.kind == "undo" else verdict
            return f"step {event.step}: {what} ({event.reply_type or 'sent, no confirmation expected'})"
        case SagaTimedOut():
            return f"step {event.step}: {'compensation ' if event.kind == 'undo' else ''}timed out"
        case SagaEnded():
            return f"ended: {event.outcome}" + (f" ({event.reason})" if event.reason else "")
    return type(event).__name__
