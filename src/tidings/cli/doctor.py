"""``tidings doctor``: what in a deployment would lose or expose data, each finding with why it
matters and the fix; exit 1 on a finding at or above ``--fail-on``.

The checks are the runtime's and the adapters' (``runtime/doctor.py``, ``adapters/*/doctor.py``),
reached through the composition root; this module picks the App, runs them and shows them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Final

import msgspec
import typer
from rich.text import Text

from tidings.app import DEFAULT_STORE, App
from tidings.cli.common import EXIT_PROBLEMS, fail, one_of, scrub, stdout
from tidings.cli.operations import load_app
from tidings.cli.render import printable
from tidings.domain.findings import Finding, Level
from tidings.errors import TidingsError
from tidings.runtime.doctor import examine_coverage, master_key_in_environment, refused_app
from tidings.wiring import examine

LEVELS: Final = tuple(level.value for level in Level)
FORMATS: Final = ("text", "json")
_STYLES: Final = {Level.ERROR: "bold red", Level.WARNING: "bold yellow", Level.INFO: "cyan"}
_SEVERITY: Final = (Level.ERROR, Level.WARNING, Level.INFO)


def doctor(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="TIDINGS_STORE",
            metavar="URL",
            help="The event store (default: the --app's, else sqlite:///.tidings/tidings.db).",
        ),
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option("--bus", envvar="TIDINGS_BUS", metavar="URL", help="A JetStream bus: nats://..."),
    ] = None,
    app_target: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="MODULE:APP",
            help="Also check the App's groups and sagas against its access policy.",
        ),
    ] = None,
    fail_on: Annotated[
        str,
        typer.Option(
            "--fail-on",
            metavar="LEVEL",
            callback=one_of("--fail-on", LEVELS),
            help=f"Exit 1 on a finding at this level or above: {', '.join(LEVELS)}.",
        ),
    ] = Level.ERROR.value,
    output: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            callback=one_of("--format", FORMATS),
            help="text, or json: a list of {check, level, found, why, fix}.",
        ),
    ] = "text",
) -> None:
    """Check what would lose or expose data: the store's and the bus's durability settings, file
    modes, TLS, encryption and policy coverage; each finding says why and how to fix it."""
    findings: list[Finding] = []
    app: App | None = None
    if app_target is not None:
        try:
            app = load_app(app_target)
        except TidingsError as exc:  # raised while the module made its App
            findings.append(refused_app(app_target, exc))
    store_url = store or (app.store_url if app is not None else DEFAULT_STORE)
    bus_url = bus or (app.bus_url if app is not None else None)
    master_key = app.encryption is not None if app is not None else master_key_in_environment()
    try:
        findings += asyncio.run(examine(store_url, bus_url, master_key=master_key))
    except TidingsError as exc:
        message = scrub(str(exc) or type(exc).__name__, store_url)
        fail(scrub(message, bus_url) if bus_url else message)
    if app is not None:
        groups = {group: subscription.pattern for group, subscription in app.subscriptions.items()}
        policy = app.guard.policy if app.guard is not None else None
        findings += examine_coverage(policy, app.principal, groups, app.sagas, distributed=bool(bus_url))
    findings.sort(key=lambda finding: _SEVERITY.index(finding.level))
    if output == "json":
        sys.stdout.write(msgspec.json.encode(findings).decode() + "\n")
    else:
        _show(findings)
    if any(finding.level.at_least(Level(fail_on)) for finding in findings):
        raise typer.Exit(EXIT_PROBLEMS)


def _show(findings: list[Finding]) -> None:
    console = stdout()
    for finding in findings:
        line = Text(f"{finding.level.value.upper():8}", style=_STYLES[finding.level])
        line.append(f"{finding.check}: ", style="bold")
        line.append(printable(finding.found))
        console.print(line, soft_wrap=True)
        console.print(Text(f"         why: {printable(finding.why)}"), soft_wrap=True)
        console.print(Text(f"         fix: {printable(finding.fix)}"), soft_wrap=True)
    counts = [
        f"{count} {level.value}{'s' if count != 1 else ''}"
        for level in _SEVERITY
        if (count := sum(1 for f in findings if f.level is level))
    ]
    console.print(Text(", ".join(counts) if counts else "nothing found", style="bold"))
