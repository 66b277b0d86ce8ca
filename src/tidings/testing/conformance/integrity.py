"""Tampering behind tidings' back is reported, never silently served."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tidings.adapters.registry import open_store
from tidings.app import App
from tidings.domain.integrity import IntegrityReport, VerifiedHead, VerifiedState
from tidings.errors import IntegrityError, InvalidArgument, TidingsError
from tidings.ports import EventStore
from tidings.runtime.verified_record import read_verified_record, write_verified_record
from tidings.testing.conformance.events import ItemAdded, codec, items, unique
from tidings.testing.raw import raw_execute, rechain

_SET_DATA = "UPDATE tidings_events SET data = ? WHERE stream = ? AND version = ?"
_GET_DATA = "SELECT data FROM tidings_events WHERE stream = ? AND version = ?"


async def _two_streams(store: EventStore) -> tuple[str, str]:
    victim, bystander = unique("victim"), unique("bystander")
    for stream in (victim, bystander):
        await store.append(stream, items(stream, 5))
    return victim, bystander


async def test_an_altered_event_breaks_verify_and_reads(store: EventStore, store_url: str) -> None:
    victim, bystander = await _two_streams(store)
    ((data,),) = raw_execute(store_url, _GET_DATA, victim, 3)
    forged = bytes(data).replace(b'"quantity":3', b'"quantity":300')
    assert forged != bytes(data)
    raw_execute(store_url, _SET_DATA, forged, victim, 3)
    report = await store.verify()
    assert not report.ok
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 3)]
    with pytest.raises(IntegrityError, match=victim):
        await store.read_stream(victim)
    with pytest.raises(IntegrityError):
        await store.read_stream(victim, from_version=3, to_version=3)
    # Later events are authentic: their links hold, only the altered one is refused.
    assert [r.version for r in await store.read_stream(victim, from_version=4)] == [4, 5]
    assert len(await store.read_stream(bystander)) == 5


async def test_a_removed_event_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(store_url, "DELETE FROM tidings_events WHERE stream = ? AND version = 2", victim)
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 2)]
    assert "missing" in report.problems[0].problem
    with pytest.raises(IntegrityError, match="missing"):
        await store.read_stream(victim)
    with pytest.raises(IntegrityError):
        await store.read_stream(victim, from_version=3)


async def test_a_stream_cut_short_at_its_end_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(store_url, "DELETE FROM tidings_events WHERE stream = ? AND version >= 4", victim)
    report = await store.verify()
    assert [p.stream for p in report.problems] == [victim]
    assert "head" in report.problems[0].problem
    with pytest.raises(IntegrityError, match="removed"):
        await store.read_stream(victim)


async def test_swapped_events_are_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    ((first,),) = raw_execute(store_url, _GET_DATA, victim, 1)
    ((second,),) = raw_execute(store_url, _GET_DATA, victim, 2)
    raw_execute(store_url, _SET_DATA, second, victim, 1)
    raw_execute(store_url, _SET_DATA, first, victim, 2)
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 1)]


async def test_a_forged_topic_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(
        store_url,
        "UPDATE tidings_events SET topic = 'admin.granted' WHERE stream = ? AND version = 4",
        victim,
    )
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 4)]
    with pytest.raises(IntegrityError, match="hash chain"):
        await store.read_stream(victim, backwards=True, limit=2)


async def test_garbage_in_a_row_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(store_url, _SET_DATA, b"\xff{not json", victim, 1)
    assert not (await store.verify()).ok
    with pytest.raises(IntegrityError):
        await store.read_stream(victim)


async def test_a_forged_time_column_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(store_url, "UPDATE tidings_events SET time_us = 0 WHERE stream = ? AND version = 2", victim)
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 2)]
    assert "time" in report.problems[0].problem


async def test_inspecting_a_place_without_a_store_is_an_error_and_creates_nothing(store_url: str) -> None:
    inspector = open_store(store_url, create=False)
    with pytest.raises(TidingsError, match=r"no tidings store"):
        await inspector.open()
    await inspector.close()
    creator = open_store(store_url)  # the place is still empty: a store can be created there
    await creator.open()
    assert await creator.head_position() == 0
    await creator.close()
    inspector = open_store(store_url, create=False)
    await inspector.open()
    assert (await inspector.verify()).ok
    await inspector.close()


# -- columns outside the hash --------------------------------------------------------------


async def test_an_event_moved_to_another_partition_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    # Partition 99 is leased by no member: the event would never be delivered.
    raw_execute(
        store_url, "UPDATE tidings_events SET partition = 99 WHERE stream = ? AND version = 3", victim
    )
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 3)]
    assert "partition" in report.problems[0].problem


async def test_an_event_moved_to_another_valid_partition_is_reported(
    store: EventStore, store_url: str
) -> None:
    stream = unique("keyed")
    await store.append(stream, [codec.encode(ItemAdded(cart_id=stream, sku="a"), partition_key="key-7")])
    ((partition,),) = raw_execute(store_url, "SELECT partition FROM tidings_events WHERE stream = ?", stream)
    ((partitions,),) = raw_execute(store_url, "SELECT value FROM tidings_meta WHERE key = 'partitions'")
    other = (partition + 1) % int(partitions)
    raw_execute(store_url, "UPDATE tidings_events SET partition = ? WHERE stream = ?", other, stream)
    assert [p.stream for p in (await store.verify()).problems] == [stream]


async def test_a_forged_correlation_column_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(
        store_url,
        "UPDATE tidings_events SET correlation_id = 'other' WHERE stream = ? AND version = 1",
        victim,
    )
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 1)]
    assert "correlation" in report.problems[0].problem


async def test_an_event_moved_behind_its_successor_in_the_log_is_reported(
    store: EventStore, store_url: str
) -> None:
    victim, _ = await _two_streams(store)
    _move_to_log_end(store_url, victim, 1)
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 2)]
    assert "position" in report.problems[0].problem


async def test_an_event_moved_before_the_log_start_is_reported(store: EventStore, store_url: str) -> None:
    lone = unique("lone")
    await store.append(lone, items(lone, 1))
    if urlsplit(store_url).scheme != "sqlite":  # the table's owner may let positions be chosen
        raw_execute(store_url, "ALTER TABLE tidings_events ALTER COLUMN position SET GENERATED BY DEFAULT")
    # Readers start after position 0: this event would never be delivered.
    raw_execute(store_url, "UPDATE tidings_events SET position = -5 WHERE stream = ?", lone)
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(lone, 1)]
    assert "position -5" in report.problems[0].problem


# -- the verified record -------------------------------------------------------------------


async def _recorded(store: EventStore) -> IntegrityReport:
    report = await store.verify()
    assert report.ok
    assert report.verified is not None
    return report


async def test_an_edit_with_a_recomputed_chain_passes_verify_but_not_the_record(
    store: EventStore, store_url: str
) -> None:
    victim, _ = await _two_streams(store)
    record = (await _recorded(store)).verified
    ((data,),) = raw_execute(store_url, _GET_DATA, victim, 3)
    raw_execute(store_url, _SET_DATA, bytes(data).replace(b'"quantity":3', b'"quantity":300'), victim, 3)
    rechain(store_url, victim)
    # The chain has no key: whoever rewrites rows can rewrite their links and the head too.
    assert (await store.verify()).ok
    report = await store.verify(record)
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 5)]
    assert "verified record" in report.problems[0].problem
    assert report.verified is None


async def test_a_stream_cut_below_its_record_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    record = (await _recorded(store)).verified
    raw_execute(store_url, "DELETE FROM tidings_events WHERE stream = ? AND version >= 4", victim)
    rechain(store_url, victim)
    assert (await store.verify()).ok
    problems = (await store.verify(record)).problems
    assert [(p.stream, p.version) for p in problems if p.stream] == [(victim, 3)]
    assert "below its verified version 5" in problems[0].problem


async def test_a_removed_stream_is_reported(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    record = (await _recorded(store)).verified
    raw_execute(store_url, "DELETE FROM tidings_events WHERE stream = ?", victim)
    raw_execute(store_url, "DELETE FROM tidings_streams WHERE stream = ?", victim)
    assert (await store.verify()).ok
    problems = (await store.verify(record)).problems
    assert (victim, 5) in [(p.stream, p.version) for p in problems]
    assert any("gone" in p.problem for p in problems)


async def test_an_event_moved_in_the_log_is_reported_against_the_record(
    store: EventStore, store_url: str
) -> None:
    await _two_streams(store)
    lone = unique("lone")
    await store.append(lone, items(lone, 1))
    await store.append(unique("later"), items("later", 1))
    record = (await _recorded(store)).verified
    assert record is not None
    _move_to_log_end(store_url, lone, 1)
    assert (await store.verify()).ok  # one event: no order within its stream to break
    problems = (await store.verify(record)).problems
    assert [p.stream for p in problems] == [""]
    assert "moved" in problems[0].problem


async def test_what_is_appended_after_the_record_verifies_against_it(store: EventStore) -> None:
    victim, _ = await _two_streams(store)
    record = (await _recorded(store)).verified
    assert record is not None
    await store.append(victim, items(victim, 2))
    await store.append(unique("new"), items("new", 3))
    report = await store.verify(record)
    assert report.ok, report.problems
    assert report.verified is not None
    assert report.verified.log_end > record.log_end


async def test_a_record_of_another_store_is_reported(store: EventStore, tmp_path: Path) -> None:
    await _two_streams(store)
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}")
    await other.open()
    try:
        await other.append("elsewhere", items("elsewhere", 1))
        record = (await _recorded(other)).verified
    finally:
        await other.close()
    problems = (await store.verify(record)).problems
    assert [p.stream for p in problems] == [""]
    assert "another" in problems[0].problem or "not this store" in problems[0].problem


async def test_the_app_records_and_checks_against_a_file(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "heads.json"
    async with App("recorder", store=store_url) as app:
        victim = unique("victim")
        await app.store.append(victim, items(victim, 3))
        assert (await app.verify(record=path)).ok
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_verified_record(path).heads
        await app.store.append(victim, items(victim, 1))
        assert (await app.verify(against=path, record=path)).ok
        assert read_verified_record(path).log_end == await app.store.head_position()
        raw_execute(store_url, "DELETE FROM tidings_events WHERE stream = ? AND version = 4", victim)
        rechain(store_url, victim)
        before = path.read_bytes()
        report = await app.verify(against=path, record=path)
        assert not report.ok
        assert path.read_bytes() == before  # a failed verify records nothing
        with pytest.raises(InvalidArgument, match="cannot read"):
            await app.verify(against=tmp_path / "missing.json")
        path.write_bytes(before.replace(b'"log_end": ', b'"log_end": 1'))
        with pytest.raises(InvalidArgument, match="damaged"):
            await app.verify(against=path)
        path.write_bytes(b"{not json")
        with pytest.raises(InvalidArgument, match="not a readable"):
            await app.verify(against=path)


def test_a_record_file_round_trips(tmp_path: Path) -> None:
    state = VerifiedState("log", 8, 12, bytes(32), (VerifiedHead("s", 3, b"\x01" * 32),))
    write_verified_record(tmp_path / "r.json", state)
    assert read_verified_record(tmp_path / "r.json") == state


def _move_to_log_end(store_url: str, stream: str, version: int) -> None:
    """Give an event a new position after every other (PostgreSQL assigns it: the column is an
    identity that only ``DEFAULT`` may update)."""
    if urlsplit(store_url).scheme == "sqlite":
        new = "(SELECT max(position) + 1 FROM tidings_events)"
    else:
        new = "DEFAULT"
    raw_execute(
        store_url,
        f"UPDATE tidings_events SET position = {new} WHERE stream = ? AND version = ?",  # noqa: S608 - a fixed choice
        stream,
        version,
    )
