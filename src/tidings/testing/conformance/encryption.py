"""Encryption at rest, asserted on every backend: sealed on the way in, opened on the way out,
nothing stored in the clear, tampering caught, keys rotated and shredded."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from tidings.app import App
from tidings.domain.events import Erased, Event
from tidings.errors import ConfigurationError, IntegrityError, Undecryptable
from tidings.runtime.context import Context
from tidings.runtime.crypto import SEALED, read_header
from tidings.runtime.encryption import Encryption
from tidings.runtime.keyring import CHECK_SCOPE
from tidings.runtime.master_key import LocalMasterKey, new_master_key_entry, write_key_file
from tidings.runtime.projection import Projection, View
from tidings.testing.clock import ManualClock
from tidings.testing.conformance.aggregates import Cart
from tidings.testing.conformance.events import Ping, unique
from tidings.testing.eventually import eventually
from tidings.testing.raw import raw_execute

RUN = {"lease_ttl": 2.0, "poll": 0.1}


class Secret(Event, topic="conformance.secret.noted", type="conformance.Secret"):
    owner: str
    text: str


def master(*versions: int) -> LocalMasterKey:
    """Master key versions that are the same in every call of one test run."""
    return LocalMasterKey({v: master_key_of(v) for v in versions}, "test key")


def master_key_of(version: int) -> bytes:
    """The key of a version that ``master`` gives (the same in every call of one test run)."""
    return _MASTER_KEYS.setdefault(version, os.urandom(32))


_MASTER_KEYS: dict[int, bytes] = {}


def sealed_app(store_url: str, *versions: int, name: str = "secure", **options: object) -> App:
    encryption = Encryption(master_key=master(*(versions or (1,))), **options)  # type: ignore[arg-type]
    return App(name, store=store_url, encryption=encryption)


@pytest_asyncio.fixture
async def app(store_url: str) -> AsyncIterator[App]:
    async with sealed_app(store_url) as opened:
        yield opened


def stored_blobs(store_url: str) -> bytes:
    """Every column that holds event data, snapshots, timers or dead letters, raw."""
    rows = raw_execute(store_url, "SELECT data FROM tidings_events")
    rows += raw_execute(store_url, "SELECT state FROM tidings_snapshots")
    rows += raw_execute(store_url, "SELECT envelope FROM tidings_timers")
    rows += raw_execute(store_url, "SELECT envelope FROM tidings_dead_letters WHERE envelope IS NOT NULL")
    return b"\n".join(bytes(row[0]) for row in rows)


async def test_every_way_in_is_sealed_and_reads_back(store_url: str) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    clock = ManualClock()
    app = App("secure", store=store_url, clock=clock, encryption=Encryption(master_key=master(1)))
    got: list[str] = []

    @app.subscribe("conformance.secret.*", group="readers")
    async def read(event: Secret, ctx: Context) -> None:
        got.append(event.text)
        if event.text.endswith("timer"):
            return
        async with ctx.unit_of_work() as uow:
            uow.schedule(
                Secret(owner=event.owner, text=f"{canary}-timer"), at=clock.now() + timedelta(hours=1)
            )

    @app.subscribe("conformance.secret.*", group="refusers")
    async def refuse(event: Secret, ctx: Context) -> None:
        raise RuntimeError("refused")  # so its dead letters hold the envelopes

    cart = Cart(unique("c"))
    for n in range(60):  # past snapshot_every: a snapshot is taken
        cart.add(f"{canary}-sku-{n}")
    async with app:
        await app.append(unique("s"), [Secret(owner="ann", text=f"{canary}-appended")])
        await app.publish(Secret(owner="bob", text=f"{canary}-unkeyed"))
        await app.publish(Secret(owner="cid", text=f"{canary}-keyed"), key=unique("k"))
        await app.save(cart)
        async with app.running(**RUN):
            await eventually(lambda: len(got) == 3)

            async def timers_set() -> bool:
                rows = raw_execute(store_url, "SELECT count(*) FROM tidings_timers")
                return bool(rows[0][0] == 3)

            await eventually(timers_set)
            blobs_with_timers = stored_blobs(store_url)
            clock.advance(timedelta(hours=2))
            await eventually(lambda: len(got) == 6)
            await eventually(lambda: _letters(app, 6))
        loaded = await app.load(Cart, cart.id)
    assert sorted(got) == sorted(
        [f"{canary}-{how}" for how in ("appended", "unkeyed", "keyed")] + [f"{canary}-timer"] * 3
    )
    assert loaded.items == {f"{canary}-sku-{n}": 1 for n in range(60)}
    assert raw_execute(store_url, "SELECT count(*) FROM tidings_snapshots")[0][0] == 1
    blobs = stored_blobs(store_url) + blobs_with_timers
    assert blobs.count(b"sku-") == 0 and blobs.count(canary.encode()) == 0
    datas = raw_execute(store_url, "SELECT data FROM tidings_events WHERE topic LIKE ?", "conformance.%")
    assert len(datas) >= 66 and all(bytes(data).startswith(b"tds1") for (data,) in datas)


async def _letters(app: App, count: int, group: str = "refusers") -> bool:
    return len(await app.dead_letters(group)) >= count


async def test_a_trace_read_by_another_process_decodes_its_events(store_url: str) -> None:
    """A trace's events come back sealed as stored; another App (a fresh keyring, nothing
    cached) must be able to decode them, as ``tidings trace`` and the shop's report do."""
    correlation = unique("corr")
    async with sealed_app(store_url, 1) as writer:
        await writer.publish(Secret(owner="ann", text="traced"), correlation_id=correlation)
    async with sealed_app(store_url, 1) as reader:
        found = await reader.groups.trace(correlation)
        assert [reader.codec.stored(r).event for r in found.events] == [Secret(owner="ann", text="traced")]


async def test_a_sealed_dead_letter_is_redriven(store_url: str) -> None:
    app = sealed_app(store_url)
    got: list[str] = []
    failing = True

    @app.subscribe("conformance.secret.*", group="flaky")
    async def flaky(event: Secret, ctx: Context) -> None:
        if failing:
            raise RuntimeError("not yet")
        got.append(event.text)

    key = unique("k")
    async with app, app.running(**RUN):
        await app.publish(Secret(owner=key, text="second chance"), key=key)
        await eventually(lambda: _letters(app, 1, "flaky"))
        (letter,) = await app.dead_letters("flaky")
        assert letter.envelope is not None and b"second chance" not in letter.envelope
        failing = False
        await app.redrive([letter.id])
        await eventually(lambda: got == ["second chance"])


async def test_data_in_the_clear_is_refused_unless_accepted(store_url: str) -> None:
    stream = unique("s")
    async with App("plain", store=store_url, encryption=False) as plain:
        await plain.append(stream, [Secret(owner="ann", text="from before encryption")])
    async with sealed_app(store_url) as app:
        with pytest.raises(Undecryptable, match="stored in the clear"):
            await app.read_stream(stream)
    async with sealed_app(store_url, accept_plaintext=True) as migrating:
        assert [s.event.text for s in await migrating.read_stream(stream)] == ["from before encryption"]  # type: ignore[attr-defined]


async def test_a_key_from_a_rolled_back_transaction_is_never_used(store_url: str) -> None:
    stream = unique("s")
    first, second = sealed_app(store_url, name="first"), sealed_app(store_url, name="second")
    async with first, second:
        with pytest.raises(RuntimeError, match="changed my mind"):
            await _append_then_roll_back(first, stream)
        await second.append(stream, [Secret(owner="b", text="by the second")])
        await first.append(stream, [Secret(owner="a", text="by the first")])
    async with sealed_app(store_url, name="reader") as reader:
        texts = [s.event.text for s in await reader.read_stream(stream)]  # type: ignore[attr-defined]
    assert texts == ["by the second", "by the first"]


async def _append_then_roll_back(app: App, stream: str) -> None:
    async with app.store.transaction() as tx:
        await tx.append(stream, [app.codec.encode(Secret(owner="a", text="rolled back"))])
        raise RuntimeError("changed my mind")


async def test_a_shred_elsewhere_stops_writers_too(store_url: str) -> None:
    stream = unique("s")
    # refresh=0: what a minute does, at once
    writer, operator = (
        sealed_app(store_url, name="writer", refresh=0.0),
        sealed_app(store_url, name="operator"),
    )
    async with writer, operator:
        await writer.append(stream, [Secret(owner="a", text="before the shred")])
        assert await operator.shred_keys(stream) == 1
        await writer.append(stream, [Secret(owner="a", text="after the shred")])
    async with sealed_app(store_url, name="reader") as reader:
        events = [s.event for s in await reader.read_stream(stream)]
    assert events == [Erased(erased_type="conformance.Secret"), Secret(owner="a", text="after the shred")]


async def test_a_rotation_elsewhere_moves_writers_to_new_data_keys(
    store_url: str,
) -> None:
    stream = unique("s")
    writer, operator = (
        sealed_app(store_url, 1, 2, name="writer", refresh=0.05),
        sealed_app(store_url, 1, 2, name="operator"),
    )
    async with writer, operator:
        await writer.append(stream, [Secret(owner="a", text="before")])
        assert (await operator.rotate_keys()).retired == 1
        await asyncio.sleep(0.1)  # the writer's reservation is no longer trusted without a look
        await writer.append(stream, [Secret(owner="a", text="after")])
    versions = raw_execute(
        store_url, "SELECT version FROM tidings_keys WHERE scope = ? ORDER BY version", stream
    )
    assert versions == [(1,), (2,)]
    async with sealed_app(store_url, 1, 2, name="reader") as reader:
        assert [s.event.text for s in await reader.read_stream(stream)] == ["before", "after"]  # type: ignore[attr-defined]


async def test_a_process_with_the_key_file_goes_on_through_a_rotation(store_url: str, tmp_path: Path) -> None:
    """A writer started with version 1 of a key file; `tidings keys rotate` adds version 2 to
    the file and rewraps everything with it, and another process writes under it: the writer
    reads the new version from the file when it first meets it, and goes on writing and reading."""
    path = tmp_path / "master.key"
    write_key_file(path, new_master_key_entry(1) + "\n")
    stream = unique("s")
    writer = App(
        "writer",
        store=store_url,
        encryption=Encryption(master_key=LocalMasterKey.from_file(path), refresh=0.05),
    )
    async with writer:
        await writer.append(stream, [Secret(owner="a", text="before")])
        write_key_file(path, path.read_text() + new_master_key_entry(2) + "\n")
        async with App(
            "operator", store=store_url, encryption=Encryption(master_key=LocalMasterKey.from_file(path))
        ) as operator:
            assert (await operator.rotate_keys()).master_version == 2
            await operator.append(other := unique("s"), [Secret(owner="b", text="under version 2")])
        await asyncio.sleep(0.1)
        await writer.append(stream, [Secret(owner="a", text="after")])
        assert [s.event.text for s in await writer.read_stream(stream)] == ["before", "after"]  # type: ignore[attr-defined]
        assert [s.event.text for s in await writer.read_stream(other)] == ["under version 2"]  # type: ignore[attr-defined]


async def test_a_timer_that_cannot_be_opened_does_not_hold_up_the_others(store_url: str) -> None:
    clock = ManualClock()
    app = App("timers", store=store_url, clock=clock, encryption=Encryption(master_key=master(1)))
    fired: list[str] = []

    @app.subscribe("conformance.secret.*", group="alarms")
    async def ring(event: Secret, ctx: Context) -> None:
        fired.append(event.owner)

    victim, other = unique("victim"), unique("other")
    async with app:
        async with app.store.transaction() as tx:  # timers as a unit of work sets them
            for key in (victim, other):
                envelope = app.codec.encode(Secret(owner=key, text="later"), event_id=unique("t"))
                await tx.schedule_timer(unique("timer"), clock.now() + timedelta(minutes=1), key, envelope)
        assert await app.shred_keys(victim) == 1
        clock.advance(timedelta(minutes=2))
        async with app.running(**RUN):
            await eventually(lambda: fired == [other])
            await eventually(lambda: _no_timers(store_url))
        letters = await app.dead_letters("tidings:timers")
    assert [(letter.reason, letter.stream) for letter in letters] == [("undecryptable", victim)]


async def _no_timers(store_url: str) -> bool:
    return bool(raw_execute(store_url, "SELECT count(*) FROM tidings_timers")[0][0] == 0)


async def test_without_the_master_key_events_are_undecryptable_not_garbage(store_url: str) -> None:
    stream = unique("s")
    async with sealed_app(store_url) as app:
        await app.append(stream, [Secret(owner="ann", text="hidden")])
    async with App("plain", store=store_url, encryption=False) as plain:
        with pytest.raises(Undecryptable, match="no master key"):
            await plain.read_stream(stream)
    # A key file with no version of the store's is refused before it can read (or write) at all.
    with pytest.raises(ConfigurationError, match=r"holds version\(s\) 9 and this store"):
        await sealed_app(store_url, 9).open()


async def test_altered_or_swapped_data_is_dead_lettered_as_undecryptable(store_url: str) -> None:
    key = unique("k")
    app = sealed_app(store_url)
    got: list[str] = []

    @app.subscribe("conformance.secret.*", group="readers")
    async def read(event: Secret, ctx: Context) -> None:
        got.append(event.text)

    texts = ["ciphertext", "tag", "nonce", "header", "swap-a", "swap-b", "intact"]
    async with app:
        records = [await app.publish(Secret(owner=key, text=t), key=key) for t in texts]
        ids = [r.envelope.id for r in records]
        data = {
            i: bytes(raw_execute(store_url, "SELECT data FROM tidings_events WHERE id = ?", i)[0][0])
            for i in ids
        }
        nonce_at = len(read_header(data[ids[2]], "test").raw)
        changed = {
            ids[0]: _flip(data[ids[0]], len(data[ids[0]]) - 20),  # in the ciphertext
            ids[1]: _flip(data[ids[1]], len(data[ids[1]]) - 1),  # in the tag
            ids[2]: _flip(data[ids[2]], nonce_at + 3),  # in the nonce
            ids[3]: _flip(data[ids[3]], 16),  # in the header: the stream version it claims
            ids[4]: data[ids[5]],  # two rows' data swapped
            ids[5]: data[ids[4]],
        }
        for event_id, blob in changed.items():
            raw_execute(store_url, "UPDATE tidings_events SET data = ? WHERE id = ?", blob, event_id)
        with pytest.raises(IntegrityError) as broken:
            await app.read_stream(key)  # the hash chain, checked on every stream read, breaks first
        assert not isinstance(broken.value, Undecryptable) and "chain" in str(broken.value)
        async with app.running(**RUN):
            await eventually(lambda: len(got) >= 1)
            assert got == ["intact"], got
            await eventually(lambda: _letters(app, 6, "readers"))
            letters = await app.dead_letters("readers")
    assert sorted(letter.event_id or "" for letter in letters) == sorted(ids[:6])
    assert {letter.reason for letter in letters} == {"undecryptable"}
    errors = {letter.event_id: letter.error for letter in letters}
    assert all("integrity check failed" in errors[i] for i in ids[:3])
    assert all("moved or swapped" in errors[i] for i in ids[3:6])


def _flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


async def test_rotation_rewraps_keys_and_leaves_event_data_alone(store_url: str) -> None:
    streams = [unique("s") for _ in range(5)]
    async with sealed_app(store_url, 1) as app:
        for stream in streams:
            await app.append(stream, [Secret(owner=stream, text="before rotation")])
    before = raw_execute(store_url, "SELECT id, data FROM tidings_events ORDER BY position")
    async with sealed_app(store_url, 1, 2) as app:
        rotation = await app.rotate_keys()
        assert (rotation.master_version, rotation.rewrapped, rotation.retired) == (2, 5, 5)
        assert (await app.rotate_keys()).rewrapped == 0  # nothing left to do
        await app.append(streams[0], [Secret(owner=streams[0], text="after rotation")])
    # New events got a new data key version; the old ones keep theirs.
    versions = raw_execute(
        store_url, "SELECT version FROM tidings_keys WHERE scope = ? ORDER BY version", streams[0]
    )
    assert versions == [(1,), (2,)]
    assert raw_execute(store_url, "SELECT id, data FROM tidings_events ORDER BY position")[:5] == before
    data_key_wrappers = raw_execute(
        store_url, "SELECT master_version FROM tidings_keys WHERE scope <> ?", CHECK_SCOPE
    )
    assert {row[0] for row in data_key_wrappers} == {2}
    async with sealed_app(store_url, 2) as app:  # the old master key version is gone
        texts = [s.event.text for stream in streams for s in await app.read_stream(stream)]  # type: ignore[attr-defined]
    assert texts == ["before rotation", "after rotation"] + ["before rotation"] * 4


async def test_a_data_key_is_replaced_after_its_use_limit(store_url: str) -> None:
    stream = unique("s")
    async with sealed_app(store_url, rotate_after=4) as app:
        for n in range(10):
            await app.append(stream, [Secret(owner=stream, text=f"n{n}")])
    versions = raw_execute(store_url, "SELECT version, uses FROM tidings_keys WHERE scope = ?", stream)
    assert len(versions) >= 3 and all(uses <= 4 for _, uses in versions)
    async with sealed_app(store_url) as app:  # a new process: loads every version
        assert [s.event.text for s in await app.read_stream(stream)] == [f"n{n}" for n in range(10)]  # type: ignore[attr-defined]


class Owners(Projection):
    name = "conformance_owners"
    pattern = "conformance.secret.*"

    async def handle(self, stored: object, view: View) -> None:
        event = stored.event  # type: ignore[attr-defined]
        await view.put(event.owner, {"text": event.text})


async def test_shredding_erases_a_scope_and_everything_still_rebuilds(store_url: str) -> None:
    cart, kept = Cart(unique("c")), Cart(unique("c"))
    for n in range(60):
        cart.add(f"secret-{n}")
    kept.add("plain")
    gone, other = unique("ann"), unique("bob")
    app = sealed_app(store_url)
    got: list[Event] = []

    @app.subscribe("conformance.secret.*", group="late")
    async def late(event: Secret, ctx: Context) -> None:
        got.append(event)

    async with app:
        await app.save(cart)
        await app.save(kept)
        await app.publish(Secret(owner=gone, text="to forget"), key=gone)
        await app.publish(Secret(owner=other, text="to keep"), key=other)
        await app.project(Owners())
        wrapped = raw_execute(store_url, "SELECT wrapped FROM tidings_keys WHERE scope = ?", gone)[0][0]
        assert await app.shred_keys(gone) == 1
        assert await app.shred_keys(Cart.stream_of(cart.id)) == 1
        assert raw_execute(store_url, "SELECT wrapped FROM tidings_keys WHERE scope = ?", gone) == [(None,)]
        if store_url.startswith("sqlite"):  # while the store is open, its write-ahead log too
            path = Path(store_url.removeprefix("sqlite:///"))
            files = [path, path.with_name(path.name + "-wal")]
            assert bytes(wrapped) not in b"".join(p.read_bytes() for p in files if p.exists())
        erased = await app.read_stream(gone)
        assert [(s.version, s.envelope.id, s.envelope.topic) for s in erased] == [
            (1, erased[0].envelope.id, "conformance.secret.noted")
        ]
        assert erased[0].event == Erased(erased_type="conformance.Secret")
        loaded = await app.load(Cart, cart.id)  # the snapshot is unreadable: replayed, all erased
        assert (loaded.items, loaded.version) == ({}, 60)
        assert (await app.load(Cart, kept.id)).items == {"plain": 1}
        assert await app.rebuild(Owners()) >= 2
        assert await app.read_model(Owners(), other, dict) == {"text": "to keep"}
        assert await app.read_model(Owners(), gone, dict) is None
        # An event of the shredded key after the erased one: once it is handled, the erased one
        # (before it in the key's order) was passed by.
        await app.publish(Secret(owner=gone, text="after the shred"), key=gone)
        async with app.running(**RUN):
            await eventually(lambda: len(got) == 2)
        assert sorted(e.text for e in got) == ["after the shred", "to keep"]  # type: ignore[attr-defined]
    async with sealed_app(store_url) as fresh:  # another process: the key is gone there too
        assert (await fresh.read_stream(gone))[0].event == Erased(erased_type="conformance.Secret")


async def test_sealed_envelopes_are_marked_and_keep_their_metadata(app: App) -> None:
    key = unique("k")
    record = await app.publish(Ping(key=key, n=1), key=key, ttl=timedelta(minutes=1))
    query = "SELECT topic, correlation_id FROM tidings_events WHERE id = ?"
    (row,) = raw_execute(app.store_url, query, record.envelope.id)
    assert row == ("conformance.bus.ping", record.envelope.id)  # routing metadata stays clear
    (stored,) = await app.read_stream(key)
    assert stored.envelope.datacontenttype == SEALED and stored.envelope.expirytime is not None
    assert stored.event == Ping(key=key, n=1)


async def test_the_key_cache_stays_bounded(store_url: str) -> None:
    streams = [unique("s") for _ in range(12)]
    async with sealed_app(store_url) as app:
        for stream in streams:
            await app.append(stream, [Secret(owner=stream, text=stream)])
    async with sealed_app(store_url, cached_scopes=4) as app:
        for _ in range(2):  # the second round reloads what the first evicted
            for stream in streams:
                assert [s.event for s in await app.read_stream(stream)] == [Secret(owner=stream, text=stream)]
        assert app.keys is not None and len(app.keys._loaded_at) <= 5


async def test_many_scopes_load_in_one_read(store_url: str) -> None:
    """One read of the log meets 600 scopes whose keys the reader does not hold yet: every backend
    looks them up together (``EventStore.data_keys`` with many scopes) and opens every event."""
    owners = [unique("o") for _ in range(600)]
    async with sealed_app(store_url) as writer:
        await writer.publish_all([(Secret(owner=o, text=o), o) for o in owners])
    async with sealed_app(store_url, name="reader") as reader:
        texts = [s.event.text async for s in reader.read_log(pattern="conformance.secret.*")]  # type: ignore[attr-defined]
    assert sorted(texts) == sorted(owners)
