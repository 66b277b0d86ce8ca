"""``tidings keys``: the master key file, rotation, shredding and a look at the keyring.

Key material never reaches the terminal: ``init`` writes the key file (owner-only) and says
where; ``list`` shows scopes, versions and counters, not keys.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.table import Table

from tidings.adapters.sql.keys import RETIRED
from tidings.app import DEFAULT_STORE
from tidings.cli.common import StoreOption, fail, note, run_with_store, stdout
from tidings.cli.render import cell, when
from tidings.errors import ConfigurationError, TidingsError
from tidings.ports import DataKeyRecord, EventStore
from tidings.runtime.key_admin import Rotation, rotate
from tidings.runtime.key_check import check_master_key
from tidings.runtime.keyring import CHECK_SCOPE, scope_label, stored_scope
from tidings.runtime.master_key import (
    ENV_KEY,
    ENV_KEY_FILE,
    LocalMasterKey,
    add_master_key_version,
    locked_key_file,
    new_master_key_entry,
    write_key_file,
)

keys_app = typer.Typer(
    help="Encryption keys: the master key file, rotation, crypto-shredding.", no_args_is_help=True
)

KeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        envvar=ENV_KEY_FILE,
        help=f"The master key file (else {ENV_KEY} holds the key).",
        show_envvar=True,
    ),
]


@keys_app.command("init")
def keys_init(path: Annotated[Path, typer.Argument(help="Where to write the new master key file.")]) -> None:
    """Write a new master key file (version 1, readable by its owner only)."""
    if path.exists():
        fail(f"{path} exists; a master key file is never overwritten (it may be all that opens your data)")
    write_key_file(path, new_master_key_entry(1) + "\n")
    stdout().print(f"wrote master key version 1 to {path} (mode 600)")
    note(f"use it with {ENV_KEY_FILE}={path}; keep a copy somewhere safe: without it the data is lost")


def _master(key_file: Path | None) -> LocalMasterKey:
    try:
        if key_file is not None:
            return LocalMasterKey.from_file(key_file)
        master = LocalMasterKey.from_environment()
    except ConfigurationError as exc:
        fail(str(exc))
    if master is None:
        fail(f"no master key: set {ENV_KEY} or {ENV_KEY_FILE}, or give --key-file")
    return master


@keys_app.command("rotate")
def keys_rotate(
    store: StoreOption = DEFAULT_STORE,
    key_file: KeyFileOption = None,
) -> None:
    """Rewrap every data key with the newest master key version, and retire the data key
    versions so that new events get new ones (event data untouched). With a key file, a new
    master key version is added to it first. With TIDINGS_MASTER_KEY, give every process the new
    version first (2:<new key>,1:<old key>); this rewraps with the highest one."""
    master = _master(key_file)

    async def work(opened: EventStore) -> tuple[LocalMasterKey, Rotation]:
        if key_file is None:
            return master, await rotate(opened, master)
        # Only once the store is open, and only with keys that match it (checked first): a wrong
        # --store or a wrong key file leaves the key file as it was.
        await check_master_key(opened, LocalMasterKey.from_file(key_file))
        newest = add_master_key_version(key_file)
        note(f"added master key version {newest.current_version} to {key_file}")
        return newest, await rotate(opened, newest)

    # The key file stays locked from its reading to the end of the rotation: a second rotation
    # waits, then adds the version after this one's (instead of the same one) and rewraps to it.
    with locked_key_file(key_file) if key_file is not None else contextlib.nullcontext():
        newest, rotation = run_with_store(store, work, writable=True)
    if key_file is None and not rotation.rewrapped and not rotation.retired:
        if not rotation.current and not rotation.shredded:
            fail("no data keys in this store: nothing to rotate")
        fail(
            f"nothing to rotate: every data key is wrapped by master key version "
            f"{rotation.master_version} and retired already"
        )
    stdout().print(
        f"master key version {rotation.master_version}: {rotation.rewrapped} data keys rewrapped, "
        f"{rotation.current} already current, {rotation.shredded} shredded; {rotation.retired} "
        "retired (new events get new data key versions)"
    )
    if len(newest.versions) > 1:
        note(f"once every process uses the new version, older ones can go: {newest.versions[:-1]}")


@keys_app.command("shred")
def keys_shred(
    scope: Annotated[
        str | None, typer.Argument(help="The scope whose data keys to destroy (by default a stream).")
    ] = None,
    topic: Annotated[
        str | None, typer.Option("--topic", help="Destroy the data key of this topic's unkeyed events.")
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy a scope's data keys: its events then read as erased, for good."""
    try:
        stored = stored_scope(scope, topic)
    except TidingsError as exc:
        fail(str(exc))
    named = repr(scope) if topic is None else f"the unkeyed events of topic {topic!r}"
    question = f"Destroy the data keys of {named}? Its events become unreadable, for good"
    if not yes and not typer.confirm(question):
        raise typer.Exit(1)

    async def work(opened: EventStore) -> int:
        return await opened.key_store.shred_data_keys(stored)

    destroyed = run_with_store(store, work, writable=True)
    if not destroyed:
        fail(f"no live data key for {named} (never used, or shredded already)")
    stdout().print(f"shredded {destroyed} data key version(s) of {named}")
    note("running processes stop using the key within a minute; snapshots of it are ignored from now on")


@keys_app.command("list")
def keys_list(
    store: StoreOption = DEFAULT_STORE,
    prefix: Annotated[str, typer.Option("--prefix", help="Only scopes starting with this.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most N keys.")] = 1000,
) -> None:
    """Data keys: scope, version, which master key version wraps it, encryptions reserved, and
    whether it is live, retired (opens old events only) or shredded."""

    async def work(opened: EventStore) -> list[DataKeyRecord]:
        found: list[DataKeyRecord] = []
        after = (prefix, 0)
        # Pages come in scope order, so the scopes with the prefix are one run from ``prefix`` on.
        # One more than shown: whether the last one shown has a newer version (then it is retired).
        while len(found) <= limit and (page := await opened.key_store.data_key_page(after, 500)):
            found += [r for r in page if r.scope.startswith(prefix) and r.scope != CHECK_SCOPE]
            if not page[-1].scope.startswith(prefix):
                break
            after = (page[-1].scope, page[-1].version)
        return found[: limit + 1]

    records = run_with_store(store, work)
    if not records:
        note(f"no data keys of scopes starting with {prefix!r}" if prefix else "no data keys")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("scope", "version", "master", "uses", "created", "state"):
        table.add_column(column, overflow="fold")
    for record, following in zip(records[:limit], [*records[1:], None], strict=False):
        superseded = following is not None and following.scope == record.scope
        state = _state(record, superseded=superseded)
        table.add_row(
            cell(scope_label(record.scope), "cyan"),
            str(record.version),
            str(record.master_version),
            "-" if record.uses >= RETIRED else f"{record.uses:,}",  # a rotation kept no count
            when(record.created),
            cell(state, _STATE_STYLE[state]),
        )
    stdout().print(table)


_STATE_STYLE: Final = {"live": "green", "retired": "yellow", "shredded": "red"}


def _state(record: DataKeyRecord, *, superseded: bool) -> str:
    """live: new events of its scope are sealed with it; retired: it only opens what it sealed
    (a rotation retired it, or a newer version took over); shredded: it opens nothing ever again."""
    if record.wrapped is None:
        return "shredded"
    if superseded or record.uses >= RETIRED:
        return "retired"
    return "live"
