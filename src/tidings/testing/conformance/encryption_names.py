"""Names and scopes with encryption on, asserted on every backend: a stream name or key that no
store can hold is an ``InvalidArgument`` (a dead letter in a handler, never a backend outage
retried for ever), and a stream named like a topic's scope never shares that topic's data key."""

from __future__ import annotations

import pytest

from tidings.app import App
from tidings.domain.events import Erased, Event
from tidings.errors import InvalidArgument
from tidings.ports import EventStore
from tidings.runtime.context import Context
from tidings.runtime.crypto import read_header
from tidings.runtime.encryption import Encryption
from tidings.runtime.keyring import CHECK_SCOPE, KeyRing
from tidings.runtime.retries import Retry
from tidings.testing.conformance.encryption import RUN, master, sealed_app
from tidings.testing.conformance.events import Ping, unique
from tidings.testing.eventually import eventually
from tidings.testing.raw import raw_execute

#: Names that no store can hold, and what the error says about each.
BAD_NAMES = {
    "nul": ("order\x00-1", "control character"),
    "surrogate": ("order-\ud800", "lone surrogate"),
    "empty": ("", "1 to 512 characters"),
    "too long": ("x" * 513, "1 to 512 characters"),
}


class Confided(Event, topic="conformance.confided.noted", type="conformance.Confided"):
    text: str


class Whispered(Event, topic="conformance.whispered.noted", type="conformance.Whispered"):
    text: str


@pytest.mark.parametrize("name", BAD_NAMES, ids=list(BAD_NAMES))
async def test_a_name_no_store_can_hold_is_an_invalid_argument(store_url: str, name: str) -> None:
    """Before any key is looked up with it: a NUL used to reach PostgreSQL as the key's scope
    (and read as the store being down), a lone surrogate escaped as a bare ``UnicodeEncodeError``,
    an empty stream name as a ``ConfigurationError``."""
    bad, says = BAD_NAMES[name]
    async with sealed_app(store_url) as app:
        with pytest.raises(InvalidArgument, match=f"stream name .*{says}"):
            await app.append(bad, Confided(text="x"))
        with pytest.raises(InvalidArgument, match=f"key .*{says}"):
            await app.publish(Confided(text="x"), key=bad)
        with pytest.raises(InvalidArgument, match=f"key .*{says}"):
            await app.publish_all([(Confided(text="x"), bad)])
        await app.append(unique("fine"), Confided(text="x"))  # the App goes on


async def test_a_scope_that_the_application_maps_to_is_checked_too(store_url: str) -> None:
    app = sealed_app(store_url, scope=lambda stream: stream.removeprefix("tenant-").replace("~", "\x00"))
    async with app:
        with pytest.raises(InvalidArgument, match="the scope that stream 'tenant-' maps to is invalid"):
            await app.append("tenant-", Confided(text="x"))
        with pytest.raises(InvalidArgument, match=r"encryption scope .*control character"):
            await app.append("tenant-a~b", Confided(text="x"))
        await app.append("tenant-a", Confided(text="x"))


async def test_a_bad_key_in_a_handlers_publication_is_dead_lettered_and_the_partition_goes_on(
    store_url: str,
) -> None:
    """A NUL in a publication's key, on PostgreSQL with encryption, used to fail the key lookup
    as ``BackendUnavailable``: retried for ever, and the partition stopped."""
    app = sealed_app(store_url)
    key, done = unique("k"), unique("done")
    handled: list[int] = []

    @app.subscribe("conformance.bus.ping", group="publishers", retry=Retry(attempts=5, backoff=0.01))
    async def publish_on(event: Ping, ctx: Context) -> None:
        if event.n == 1:
            await ctx.publish(Confided(text="now"), key="bad\x00key")
        async with ctx.unit_of_work() as uow:
            uow.publish(Confided(text="later"), key={2: "bad\x00key", 3: "bad-\udc80"}.get(event.n, done))
        handled.append(event.n)

    async def dead_lettered() -> bool:  # the unit of work commits once the handler returns
        return len(await app.dead_letters("publishers")) >= 3 and len(await app.read_stream(done)) == 1

    async with app, app.running(**RUN):
        for n in (1, 2, 3, 4):  # one key: one partition, in this order
            await app.publish(Ping(key=key, n=n), key=key)
        await eventually(dead_lettered)
        letters = await app.dead_letters("publishers")
        published = await app.read_stream(done)
    found = sorted((x.reason, x.attempts, x.error.split(":")[0], x.key) for x in letters)
    assert found == [("failed", 1, "InvalidArgument", key)] * 3
    assert all(("control character" in x.error or "surrogate" in x.error) for x in letters)
    assert [s.event for s in published] == [Confided(text="later")] and handled == [4]


async def test_a_stream_named_like_a_topics_scope_has_a_key_of_its_own(store_url: str) -> None:
    """A stream (or a publication's key) called ``topic:<topic>`` used to share the data key of
    that topic's unkeyed events: shredding it erased them all."""
    lookalike = f"topic:{Confided.__event_topic__}"
    async with sealed_app(store_url) as app:
        unkeyed = await app.publish(Confided(text="unkeyed"))
        await app.append(lookalike, Confided(text="in the stream"))
        await app.publish(Confided(text="keyed"), key=lookalike)
        scopes = {read_header(r.envelope.data, "event").scope for r in await app.read_stream(lookalike)}
        (stored,) = await app.read_stream(unkeyed.stream)
        topic_scope = read_header(stored.envelope.data, "event").scope
        assert topic_scope == lookalike and len(scopes) == 1 and topic_scope not in scopes
        assert await app.shred_keys(lookalike) == 1
        assert [s.event for s in await app.read_stream(lookalike)] == [
            Erased(erased_type="conformance.Confided")
        ] * 2
        assert (await app.read_stream(unkeyed.stream))[0].event == Confided(text="unkeyed")
        assert await app.shred_keys(topic=Confided.__event_topic__) == 1
        assert (await app.read_stream(unkeyed.stream))[0].event == Erased(erased_type="conformance.Confided")


class OldNaming(KeyRing):
    """The keyring as it named scopes before kinds had namespaces: a stream was its own scope,
    whatever its name (so ``topic:<topic>`` was the topic's)."""

    def stream_scope(self, stream: str) -> str:
        return stream


class OldEncryption(Encryption):
    def keyring(self, store: EventStore) -> KeyRing:
        return OldNaming(store, master(1))


async def test_events_sealed_under_the_old_scope_names_still_open(store_url: str) -> None:
    """Stores written before scopes had namespaces: every old event finds its key; a stream
    named like a topic's scope moves to a key of its own for new events."""
    lookalike, plain = f"topic:{Whispered.__event_topic__}", unique("plain")
    async with App("secure", store=store_url, encryption=OldEncryption()) as old:
        unkeyed = await old.publish(Whispered(text="old unkeyed"))
        await old.append(lookalike, Whispered(text="old in the stream"))
        await old.append(plain, Whispered(text="old plain"))
    old_scopes = {
        row[0]
        for row in raw_execute(store_url, "SELECT scope FROM tidings_keys WHERE scope <> ?", CHECK_SCOPE)
    }
    assert old_scopes == {lookalike, plain}  # the stream shared the topic's key
    async with sealed_app(store_url) as app:
        await app.append(lookalike, Whispered(text="new in the stream"))
        await app.append(plain, Whispered(text="new plain"))
        again = await app.publish(Whispered(text="new unkeyed"))
        assert [s.event for s in await app.read_stream(lookalike)] == [
            Whispered(text="old in the stream"),
            Whispered(text="new in the stream"),
        ]
        assert [s.event for s in await app.read_stream(plain)] == [
            Whispered(text="old plain"),
            Whispered(text="new plain"),
        ]
        assert (await app.read_stream(unkeyed.stream))[0].event == Whispered(text="old unkeyed")
        assert (await app.read_stream(again.stream))[0].event == Whispered(text="new unkeyed")
        new_scopes = {
            row[0]
            for row in raw_execute(store_url, "SELECT scope FROM tidings_keys WHERE scope <> ?", CHECK_SCOPE)
        }
        assert len(new_scopes - old_scopes) == 1  # the lookalike stream's own; the rest kept theirs
        # Shredding the stream never touches the topic's key; its old events shared that key
        # and stay readable until the topic's key is shredded (docs/security.md).
        assert await app.shred_keys(lookalike) == 1
        assert [s.event for s in await app.read_stream(lookalike)] == [
            Whispered(text="old in the stream"),
            Erased(erased_type="conformance.Whispered"),
        ]
        assert (await app.read_stream(again.stream))[0].event == Whispered(text="new unkeyed")
        assert await app.shred_keys(plain) == 1
        assert {type(s.event) for s in await app.read_stream(plain)} == {Erased}
