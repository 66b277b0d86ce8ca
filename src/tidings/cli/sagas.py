"""``tidings sagas list`` and ``tidings sagas show``: where each saga instance stands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from tidings.cli.common import LimitOption, StoreOption, fail, run_with_store, stdout
from tidings.cli.render import current_keys
from tidings.domain.envelope import RecordedEvent, format_time
from tidings.domain.events import Event
from tidings.domain.saga import (
    SagaCommandSent,
    SagaEnded,
    SagaInstance,
    SagaReplied,
    SagaStarted,
    SagaTimedOut,
)
from tidings.ports import EventStore
from tidings.runtime.app import DEFAULT_STORE
from tidings.runtime.codec import Codec

sagas_app = typer.Typer(help="Saga instances: where each stands, and its history.", no_args_is_help=True)

_STYLE = {"completed": "green", "compensated": "yellow", "stuck": "bold red", "running": "cyan"}


async def _instance(store: EventStore, stream: str) -> tuple[SagaInstance, list[tuple[RecordedEvent, Event]]]:
    codec = Codec(source="tidings-cli")
    codec.use_keys(current_keys())  # opens sealed instances when a master key is configured
    instance = SagaInstance(stream.removeprefix(f"{SagaInstance.category}-"))
    history = []
    for record in await store.read_stream(stream):
        event = codec.decode(record.envelope, record.stream, record.version)
        instance.apply(event)
        history.append((record, event))
    instance.version = len(history)
    return instance, history


@sagas_app.command("list")
def sagas_list(
    store: StoreOption = DEFAULT_STORE,
    state: Annotated[
        str | None, typer.Option("--state", help="Only instances in this state (running, stuck, ...).")
    ] = None,
    saga: Annotated[str | None, typer.Option("--saga", help="Only instances of this saga.")] = None,
    limit: LimitOption = 100,
) -> None:
    """Saga instances, newest activity last: state, step in hand, and why they ended so."""
    prefix = f"{SagaInstance.category}-{saga + ':' if saga else ''}"

    async def work(opened: EventStore) -> list[tuple[SagaInstance, str]]:
        found = []
        for info in await opened.list_streams(prefix=prefix):
            instance, history = await _instance(opened, info.stream)
            if state is None or instance.status == state:
                found.append((instance, format_time(history[-1][0].envelope.time) if history else "-"))
        return found[-limit:] if limit else found

    table = Table(title="saga instances")
    for column in ("instance", "state", "steps done", "events", "last change", "reason"):
        table.add_column(column)
    for instance, last in run_with_store(store, work):
        table.add_row(
            instance.id,
            Text(instance.status, style=_STYLE.get(instance.status, "")),
            ",".join(str(step) for step in instance.done) or "-",
            str(instance.version),
            last,
            instance.reason,
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

    async def work(opened: EventStore) -> tuple[SagaInstance, list[tuple[RecordedEvent, Event]]]:
        return await _instance(opened, SagaInstance.stream_of(instance_id))

    instance, history = run_with_store(store, work)
    if not history:
        fail(f"no saga instance {instance_id!r} (see `tidings sagas list`)")
    console = stdout()
    console.print(
        Text(f"{instance.id}: ", style="bold"), Text(instance.status, style=_STYLE.get(instance.status, ""))
    )
    table = Table()
    for column in ("time", "what"):
        table.add_column(column)
    for record, event in history:
        table.add_row(format_time(record.envelope.time), _describe(event))
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
