"""The event store's guarantees, asserted on every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.errors import ConcurrencyError, MalformedEvent
from tidings.ports import ANY, NO_STREAM, EventStore, ExpectedVersion, Snapshot
from tidings.testing.conformance.events import CartCheckedOut, ItemAdded, codec, items, unique


async def test_append_numbers_versions_and_positions(store: EventStore) -> None:
    stream = unique("cart")
    first = await store.append(stream, items(stream, 3), expected_version=NO_STREAM)
    second = await store.append(stream, items(stream, 2), expected_version=3)
    records = first + second
    assert [r.version for r in records] == [1, 2, 3, 4, 5]
    positions = [r.position for r in records]
    assert positions == sorted(positions) and len(set(positions)) == 5
    assert await store.stream_version(stream) == 5
    assert await store.head_position() == positions[-1]
    read = await store.read_stream(stream)
    assert [r.envelope for r in read] == [r.envelope for r in records]
    assert [codec.decode(r.envelope) for r in read][3] == ItemAdded(cart_id=stream, sku="sku-0", quantity=1)


async def test_every_envelope_attribute_survives_the_store(store: EventStore) -> None:
    stream = unique("full")
    moment = datetime(2034, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    full = Envelope(
        id=f"full-{stream}",
        source="conformance/source",
        type="conformance.ItemAdded",
        topic="conformance.item.added",
        time=moment,
        data=b'{"cart_id":"c","sku":"s","quantity":2}',
        subject="cart/c",
        datacontenttype="application/json",
        dataschema="urn:conformance:item-added:1",
        schemaversion=1,
        correlationid="corr-1",
        causationid="cause-1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="vendor=opaque",
        expirytime=moment + timedelta(seconds=30),
        partitionkey="cart-c",
        # Other producers' attributes: kept as they came, with their JSON types.
        extensions={"comexampletenant": 'caf\u00e9 %25 "q"', "sampledrate": 7, "flagged": False},
    )
    minimal = Envelope(
        id=f"min-{stream}", source="s", type="t", topic="conformance.min", time=moment, data=b""
    )
    binary = Envelope(
        id=f"bin-{stream}",
        source="s",
        type="t",
        topic="conformance.bin",
        time=moment,
        data=bytes(range(256)),
        datacontenttype="application/octet-stream",
    )
    appended = await store.append(stream, [full, minimal, binary])
    assert [r.envelope for r in appended] == [full, minimal, binary]
    assert [r.envelope for r in await store.read_stream(stream)] == [full, minimal, binary]
    assert [r.envelope async for r in store.read_log()] == [full, minimal, binary]
    assert [r.envelope for r in await store.read_stream(stream, backwards=True)] == [binary, minimal, full]


@pytest.mark.parametrize("expected", [NO_STREAM, 0, 1, 3])
async def test_wrong_expected_version_raises_and_writes_nothing(
    store: EventStore, expected: ExpectedVersion
) -> None:
    stream = unique("cart")
    await store.append(stream, items(stream, 2))
    with pytest.raises(ConcurrencyError) as caught:
        await store.append(stream, items(stream, 3), expected_version=expected)
    assert caught.value.actual == 2 and caught.value.stream == stream
    assert stream in str(caught.value)
    assert len(await store.read_stream(stream)) == 2


async def test_expected_version_any_and_new_stream(store: EventStore) -> None:
    stream = unique("cart")
    await store.append(stream, items(stream, 1), expected_version=ANY)
    await store.append(stream, items(stream, 1), expected_version=ANY)
    with pytest.raises(ConcurrencyError):
        await store.append(unique("cart"), items(stream, 1), expected_version=2)
    assert await store.stream_version(stream) == 2


async def test_racing_appenders_with_one_expected_version_have_one_winner(store: EventStore) -> None:
    stream = unique("cart")
    await store.append(stream, items(stream, 1))

    async def attempt() -> bool:
        try:
            await store.append(stream, items(stream, 5), expected_version=1)
        except ConcurrencyError:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt() for _ in range(6)))
    assert outcomes.count(True) == 1
    records = await store.read_stream(stream)
    assert [r.version for r in records] == list(range(1, 7))


async def test_appending_a_stored_id_is_a_noop_returning_the_stored_record(store: EventStore) -> None:
    stream = unique("cart")
    batch = items(stream, 3)
    first = await store.append(stream, batch)
    again = await store.append(stream, batch, expected_version=0)  # a retry: no conflict
    assert again == first
    elsewhere = await store.append(unique("other"), batch[1:2])
    assert elsewhere == first[1:2]
    doubled = items(stream, 1)
    within = await store.append(stream, doubled + doubled)
    assert len(within) == 2 and within[0] == within[1] and within[0].version == 4
    assert len(await store.read_stream(stream)) == 4
    positions = [r.position async for r in store.read_log()]
    assert len(positions) == len(set(positions)) == 4


async def test_a_failing_batch_leaves_nothing(store: EventStore) -> None:
    stream = unique("cart")
    naive = codec.encode(ItemAdded(cart_id=stream, sku="x"), time=datetime(2020, 1, 1))  # no zone
    with pytest.raises(MalformedEvent, match="time zone"):
        await store.append(stream, [*items(stream, 2), naive])
    assert await store.read_stream(stream) == []
    assert await store.stream_version(stream) == 0
    assert [r async for r in store.read_log()] == []


async def test_reading_a_stream_in_every_direction(store: EventStore) -> None:
    stream = unique("cart")
    await store.append(stream, items(stream, 10))

    def versions(records: list[RecordedEvent]) -> list[int]:
        return [r.version for r in records]

    assert versions(await store.read_stream(stream, from_version=4)) == list(range(4, 11))
    assert versions(await store.read_stream(stream, to_version=3)) == [1, 2, 3]
    assert versions(await store.read_stream(stream, from_version=3, limit=2)) == [3, 4]
    assert versions(await store.read_stream(stream, backwards=True, limit=3)) == [10, 9, 8]
    assert versions(await store.read_stream(stream, backwards=True, to_version=5, limit=2)) == [5, 4]
    assert versions(await store.read_stream(stream, backwards=True)) == list(range(10, 0, -1))
    assert await store.read_stream(unique("missing")) == []
    assert await store.read_stream(stream, from_version=11) == []


async def test_reading_a_stream_as_of_a_time(store: EventStore) -> None:
    stream = unique("cart")
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for day in range(5):
        await store.append(stream, items(stream, 2, time=start + timedelta(days=day)))
    as_of = await store.read_stream(stream, at=start + timedelta(days=2, hours=1))
    assert [r.version for r in as_of] == [1, 2, 3, 4, 5, 6]
    assert await store.read_stream(stream, at=start - timedelta(seconds=1)) == []


async def test_the_log_in_batches_and_by_pattern(store: EventStore) -> None:
    carts = [unique("cart") for _ in range(3)]
    for cart in carts:
        await store.append(cart, items(cart, 4))
        await store.append(cart, [codec.encode(CartCheckedOut(cart_id=cart, total=4))])
    everything = [r async for r in store.read_log(batch_size=3)]
    assert len(everything) == 15
    positions = [r.position for r in everything]
    assert positions == sorted(set(positions))
    after = positions[6]
    assert [r.position async for r in store.read_log(after=after, batch_size=4)] == positions[7:]
    assert [r.position async for r in store.read_log(limit=5, batch_size=2)] == positions[:5]
    added = [r async for r in store.read_log(pattern="conformance.item.added", batch_size=2)]
    assert len(added) == 12 and {r.envelope.topic for r in added} == {"conformance.item.added"}
    one_level = [r async for r in store.read_log(pattern="conformance.*")]
    assert one_level == []
    cart_any = [r async for r in store.read_log(pattern="conformance.cart.*")]
    assert len(cart_any) == 3
    deep = [r async for r in store.read_log(pattern="conformance.>")]
    assert len(deep) == 15
    middle = [r async for r in store.read_log(pattern="*.*.checked_out")]
    assert [r.stream for r in middle] == carts


async def test_the_log_streams_with_flat_memory(store: EventStore) -> None:
    import tracemalloc

    stream = unique("bulk")
    for _ in range(10):
        await store.append(stream, items(stream, 1000))
    tracemalloc.start()
    try:
        count = 0
        async for _record in store.read_log(batch_size=200):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000
    # 10,000 decoded records would take several MB; a streaming reader holds one batch.
    assert peak < 2_000_000, f"peak {peak:,} bytes while streaming the log"


async def test_readers_never_skip_an_event_that_commits_late(store: EventStore) -> None:
    """8 concurrent appenders; a reader that follows the log must see every position once."""
    appenders, batches, per_batch = 8, 15, 3
    total = appenders * batches * per_batch
    done = asyncio.Event()

    async def append(n: int) -> None:
        stream = unique(f"race{n}")
        for _ in range(batches):
            await store.append(stream, items(stream, per_batch))
            await asyncio.sleep(0)

    async def follow() -> list[int]:
        seen: list[int] = []
        after = 0
        while len(seen) < total:
            batch = [r.position async for r in store.read_log(after=after, batch_size=50)]
            if batch:
                seen.extend(batch)
                after = batch[-1]
            elif done.is_set() and len(seen) < total:
                # Everything committed; one more pass must find the rest or it was skipped.
                rest = [r.position async for r in store.read_log(after=after)]
                seen.extend(rest)
                break
            else:
                await asyncio.sleep(0.001)
        return seen

    reader = asyncio.create_task(follow())
    await asyncio.gather(*(append(n) for n in range(appenders)))
    done.set()
    seen = await asyncio.wait_for(reader, timeout=60)
    every = [r.position async for r in store.read_log()]
    assert len(every) == total
    assert sorted(seen) == every, "the following reader skipped or repeated a position"


async def test_snapshots_by_version_and_time(store: EventStore) -> None:
    stream = unique("cart")
    t0 = datetime(2031, 5, 1, tzinfo=UTC)
    for hour in range(1, 31):
        await store.append(stream, items(stream, 1, time=t0 + timedelta(hours=hour)))
    for version in (10, 20, 30):
        time = t0 + timedelta(hours=version)
        await store.save_snapshot(Snapshot(stream, version, "shape/1", time, f"s{version}".encode()))
    newest = await store.load_snapshot(stream)
    assert newest is not None and newest.version == 30 and newest.state == b"s30"
    capped = await store.load_snapshot(stream, max_version=25)
    assert capped is not None and capped.version == 20
    timed = await store.load_snapshot(stream, at=t0 + timedelta(hours=15, minutes=30))
    assert timed is not None and timed.version == 10 and timed.time == t0 + timedelta(hours=10)
    assert await store.load_snapshot(stream, max_version=5) is None
    assert await store.load_snapshot(stream, at=t0) is None
    assert await store.load_snapshot(unique("none")) is None


async def test_reading_from_the_newest_snapshot_in_one_call(store: EventStore) -> None:
    stream = unique("cart")
    t0 = datetime(2033, 3, 1, tzinfo=UTC)
    for hour in range(1, 13):
        await store.append(stream, items(stream, 1, time=t0 + timedelta(hours=hour)))
    assert await store.read_from_snapshot(stream) == (None, await store.read_stream(stream))
    for version in (4, 8):
        await store.save_snapshot(Snapshot(stream, version, "shape/1", t0 + timedelta(hours=version), b"{}"))
    snapshot, after = await store.read_from_snapshot(stream)
    assert snapshot is not None and snapshot.version == 8
    assert [r.version for r in after] == [9, 10, 11, 12]
    snapshot, after = await store.read_from_snapshot(stream, to_version=7)
    assert snapshot is not None and snapshot.version == 4
    assert [r.version for r in after] == [5, 6, 7]
    snapshot, after = await store.read_from_snapshot(stream, at=t0 + timedelta(hours=9, minutes=1))
    assert snapshot is not None and snapshot.version == 8
    assert [r.version for r in after] == [9]


async def test_as_of_a_time_is_a_prefix_even_when_clocks_go_back(store: EventStore) -> None:
    """Event times come from producers' clocks; a stream as of a time is the longest prefix of its
    history that happened by then, never a selection with holes (which would look like damage)."""
    stream = unique("skewed")
    t0 = datetime(2032, 1, 1, tzinfo=UTC)
    for minutes in (1, 3, 2, 4):
        await store.append(stream, items(stream, 1, time=t0 + timedelta(minutes=minutes)))
    as_of = await store.read_stream(stream, at=t0 + timedelta(minutes=2, seconds=30))
    assert [r.version for r in as_of] == [1]
    assert [r.version for r in await store.read_stream(stream, at=t0 + timedelta(minutes=3))] == [1, 2, 3]
    assert (await store.verify()).ok


async def test_a_transaction_commits_appends_documents_and_checkpoints_together(store: EventStore) -> None:
    stream = unique("cart")
    async with store.transaction() as tx:
        await tx.append(stream, items(stream, 2))
        await tx.put_document("carts", stream, msgspec.json.encode({"items": 2}))
        await tx.set_checkpoint("reader", 7)
        assert await tx.get_document("carts", stream) == b'{"items":2}'
    assert await store.get_document("carts", stream) == b'{"items":2}'
    assert await store.get_checkpoint("reader") == 7

    class Boom(Exception):
        pass

    async def fail_midway() -> None:
        async with store.transaction() as tx:
            await tx.append(stream, items(stream, 3))
            await tx.put_document("carts", stream, b'{"items":5}')
            await tx.delete_document("carts", "other")
            await tx.set_checkpoint("reader", 9)
            raise Boom

    with pytest.raises(Boom):
        await fail_midway()
    assert await store.stream_version(stream) == 2
    assert await store.get_document("carts", stream) == b'{"items":2}'
    assert await store.get_checkpoint("reader") == 7
    async with store.transaction() as tx:
        await tx.clear_collection("carts")
    assert await store.get_document("carts", stream) is None
    assert await store.get_checkpoint("never-set") == 0


async def test_list_streams(store: EventStore) -> None:
    prefix = unique("listed")
    for n in range(3):
        await store.append(f"{prefix}-{n}", items(prefix, n + 1))
    listed = await store.list_streams(prefix=prefix)
    assert [(s.stream, s.version) for s in listed] == [(f"{prefix}-{n}", n + 1) for n in range(3)]
    assert len(await store.list_streams(prefix=prefix, limit=2)) == 2
    assert listed[0].first_time <= listed[0].last_time


async def test_verify_on_a_sound_store(store: EventStore) -> None:
    for _ in range(3):
        stream = unique("cart")
        await store.append(stream, items(stream, 4))
        await store.append(stream, items(stream, 1))
    report = await store.verify()
    assert report.ok and report.streams == 3 and report.events == 15
