"""Limits that publish and consume agree on, end to end on a real nats-server: an event the bus
could not carry (its headers and, with encryption, its sealing on top of its data) or that a
reader could not decode (nested too deeply) is refused where it is made, and one already in the
store is dead-lettered by every group instead of stopping the bus."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tidings import Context, Event
from tidings.app import App
from tidings.domain.aggregate import Aggregate
from tidings.domain.nesting import MAX_DEPTH
from tidings.errors import MalformedEvent, PayloadTooLarge
from tidings.runtime.encryption import Encryption
from tidings.runtime.master_key import LocalMasterKey
from tidings.testing.eventually import eventually
from tidings.testing.nats import nats_servers
from tidings.testing.plugin import fresh_bus_url

#: What the issue saw stop the bus: data inside the 1 MiB limit whose headers push its message
#: past nats-server's default max_payload (1 MiB).
NEAR_ONE_MIB = 1_048_500
SEALED_TOO_LARGE = r"sealed payload .* does not fit a message of the bus"


class LimitBlob(Event, topic="limits.blob"):
    blob: str


class LimitSmall(Event, topic="limits.small"):
    n: int


class LimitTree(Event, topic="limits.tree"):
    tree: Any


class LimitRecord(Aggregate, category="limit-record"):
    def apply(self, event: Event) -> None:
        pass


def blob_of(size: int) -> LimitBlob:
    """An event whose data is ``size`` bytes long (``{"blob":"..."}``)."""
    return LimitBlob(blob="x" * (size - len('{"blob":""}')))


def tree_of(depth: int) -> LimitTree:
    """An event whose data nests ``depth`` levels: the object itself and lists inside it."""
    tree: list[Any] = []
    for _ in range(depth - 2):
        tree = [tree]
    return LimitTree(tree=tree)


def _sqlite(tmp_path: Path, name: str) -> str:
    return f"sqlite:///{tmp_path / name}"


def _encryption() -> Encryption:
    return Encryption(master_key=LocalMasterKey({1: os.urandom(32)}, "limits"))


# -- nesting -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_deep_nesting_is_refused_at_every_door_with_the_limits_words(tmp_path: Path) -> None:
    app = App("limits-deep", store=_sqlite(tmp_path, "deep.db"))
    async with app:
        for depth in (MAX_DEPTH + 1, 1000, 5000):
            with pytest.raises(MalformedEvent, match=f"nested too deeply: more than {MAX_DEPTH} levels"):
                await app.publish(tree_of(depth))
            with pytest.raises(MalformedEvent, match=f"nested too deeply: more than {MAX_DEPTH} levels"):
                await app.append("deep-1", tree_of(depth))
        assert [stored async for stored in app.read_log()] == []


@pytest.mark.timeout(60)
async def test_nesting_at_the_limit_round_trips_through_jetstream(tmp_path: Path, nats_url: str) -> None:
    app = App("limits-tree", store=_sqlite(tmp_path, "tree.db"), bus=fresh_bus_url(nats_url))
    got: list[LimitTree] = []

    @app.subscribe("limits.tree", group="trees")
    async def handle(event: LimitTree, ctx: Context) -> None:
        got.append(event)

    at_limit = tree_of(MAX_DEPTH)
    async with app, app.running(lease_ttl=2.0, poll=0.2):
        with pytest.raises(MalformedEvent, match="nested too deeply"):
            await app.publish(tree_of(MAX_DEPTH + 1), key="k")
        await app.publish(at_limit, key="k")
        await eventually(lambda: len(got) == 1, within=20)
        assert got == [at_limit]
        assert await app.dead_letters("trees") == []


# -- size ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_an_event_the_bus_cannot_carry_is_refused_at_publish_and_the_bus_goes_on(
    tmp_path: Path, nats_url: str
) -> None:
    """Default max_payload: the data fits the 1 MiB limit, its message does not."""
    app = App("limits-size", store=_sqlite(tmp_path, "size.db"), bus=fresh_bus_url(nats_url))
    got: list[int] = []

    @app.subscribe("limits.small", group="small")
    async def handle(event: LimitSmall, ctx: Context) -> None:
        got.append(event.n)

    async with app, app.running(lease_ttl=2.0, poll=0.2):
        for publish in (
            lambda: app.publish(blob_of(NEAR_ONE_MIB), key="k-0"),
            lambda: app.publish(blob_of(NEAR_ONE_MIB)),
            lambda: app.append("big-1", blob_of(NEAR_ONE_MIB)),
            lambda: app.publish_all([(blob_of(NEAR_ONE_MIB), "k-1")]),
        ):
            with pytest.raises(PayloadTooLarge, match="does not fit a message of the bus"):
                await publish()
        record = LimitRecord("big-2")
        record.record(blob_of(NEAR_ONE_MIB))
        with pytest.raises(PayloadTooLarge, match="does not fit a message of the bus"):
            await app.save(record)
        for n in range(20):  # on every partition
            await app.publish(LimitSmall(n=n), key=f"k-{n}")
        await eventually(lambda: sorted(got) == list(range(20)), within=30)


@pytest.mark.timeout(90)
async def test_an_event_too_large_already_in_the_store_is_dead_lettered_not_a_stalled_bus(
    tmp_path: Path, nats_url: str
) -> None:
    """Written by an App that did not know the bus (or from before the limit was checked)."""
    store = _sqlite(tmp_path, "old.db")
    async with App("limits-writer", store=store) as writer:  # no bus: nothing to measure against
        await writer.publish(blob_of(NEAR_ONE_MIB), key="k-0")
        for n in range(10):
            await writer.publish(LimitSmall(n=n), key=f"k-{n}")
    app = App("limits-reader", store=store, bus=fresh_bus_url(nats_url))
    got: list[int] = []

    @app.subscribe("limits.>", group="all")
    async def handle(event: LimitSmall, ctx: Context) -> None:
        got.append(event.n)

    async with app, app.running(lease_ttl=2.0, poll=0.2):
        await eventually(lambda: sorted(got) == list(range(10)), within=30)
        (letter,) = await app.dead_letters("all")
        assert letter.reason == "malformed"
        assert "max_payload" in letter.error and "k-0" in letter.error


@pytest.mark.timeout(120)
async def test_with_max_payload_raised_the_limit_counts_the_sealing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server takes a little more than 1 MiB and its headers: data that fits 1 MiB sealed may
    still not fit a message once sealed (the sealing's header, nonce and tag, and a longer content
    type), while data of that size in the clear does; what is refused would have closed the bus's
    connection."""
    max_payload = 1_048_576 + 300
    with nats_servers(extra=f"max_payload: {max_payload}") as (server,):
        plain = App("limits-plain", store=_sqlite(tmp_path, "plain.db"), bus=fresh_bus_url(server.url))
        sealed = App(
            "limits-sealed",
            store=_sqlite(tmp_path, "sealed.db"),
            bus=fresh_bus_url(server.url),
            encryption=_encryption(),
        )
        got: dict[str, list[int]] = {"plain": [], "sealed": []}
        for name, app in (("plain", plain), ("sealed", sealed)):

            @app.subscribe("limits.blob", group="blobs")
            async def handle(event: LimitBlob, ctx: Context, name: str = name) -> None:
                got[name].append(len(event.blob) + len('{"blob":""}'))

        async with sealed, sealed.running(lease_ttl=2.0, poll=0.2):
            assert "App limits-sealed: the bus at" in caplog.text  # less room than 1 MiB: said at open
            for publish in (
                lambda: sealed.append("big-1", blob_of(1_048_450)),
                lambda: sealed.publish(blob_of(1_048_450), key="k"),
            ):
                with pytest.raises(PayloadTooLarge, match=SEALED_TOO_LARGE):
                    await publish()
            # Sealed, this one still fits, with room left for a traceparent header (about 75 bytes,
            # written when an OpenTelemetry SDK records: this test process may have one set).
            await sealed.append("fits-1", blob_of(1_048_150))
            await eventually(lambda: got["sealed"] == [1_048_150], within=30)
            assert await sealed.dead_letters("blobs") == []
        async with plain, plain.running(lease_ttl=2.0, poll=0.2):
            await plain.publish(blob_of(1_048_250), key="k")  # in the clear, it fits
            await eventually(lambda: got["plain"] == [1_048_250], within=30)
            assert await plain.dead_letters("blobs") == []


async def test_with_the_limits_raised_consumers_read_events_above_one_mib(tmp_path: Path) -> None:
    """max_event_size and the server's max_payload both raised: an event of 1.5 MiB is published,
    read and handled, sealed or not, as readers on NATS hold it to the App's limit, not to 1 MiB."""
    two_mib = 2 * 1_048_576
    with nats_servers(extra=f"max_payload: {two_mib + 4096}") as (server,):
        for sealed in (False, True):
            app = App(
                "limits-raised",
                store=_sqlite(tmp_path, f"raised-{sealed}.db"),
                bus=fresh_bus_url(server.url),
                max_event_size=two_mib,
                encryption=_encryption() if sealed else None,
            )
            got: list[int] = []

            @app.subscribe("limits.blob", group="blobs")
            async def handle(event: LimitBlob, ctx: Context, got: list[int] = got) -> None:
                got.append(len(event.blob) + len('{"blob":""}'))

            async with app, app.running(lease_ttl=2.0, poll=0.2):
                await app.publish(blob_of(1_572_864), key="k")
                await app.publish(blob_of(20), key="k")  # after it, in the same partition
                await eventually(lambda got=got: 20 in got, within=30)  # the large one came first
                assert got == [1_572_864, 20]
                assert await app.dead_letters("blobs") == []
