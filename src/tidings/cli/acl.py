"""``tidings acl nats-config POLICY``: the access policy as the ``authorization`` block of a
nats-server config, so that the server enforces on the bus what tidings enforces in each App."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tidings.adapters.nats.permissions import authorization_block
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
