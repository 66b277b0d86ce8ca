"""The Feed suite: what consumer groups and the relay may count on when they read a log by
partition (``tidings.ports.Feed``), asserted on any feed.

It runs alone, against one fixture, ``feed_under_test``: a ``FeedUnderTest`` that gives the feed
and a way to put events into the log it reads. ``tidings.testing.plugin`` gives one per backend
(the SQL stores' own feeds; JetStream's, fed by a relay); an engine of your own gives its own
fixture beside ``from tidings.testing.conformance.feed import *`` (docs/adapters.md).

Positions are the feed's own (a JetStream feed counts stream sequences, not store positions), so
the suite learns them only by reading the feed back.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, suppress
from datetime import UTC, datetime, timedelta
from typing import Protocol

from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.ports import Feed
from tidings.testing.conformance.events import ItemAdded, codec, items, unique

#: How long a woken watch may take: "soon" with room for a loaded machine.
WAKE_WITHIN = 5.0
_PAGE = 100


class FeedUnderTest(Protocol):
    """A feed and the log behind it, fresh for one test."""

    @property
    def feed(self) -> Feed: ...

    async def fill(self, stream: str, envelopes: Sequence[Envelope]) -> None:
        """Append ``envelopes`` to ``stream`` of the log that the feed reads, as another process
        would (another connection, another publisher); return once the feed can read them."""

    def reopen(self) -> AbstractAsyncContextManager[Feed]:
        """The same log's feed opened anew, as another process opens it."""


def key_of(envelope: Envelope, stream: str) -> str:
    """The partition key that places an event: its own, else its stream's name."""
    return envelope.partitionkey or stream


async def read_all(feed: Feed, partition: int, *, after: int = 0) -> list[RecordedEvent]:
    """Every event of the partition after a position, page by page."""
    found: list[RecordedEvent] = []
    while page := await feed.read_partition(partition, after=after, limit=_PAGE):
        positions = [r.position for r in page]
        # Checked here, or a feed that repeats its last event would keep this loop going.
        assert positions == sorted(set(positions)) and positions[0] > after, (
            f"partition {partition} after {after}: positions {positions[:5]}... not ascending past it"
        )
        found += page
        after = page[-1].position
    return found


async def tails(feed: Feed) -> list[int]:
    """Each partition's last position (0: empty): what a test reads after, to see only its own."""
    ends = []
    for partition in range(feed.partitions):
        found = await read_all(feed, partition)
        ends.append(found[-1].position if found else 0)
    return ends


async def test_a_feed_has_partitions(feed_under_test: FeedUnderTest) -> None:
    feed = feed_under_test.feed
    assert isinstance(feed, Feed)
    assert isinstance(feed.partitions, int) and feed.partitions >= 1
    before = feed.partitions
    await feed_under_test.fill(unique("cart"), items("c", 2))
    assert feed.partitions == before, "appends changed the feed's partitions"


async def test_a_feed_keeps_its_partitions_when_opened_again(feed_under_test: FeedUnderTest) -> None:
    """Every process reads the same partitions: a key's events are where a reopened feed looks."""
    feed = feed_under_test.feed
    async with feed_under_test.reopen() as again:
        assert again.partitions == feed.partitions


async def test_partition_of_is_deterministic_and_in_range(feed_under_test: FeedUnderTest) -> None:
    """Every process must place a key alike: the same key, the same partition, whoever asks."""
    feed = feed_under_test.feed
    keys = ["", "a", "café/ü", "order 42", "x" * 500, *(unique("key") for _ in range(200))]
    placed = [feed.partition_of(key) for key in keys]
    assert all(isinstance(p, int) and 0 <= p < feed.partitions for p in placed)
    assert [feed.partition_of(key) for key in keys] == placed
    async with feed_under_test.reopen() as again:
        assert [again.partition_of(key) for key in keys] == placed


async def test_the_log_names_the_partition_of_a_key(feed_under_test: FeedUnderTest) -> None:
    """``Feed.partition_of``: the partition where the log puts the events of a key (the
    member that holds it redrives the key's dead letters)."""
    feed = feed_under_test.feed
    for n in range(5):
        stream = unique(f"placed-{n}")
        ends = await tails(feed)
        (envelope,) = items(stream, 1)
        await feed_under_test.fill(stream, [envelope])
        partition = feed.partition_of(stream)
        found = await feed.read_partition(partition, after=ends[partition], limit=1)
        assert [r.envelope.id for r in found] == [envelope.id]


async def test_each_partition_holds_its_keys_events_in_append_order(feed_under_test: FeedUnderTest) -> None:
    """Reading every partition gives every event once, in the partition of its key, in log
    order; the events of a key (of one stream, or of streams that share a partition key) in
    the order they were appended, each stream's versions counting up from 1."""
    feed = feed_under_test.feed
    ends = await tails(feed)
    carts = [unique("cart") for _ in range(6)]
    shared = unique("shared-key")
    keyed = [unique("keyed") for _ in range(2)]
    appended: list[tuple[str, Envelope]] = []
    for round_ in range(3):  # interleaved: each key's events come in several appends
        for cart in carts:
            batch = items(cart, 2)
            await feed_under_test.fill(cart, batch)
            appended += [(cart, e) for e in batch]
        for stream in keyed:
            batch = [codec.encode(ItemAdded(cart_id=stream, sku=f"r{round_}"), partition_key=shared)]
            await feed_under_test.fill(stream, batch)
            appended += [(stream, e) for e in batch]
    read = {p: await read_all(feed, p, after=ends[p]) for p in range(feed.partitions)}

    for partition, records in read.items():
        positions = [r.position for r in records]
        assert positions == sorted(set(positions)), f"partition {partition} out of log order"
        for record in records:
            assert feed.partition_of(key_of(record.envelope, record.stream)) == partition
    every = [r for records in read.values() for r in records]
    assert sorted(r.envelope.id for r in every) == sorted(e.id for _, e in appended), (
        "an event missing, repeated, or one that was never appended"
    )
    by_id = {r.envelope.id: r for r in every}
    assert all(by_id[e.id].envelope == e and by_id[e.id].stream == s for s, e in appended)
    by_key: dict[str, list[str]] = defaultdict(list)
    by_stream: dict[str, list[int]] = defaultdict(list)
    for records in read.values():
        for record in records:
            by_key[key_of(record.envelope, record.stream)].append(record.envelope.id)
            by_stream[record.stream].append(record.version)
    expected: dict[str, list[str]] = defaultdict(list)
    for stream, envelope in appended:
        expected[key_of(envelope, stream)].append(envelope.id)
    assert by_key == expected
    assert len(by_key[shared]) == 3 * len(keyed)
    assert all(versions == list(range(1, len(versions) + 1)) for versions in by_stream.values())


async def test_an_event_reads_back_from_the_feed_as_it_was_appended(feed_under_test: FeedUnderTest) -> None:
    """Every attribute, the data byte for byte, and a stream name and partition key of any
    characters a name may hold: a broker carries them in headers, where they must survive.
    (Extensions are strings here: binary mode carries their values as text, by the spec.)"""
    feed = feed_under_test.feed
    ends = await tails(feed)
    stream = f'{unique("odd")} caf\u00e9 50%/\x7f\x85\u2028 "q"'
    moment = datetime(2034, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    full = Envelope(
        id=f"full-{unique('id')} %25 \u00fc",
        source="conformance/source",
        type="conformance.ItemAdded",
        topic="conformance.item.added",
        time=moment,
        data=bytes(range(256)),
        subject="cart/c \u00e9",
        datacontenttype="application/octet-stream",
        dataschema="urn:conformance:item-added:1",
        schemaversion=1,
        correlationid="corr-1",
        causationid="cause-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="vendor=opaque",
        expirytime=moment + timedelta(seconds=30),
        partitionkey=f"order%2042 \u00fc {unique('key')}",
        extensions={"comexampletenant": 'caf\u00e9 %25 "q"', "sampledrate": "7"},
    )
    minimal = Envelope(
        id=f"min-{unique('id')}", source="s", type="t", topic="conformance.min", time=moment, data=b""
    )
    await feed_under_test.fill(stream, [full, minimal])
    for envelope, version in ((full, 1), (minimal, 2)):
        partition = feed.partition_of(key_of(envelope, stream))
        found = [
            r for r in await read_all(feed, partition, after=ends[partition]) if r.envelope.id == envelope.id
        ]
        assert [(r.envelope, r.stream, r.version) for r in found] == [(envelope, stream, version)]


async def test_after_excludes_and_limit_bounds(feed_under_test: FeedUnderTest) -> None:
    feed = feed_under_test.feed
    stream = unique("cart")
    partition = feed.partition_of(stream)
    ends = await tails(feed)
    await feed_under_test.fill(stream, items(stream, 4))
    await feed_under_test.fill(stream, items(stream, 3))
    full = await read_all(feed, partition, after=ends[partition])
    assert [r.version for r in full if r.stream == stream] == list(range(1, 8))
    assert full[0].position > 0  # after=0 reads a partition from its start

    async def read(after: int, limit: int) -> list[RecordedEvent]:
        return await feed.read_partition(partition, after=after, limit=limit)

    assert await read(ends[partition], 2) == full[:2]
    assert await read(full[2].position, _PAGE) == full[3:]
    assert await read(full[1].position, 3) == full[2:5]
    assert await read(full[5].position, 1) == full[6:7]
    assert await read(full[-1].position, _PAGE) == []
    assert await read(full[-1].position + 1000, _PAGE) == []


async def test_head_is_each_partitions_last_position(feed_under_test: FeedUnderTest) -> None:
    """``head`` (what a group's lag is measured against) is the position of a partition's last
    event as the feed reads it, 0 while it has none, and moves with its own partition only."""
    feed = feed_under_test.feed
    before = await tails(feed)
    assert [await feed.head(p) for p in range(feed.partitions)] == before
    stream = unique("headed")
    await feed_under_test.fill(stream, items(stream, 3))
    partition = feed.partition_of(stream)
    after = await tails(feed)
    assert after[partition] > before[partition]
    assert [await feed.head(p) for p in range(feed.partitions)] == after
    assert [a for p, a in enumerate(after) if p != partition] == [
        b for p, b in enumerate(before) if p != partition
    ]


async def test_checkpoint_names_differ_per_group_and_partition(feed_under_test: FeedUnderTest) -> None:
    feed = feed_under_test.feed
    groups = [unique("group"), unique("group")]
    names = [feed.checkpoint_name(g, p) for g in groups for p in range(feed.partitions)]
    assert all(isinstance(name, str) and name for name in names)
    assert len(set(names)) == len(names) == 2 * feed.partitions
    assert [feed.checkpoint_name(g, p) for g in groups for p in range(feed.partitions)] == names


async def test_watch_wakes_soon_after_another_writer_appends(feed_under_test: FeedUnderTest) -> None:
    """Idle readers wait on ``watch`` instead of polling fast: an append elsewhere must wake
    them within moments, and a cancelled watch must end."""
    feed = feed_under_test.feed
    woken = asyncio.Event()
    watching = asyncio.create_task(feed.watch(woken.set))
    try:
        # The watch may need a moment to start listening: append until it has woken once.
        for attempt in range(10):
            await feed_under_test.fill(unique(f"warm-{attempt}"), items("w", 1))
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), WAKE_WITHIN / 5)
                break
        assert woken.is_set(), "the watch never woke"
        await asyncio.sleep(0.2)  # wake-ups of the warming appends are over
        for attempt in range(3):  # listening now: each append wakes it, soon
            woken.clear()
            await feed_under_test.fill(unique(f"woke-{attempt}"), items("w", 1))
            await asyncio.wait_for(woken.wait(), WAKE_WITHIN)
        assert not watching.done(), "the watch ended before it was cancelled"
    finally:
        watching.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(watching, WAKE_WITHIN)
    assert watching.cancelled()
