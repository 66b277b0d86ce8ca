"""Tampering behind tidings' back is reported, never silently served."""

from __future__ import annotations

import pytest

from tidings.adapters.registry import open_store
from tidings.errors import IntegrityError, TidingsError
from tidings.ports import EventStore
from tidings.testing.conformance.events import items, unique
from tidings.testing.raw import raw_execute

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
