"""Operating consumers: ``tidings run``, ``tidings dlq ...`` and ``tidings trace``."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final, NamedTuple

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from tidings.app import DEFAULT_STORE, App
from tidings.cli.common import (
    EXIT_OK,
    EXIT_PROBLEMS,
    LimitOption,
    StoreOption,
    fail,
    note,
    one_of,
    run_with_store,
    scrub,
    stdout,
)
from tidings.cli.logs import FORMATS, LEVELS, configure_logging
from tidings.cli.render import current_keys, data_text
from tidings.domain.dead_letters import DeadLetterState
from tidings.domain.envelope import RecordedEvent, format_time, from_structured
from tidings.endpoints import probed, prometheus_exposition
from tidings.errors import ConfigurationError, TidingsError
from tidings.ports import DeadLetter, EventStore, Trace
from tidings.runtime.crypto import SEALED
from tidings.runtime.log_context import log_fields
from tidings.runtime.monitoring import SAMPLE_INTERVAL
from tidings.workers import until_signalled

dlq_app = typer.Typer(help="The dead letter queues of consumer groups.", no_args_is_help=True)

run_log = logging.getLogger("tidings.run")

GroupOption = Annotated[str | None, typer.Option("--group", help="Only this consumer group.")]
#: A dead letter's states (see ``tidings.ports.DeadLetter.state``), and "all" for every one.
LETTER_STATES: Final = (*(state.value for state in DeadLetterState), "all")
ALL_LETTERS: Final = 1_000_000  # as many as a command looks through to find ids


def load_app(target: str, *, store: str | None = None, bus: str | None = None) -> App:
    """``package.module:attribute`` (the attribute defaults to ``app``), imported from here;
    ``store`` and ``bus``, when given, replace the App's URLs (before it opens)."""
    module_name, _, attribute = target.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"cannot import {module_name!r}: {exc}")
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        fail(f"{target!r} is not a tidings.App (found {type(app).__name__})")
    try:
        app.use_urls(store=store, bus=bus)
    except ConfigurationError as exc:  # the module opened its App already
        fail(str(exc))
    return app


def run(
    target: Annotated[
        str, typer.Argument(metavar="MODULE:APP", help="Where the App is, e.g. shop.billing:app")
    ],
    store: Annotated[
        str | None,
        typer.Option("--store", metavar="URL", help="The event store, over the App's and TIDINGS_STORE."),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            "--bus", metavar="URL", help="A bus (distributed mode), over the App's and TIDINGS_BUS."
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes.")] = 1,
    lease_ttl: Annotated[float, typer.Option("--lease-ttl", min=0.5, help="Seconds a lease lasts.")] = 10.0,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help=f"One of {', '.join(LEVELS)}.")
    ] = "INFO",
    log_format: Annotated[
        str, typer.Option("--log-format", metavar="FORMAT", help="text, or json: one object per line.")
    ] = "text",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="TIDINGS_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve /metrics, /healthz and /readyz on this port (worker i: port + i; 0: any free port).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", metavar="HOST", help="The address --metrics-port binds.")
    ] = "127.0.0.1",
    metrics_interval: Annotated[
        float,
        typer.Option("--metrics-interval", min=0.1, help="Seconds between samples of the store's metrics."),
    ] = SAMPLE_INTERVAL,
) -> None:
    """Run an App's consumer groups until SIGTERM or SIGINT (then finish in-flight work).

    Logs go to stderr, each record with its time, level, logger, and where it was written: App,
    group, partition, event id and correlation id."""
    level = log_level.upper()
    if level not in LEVELS:
        fail(f"--log-level must be one of {', '.join(LEVELS)}, not {log_level!r}")
    log_format = log_format.lower()
    if log_format not in FORMATS:
        fail(f"--log-format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    configure_logging(level, log_format)  # before the import: the module's own lines are formatted too
    exposition = None
    if metrics_port is not None:
        try:  # before the App's import: a missing extra is told at once, in one line
            exposition = prometheus_exposition()
        except ConfigurationError as exc:
            fail(str(exc))
    if workers == 1:
        app = load_app(target, store=store, bus=bus)
        groups = ", ".join(app.subscriptions) or "(none)"
        run_log.info("running %s: groups %s", app.name, groups, extra={"app": app.name})
        try:
            if exposition is None or metrics_port is None:
                asyncio.run(app.run(lease_ttl=lease_ttl))
            else:
                probes = Probes(metrics_host, metrics_port, metrics_interval, exposition)
                asyncio.run(_run_probed(app, lease_ttl, probes))
        except OSError as exc:  # the metrics port is taken, or the host is not this machine's
            fail(f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}")
        except TidingsError as exc:  # a bad URL, an unreachable server, a refused policy
            message = scrub(str(exc) or type(exc).__name__, app.store_url)
            fail(scrub(message, app.bus_url) if app.bus_url else message)
        raise typer.Exit(EXIT_OK)
    load_app(target, store=store, bus=bus)  # fail early, in the parent, if the target is wrong
    command = [
        sys.executable,
        "-m",
        "tidings",
        "run",
        target,
        "--workers",
        "1",
        "--lease-ttl",
        str(lease_ttl),
    ]
    command += ["--log-level", level, "--log-format", log_format]
    # The URLs reach the workers through their environment (which TIDINGS_* the App reads over its
    # own), not their command lines, which every user of the machine can list with a password.
    env = dict(os.environ)
    env.update({name: url for name, url in (("TIDINGS_STORE", store), ("TIDINGS_BUS", bus)) if url})
    served = [
        [
            f"--metrics-port={metrics_port + i if metrics_port else 0}",
            f"--metrics-host={metrics_host}",
            f"--metrics-interval={metrics_interval}",
        ]
        if metrics_port is not None
        else []
        for i in range(workers)
    ]
    children = [subprocess.Popen(command + more, env=env) for more in served]  # noqa: S603 - our own command

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    raise typer.Exit(max(codes, default=0) if any(codes) else EXIT_OK)


class Probes(NamedTuple):
    """Where and how ``tidings run --metrics-port`` serves its metrics and probes."""

    host: str
    port: int
    interval: float  # seconds between two samples of the store
    exposition: Callable[[], bytes]


async def _run_probed(app: App, lease_ttl: float, probes: Probes) -> None:
    """``App.run`` with its metrics sampled and its endpoints served (``tidings.endpoints``)."""
    with log_fields(app=app.name):
        async with app, app.running(lease_ttl=lease_ttl, monitoring=probes.interval):
            if app.monitor is None:  # made by ``running``; the check tells the type checker so
                raise ConfigurationError(f"App {app.name!r} runs without its monitor")
            async with probed(probes.host, probes.port, app.monitor, probes.exposition):
                await until_signalled()


@dlq_app.command("list")
def dlq_list(
    store: StoreOption = DEFAULT_STORE,
    group: GroupOption = None,
    state: Annotated[
        str,
        typer.Option(
            "--state",
            metavar="|".join(LETTER_STATES),
            callback=one_of("--state", LETTER_STATES),
            help="Only dead letters in this state (all: every state).",
        ),
    ] = "dead",
    limit: LimitOption = 100,
) -> None:
    """Dead letters, oldest first."""

    async def work(opened: EventStore) -> list[DeadLetter]:
        return await opened.groups.dead_letters(
            group, state=None if state == "all" else DeadLetterState(state), limit=limit or 100
        )

    letters = run_with_store(store, work)
    if not letters:
        of_group = f" of group {group!r}" if group else ""
        note(f"no dead letters{of_group}" + ("" if state == "all" else f" in state {state!r}"))
        return
    table = Table(title=f"{len(letters)} dead letter(s)")
    for column in ("id", "group", "reason", "attempts", "topic", "event", "dead at", "state", "error"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        table.add_row(
            str(letter.id),
            letter.group,
            letter.reason,
            str(letter.attempts),
            letter.topic or "",
            letter.event_id or "",
            format_time(letter.dead_at),
            letter.state,
            Text(letter.error[:120]),
        )
    stdout().print(table)


@dlq_app.command("show")
def dlq_show(
    entry: Annotated[int, typer.Argument(help="The dead letter's id.")], store: StoreOption = DEFAULT_STORE
) -> None:
    """One dead letter: why, the traceback, and the original envelope."""

    async def work(opened: EventStore) -> list[DeadLetter]:
        letters = await opened.groups.dead_letters(None, state=None, limit=ALL_LETTERS)
        keys = current_keys()  # with a master key: load what the letter's sealed data needs
        for letter in letters:
            if letter.id == entry and letter.envelope and keys is not None:
                with contextlib.suppress(TidingsError):
                    await keys.load([from_structured(letter.envelope, max_size=2**31).data])
        return letters

    found = [letter for letter in run_with_store(store, work) if letter.id == entry]
    if not found:
        fail(f"no dead letter {entry}")
    letter = found[0]
    console = stdout()
    for label, value in (
        ("group", letter.group),
        ("reason", letter.reason),
        ("state", letter.state),
        ("attempts", str(letter.attempts)),
        ("event", f"{letter.event_id} ({letter.topic}) at position {letter.position} of {letter.stream}"),
        ("first failed", format_time(letter.first_failed) if letter.first_failed else "-"),
        ("dead at", format_time(letter.dead_at)),
        ("error", letter.error),
    ):
        console.print(Text(f"{label:>12}: ", style="bold"), Text(value), sep="")
    if letter.traceback:
        console.print(Text(letter.traceback))
    if letter.envelope:
        console.print(Text(letter.envelope.decode(errors="replace")))
        with contextlib.suppress(TidingsError):
            envelope = from_structured(letter.envelope, max_size=2**31)
            if envelope.datacontenttype == SEALED:
                console.print(Text("        data: ", style="bold"), Text(data_text(envelope)), sep="")
    elif letter.raw:
        console.print(Text(f"raw bytes: {letter.raw[:400]!r}"))


def _change(store: str, entries: list[int], group: str | None, every: bool, state: DeadLetterState) -> int:
    """Set the state of the named dead letters (or of every dead one of ``group``); one red line
    and exit code 2 when there is nothing to change: an unknown id changes nothing at all."""
    if not entries and not (group and every):
        fail("name dead letter ids, or --group GROUP --all")
    verb, done = (
        ("redrive", "queued for redrive") if state is DeadLetterState.REDRIVE else ("purge", "purged")
    )
    of_group = f" of group {group!r}" if group else ""

    async def work(opened: EventStore) -> tuple[int, str]:
        log = opened.groups
        if not entries:
            chosen = [
                x.id for x in await log.dead_letters(group, state=DeadLetterState.DEAD, limit=ALL_LETTERS)
            ]
            if not chosen:
                return 0, f"nothing to {verb}: no dead letters{of_group} in state 'dead'"
            return await log.set_dead_letter_state(chosen, state), ""
        known = {x.id: x for x in await log.dead_letters(group, state=None, limit=ALL_LETTERS)}
        unknown = [entry for entry in dict.fromkeys(entries) if entry not in known]
        if unknown:
            return 0, f"no dead letter {', '.join(map(str, unknown))}{of_group}; nothing changed"
        chosen = [entry for entry in dict.fromkeys(entries) if known[entry].state != state]
        if not chosen:
            return 0, f"dead letter(s) {', '.join(map(str, entries))} already {done}"
        return await log.set_dead_letter_state(chosen, state), ""

    changed, nothing = run_with_store(store, work, writable=True)
    if nothing:
        fail(nothing)
    return changed


EntriesArgument = Annotated[list[int] | None, typer.Argument(help="Dead letter ids.")]
AllOption = Annotated[bool, typer.Option("--all", help="Every dead letter of --group.")]


@dlq_app.command("redrive")
def dlq_redrive(
    entries: EntriesArgument = None,
    store: StoreOption = DEFAULT_STORE,
    group: GroupOption = None,
    every: AllOption = False,
) -> None:
    """Hand dead letters back to the group that dead-lettered them (its running consumers)."""
    changed = _change(store, entries or [], group, every, DeadLetterState.REDRIVE)
    stdout().print(f"{changed} dead letter(s) queued for redrive")


@dlq_app.command("purge")
def dlq_purge(
    entries: EntriesArgument = None,
    store: StoreOption = DEFAULT_STORE,
    group: GroupOption = None,
    every: AllOption = False,
) -> None:
    """Mark dead letters as dealt with (they stay on record, out of the queue)."""
    changed = _change(store, entries or [], group, every, DeadLetterState.PURGED)
    stdout().print(f"{changed} dead letter(s) purged")


def trace(
    correlation_id: Annotated[str, typer.Argument(metavar="CORRELATION-ID")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """The causation tree of a correlation: each event, and how each group dealt with it."""

    async def work(opened: EventStore) -> Trace:
        return await opened.groups.trace(correlation_id)

    found = run_with_store(store, work)
    if not found.events:
        fail(f"no events with correlation id {correlation_id!r}")
    stdout().print(causation_tree(found))


def causation_tree(found: Trace, *, hide: Callable[[RecordedEvent], bool] | None = None) -> Tree:
    """The events of a trace as a tree of causes; ``hide`` leaves events out (their effects hang
    from their nearest shown cause)."""
    by_id = {record.envelope.id: record for record in found.events}

    def shown_cause(record: RecordedEvent) -> str | None:
        cause = by_id.get(record.envelope.causationid or "")
        while cause is not None and hide is not None and hide(cause):
            cause = by_id.get(cause.envelope.causationid or "")
        return None if cause is None else cause.envelope.id

    children: dict[str | None, list[RecordedEvent]] = {}
    for record in found.events:
        if hide is None or not hide(record):
            children.setdefault(shown_cause(record), []).append(record)
    root = Tree(
        Text(
            f"correlation {found.events[0].envelope.correlationid or found.events[0].envelope.id}",
            style="bold",
        )
    )

    def add(node: Tree, record: RecordedEvent) -> None:
        envelope = record.envelope
        branch = node.add(
            Text(f"{envelope.type} ({envelope.topic}) {envelope.id} at {format_time(envelope.time)}")
        )
        for handling in (h for h in found.handlings if h.event_id == envelope.id):
            late = (handling.at - envelope.time).total_seconds() * 1000
            style = "green" if handling.outcome == "handled" else "red"
            outcome = f"{handling.outcome} after {handling.attempts} attempt(s), {late:.1f} ms"
            branch.add(Text(f"{handling.group}: {outcome}", style=style))
        for child in children.get(envelope.id, []):
            add(branch, child)

    for record in children.get(None, []):
        add(root, record)
    return root


def demo(
    store: Annotated[
        str,
        typer.Option(
            "--store",
            metavar="URL",
            help="Store URL (TIDINGS_STORE is not read). A store the demo made is replaced, one"
            " holding nothing used, any other refused.",
        ),
    ] = DEFAULT_STORE,
    bus: Annotated[
        str | None,
        typer.Option("--bus", help="A nats:// URL: distributed mode (TIDINGS_BUS is not read)."),
    ] = None,
    orders: Annotated[int, typer.Option("--orders", min=1, help="How many orders to place.")] = 300,
) -> None:
    """Run the shop demo (four services, a saga per order) from the repository's examples."""
    sys.path.insert(0, str(Path.cwd()))
    try:
        shop_demo = importlib.import_module("examples.shop.demo")
    except ImportError as exc:
        fail(f"the demo lives in the repository (examples/shop); run this from its root ({exc})")
    try:
        passed = shop_demo.run(store, bus, orders)
    except TidingsError as exc:
        fail(str(exc))
    raise typer.Exit(EXIT_OK if passed else EXIT_PROBLEMS)


__all__ = ["demo", "dlq_app", "run", "trace"]
