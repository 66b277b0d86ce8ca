"""What every command shares: the ``--store`` option, parsing times, and running async work on an
open store with one error policy (a friendly red line on stderr, never a traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Final, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import typer
from rich.console import Console
from rich.text import Text

from tidings.adapters.urls import redact_url
from tidings.cli import render
from tidings.errors import TidingsError
from tidings.ports import EventStore
from tidings.runtime.encryption import Encryption
from tidings.wiring import store_at, wire_store

T = TypeVar("T")

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1  # the command ran and found something wrong (verify)
#: The command could not do its work: a bad URL, an unreachable server, a damaged file, or
#: nothing to act on (an unknown id, stream, saga or state; no dead letter left to redrive).
EXIT_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130  # Ctrl-C where it is not the normal way to stop
UNBOUNDED_WIDTH: Final = 100_000
#: The largest version, position or limit the stores take (SQL BIGINT); a larger number is a usage error.
MAX_NUMBER: Final = 2**63 - 1

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="TIDINGS_STORE",
        metavar="URL",
        help="The event store: sqlite:///relative.db, sqlite:////absolute.db or postgresql://...",
    ),
]
LimitOption = Annotated[
    int | None, typer.Option("--limit", min=1, max=MAX_NUMBER, metavar="N", help="Show at most N entries.")
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="One CloudEvents structured JSON document per line, for piping."),
]


def stdout() -> Console:
    """A console on the current stdout (looked up per call, so redirection and tests work).

    Redirected to a file or a pipe, tables are as wide as their content (not Rich's 80 columns),
    so that nothing is folded or cut; ``COLUMNS`` still sets a width.
    """
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = UNBOUNDED_WIDTH
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def note(message: str) -> None:
    """A quiet remark on stderr (keeps stdout clean for piping)."""
    stderr().print(Text(message, style="dim"), soft_wrap=True)


def fail(message: str, *, code: int = EXIT_ERROR) -> NoReturn:
    """One red line on stderr, then exit with ``code``."""
    stderr().print(Text(f"error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def one_of(option: str, choices: Sequence[str]) -> Callable[[str | None], str | None]:
    """A callback that refuses a value of ``option`` outside ``choices`` with one red line naming
    the valid ones (a value that matches nothing would only ever show an empty answer)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            fail(f"{option} {value!r} is not one of {', '.join(choices)}")
        return value

    return check


def scrub(message: str, url: str) -> str:
    """``message`` without the URL's password. The core redacts already; this is a second guard
    for a message that quotes the URL it was given verbatim."""
    message = message.replace(url, redact_url(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        # A very short password would turn every matching letter into ***; such a password
        # protects nothing anyway.
        for secret in {password, unquote(password)}:
            if len(secret) >= 4:
                message = message.replace(secret, "***")
    return message


def parse_time(value: str) -> datetime:
    """An ISO-8601 time (``2024-05-01``, ``2024-05-01T12:00:00Z``, ``...+02:00``); naive is UTC."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO-8601 time (such as 2024-05-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run_with_store(
    url: str,
    work: Callable[[EventStore], Awaitable[T]],
    *,
    interrupt_code: int = EXIT_INTERRUPTED,
    exit_codes: Mapping[type[TidingsError], int] | None = None,
    writable: bool = False,
    unsaid: str = "",
) -> T:
    """Open the store at ``url`` (never creating one), run ``work`` on it, close it.

    Every ``TidingsError`` becomes one red line and exit code 2 (or the code ``exit_codes`` gives
    its class); Ctrl-C exits quietly with ``interrupt_code``. ``writable`` opens a store that
    must exist already for writing (dead letter commands); otherwise it is opened read-only.
    ``unsaid`` is advice left out of error messages (``verify`` is not told to run itself).
    """
    try:
        return asyncio.run(_on_store(url, work, writable))
    except TidingsError as exc:
        code = next((code for kind, code in (exit_codes or {}).items() if isinstance(exc, kind)), EXIT_ERROR)
        message = str(exc) or type(exc).__name__
        fail(scrub(message.replace(unsaid, "") if unsaid else message, url), code=code)
    except KeyboardInterrupt:
        raise typer.Exit(interrupt_code) from None


async def _on_store(url: str, work: Callable[[EventStore], Awaitable[T]], writable: bool) -> T:
    if writable:  # it must exist (checked read-only first); then it is opened for writing
        existing = store_at(url, create=False)
        await existing.open()
        await existing.close()
    store = store_at(url, create=writable)
    try:
        await store.open()
        # With a master key in the environment, the store as an encrypting App sees it: the
        # data of sealed events is shown opened (see ``render.data_text``). The key is not
        # checked: the commands only read, or act on the keyring itself.
        wired = await wire_store(store, Encryption.configured(None), check_key=False)
        render.use_keys(wired.keys)
        result = await work(wired.store)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one worth reporting
            await store.close()
        raise
    await store.close()
    return result
