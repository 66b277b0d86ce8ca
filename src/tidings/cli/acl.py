"""``tidings acl nats-config POLICY``: the access policy as the ``authorization`` block of a
nats-server config, so that the server enforces on the bus what tidings enforces in each App;
``tidings acl passwd``: a password's bcrypt hash, for the policy."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Final

import typer

from tidings.adapters.nats.permissions import authorization_block  # client-free: no nats extra needed
from tidings.adapters.sql.common import DEFAULT_PARTITIONS
from tidings.cli.common import fail
from tidings.errors import TidingsError
from tidings.runtime.access import load_policy

acl_app = typer.Typer(help="Access control: policies of principals and topics.", no_args_is_help=True)


@acl_app.command("nats-config")
def nats_config(
    policy: Annotated[Path, typer.Argument(help="The policy file (TOML).", show_default=False)],
    prefix: Annotated[
        str, typer.Option("--prefix", help="The bus's subject prefix (the URL's prefix=).")
    ] = "tidings",
    stream: Annotated[
        str, typer.Option("--stream", help="The bus's stream name stem (the URL's stream=).")
    ] = "TIDINGS",
    partitions: Annotated[
        int,
        typer.Option("--partitions", min=1, max=4096, help="The store's partitions (its URL's partitions=)."),
    ] = DEFAULT_PARTITIONS,
) -> None:
    """Print a nats-server `authorization { users = [...] }` block: a user per principal with
    exactly the subjects it needs (include it in the server's config)."""
    try:
        block = authorization_block(load_policy(policy), prefix=prefix, stream=stream, partitions=partitions)
    except TidingsError as exc:
        fail(str(exc))
    typer.echo(block, nl=False)  # plain text: no console markup may touch a password


#: What a password may hold: it goes into the App's bus URL as is (the policy's rule, in
#: tidings.domain.policy); bcrypt reads at most 72 bytes of it.
_URL_SAFE: Final = re.compile(r"[A-Za-z0-9._~-]{1,72}")
#: bcrypt's version prefix: "2a" is what nats-server's own tool writes, and every version takes it.
_BCRYPT_PREFIX: Final = b"2a"


@acl_app.command("passwd")
def passwd(
    cost: Annotated[
        int, typer.Option("--cost", min=4, max=31, help="bcrypt's cost: each step doubles the work.")
    ] = 11,
) -> None:
    """Print the bcrypt hash of a password, for a principal's `password = "..."` in the policy
    (nats-server checks logins against it). Asks twice on a terminal; else reads one line."""
    try:
        import bcrypt  # optional (the nats extra): only NATS passwords need it
    except ImportError:
        fail("tidings acl passwd needs bcrypt: pip install 'tidings[nats]'")
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not _URL_SAFE.fullmatch(password):
        fail(
            "a password must be 1 to 72 letters, digits and '-', '.', '_', '~' "
            "(the App's bus URL carries it as is)"
        )
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost, prefix=_BCRYPT_PREFIX))
    typer.echo(hashed.decode())
