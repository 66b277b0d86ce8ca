"""Nothing in the clear at rest: a unique canary written through every way in is searched for in
the raw bytes of the SQLite files (with the write-ahead log), the PostgreSQL data directory and
the JetStream store directory. A second App writes another canary without encryption into the
same place in the same run, and the same scan must find that one: the scan can see plaintext."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tidings.app import App
from tidings.domain.events import Event
from tidings.runtime.context import Context
from tidings.runtime.encryption import Encryption
from tidings.runtime.master_key import LocalMasterKey
from tidings.testing.conformance.aggregates import Cart
from tidings.testing.conformance.encryption import Secret
from tidings.testing.eventually import eventually
from tidings.testing.nats import nats_servers
from tidings.testing.plugin import fresh_bus_url, fresh_postgres_database, sqlite_url

RUN = {"lease_ttl": 2.0, "poll": 0.1}


class Echoed(Event, topic="conformance.echo.noted", type="conformance.Echoed"):
    text: str


def app_for(store: str, *, sealed: bool, bus: str | None = None) -> App:
    encryption = Encryption(master_key=LocalMasterKey({1: os.urandom(32)}, "test")) if sealed else False
    return App("at-rest", store=store, bus=bus, encryption=encryption)


async def write_everything(app: App, canary: str) -> None:
    """The canary through every way in: appends, publications (keyed and not), an aggregate with
    a snapshot, handlers' publications and dead letters; back out through a consumer."""
    got: list[str] = []

    @app.subscribe("conformance.secret.*", group="at-rest-readers")
    async def read(event: Secret, ctx: Context) -> None:
        got.append(event.text)
        async with ctx.unit_of_work() as uow:  # a handler's own publication, keyed by the owner
            uow.publish(Echoed(text=f"{event.text}:echoed"), key=f"echo-{event.owner}")

    @app.subscribe("conformance.echo.*", group="at-rest-echoes")
    async def echoed(event: Echoed, ctx: Context) -> None:
        got.append(event.text)

    @app.subscribe("conformance.secret.*", group="at-rest-refusers")
    async def refuse(event: Secret, ctx: Context) -> None:
        raise RuntimeError("refused, so that a dead letter holds the envelope")

    cart = Cart(f"cart-{uuid.uuid4().hex[:8]}")
    for n in range(50):
        cart.add(f"{canary}:sku{n}")
    async with app:
        await app.append(f"s-{uuid.uuid4().hex[:8]}", [Secret(owner="ann", text=f"{canary}:appended")])
        await app.publish(Secret(owner="bob", text=f"{canary}:unkeyed"))
        await app.publish(Secret(owner="cid", text=f"{canary}:keyed"), key=f"k-{uuid.uuid4().hex[:8]}")
        await app.save(cart)
        async with app.running(**RUN):
            await eventually(lambda: len(got) == 6)

            async def dead() -> bool:
                return len(await app.dead_letters("at-rest-refusers")) == 3

            await eventually(dead, within=20)
    assert all(text.startswith(canary) for text in got)  # what was sealed reads back


def hits(directory: Path, *canaries: str) -> list[int]:
    """How often each canary occurs in the raw bytes of every file under ``directory``."""
    counts = [0] * len(canaries)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            blob = path.read_bytes()
        except (PermissionError, FileNotFoundError):  # a socket or a file removed meanwhile
            continue
        for n, canary in enumerate(canaries):
            counts[n] += blob.count(canary.encode())
    return counts


def canaries() -> tuple[str, str]:
    """Short enough that even the snapshot of 50 of them stays below PostgreSQL's compression
    threshold (compressed plaintext would hide from a scan), long enough never to occur by chance."""
    tag = uuid.uuid4().hex[:12]
    return f"S{tag}", f"P{tag}"


async def test_sqlite_files_hold_no_plaintext(tmp_path: Path) -> None:
    sealed, plain = canaries()
    await write_everything(app_for(sqlite_url(tmp_path, "sealed.db"), sealed=True), sealed)
    await write_everything(app_for(sqlite_url(tmp_path, "plain.db"), sealed=False), plain)
    assert hits(tmp_path, sealed, plain)[0] == 0
    assert hits(tmp_path, sealed, plain)[1] > 0, "the scan must see what is stored in the clear"


async def test_the_postgresql_data_directory_holds_no_plaintext(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        data_directory = Path(str(connection.execute("SHOW data_directory").fetchone()[0]))  # type: ignore[index]
    sealed, plain = canaries()
    with (
        fresh_postgres_database(postgres_url) as sealed_url,
        fresh_postgres_database(postgres_url) as plain_url,
    ):
        await write_everything(app_for(sealed_url, sealed=True), sealed)
        await write_everything(app_for(plain_url, sealed=False), plain)
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute("CHECKPOINT")  # the data files too, not only the write-ahead log
        counts = hits(data_directory, sealed, plain)  # both databases still there
    assert counts[0] == 0
    assert counts[1] > 0, "the scan must see what is stored in the clear"


@pytest.fixture(scope="module")
def own_nats() -> Iterator[tuple[str, Path]]:
    """A nats-server of this module's own, so that its store directory holds only our streams."""
    with nats_servers(1) as (server,):
        yield server.url, server.directory


async def test_the_jetstream_store_directory_holds_no_plaintext(
    postgres_url: str, own_nats: tuple[str, Path]
) -> None:
    url, directory = own_nats
    sealed, plain = canaries()
    with fresh_postgres_database(postgres_url) as store:
        await write_everything(app_for(store, sealed=True, bus=fresh_bus_url(url)), sealed)
    with fresh_postgres_database(postgres_url) as store:
        await write_everything(app_for(store, sealed=False, bus=fresh_bus_url(url)), plain)
    counts = hits(directory / "jetstream", sealed, plain)
    assert counts[0] == 0
    assert counts[1] > 0, "the scan must see what the broker holds in the clear"
