"""Tampering behind tidings' back is reported, never silently served."""

from __future__ import annotations

import pytest

from tidings.errors import IntegrityError
from tidings.ports import EventStore
from tidings.testing.conformance.events import items, unique
from tidings.testing.raw import raw_execute

_SET_ENVELOPE = "UPDATE tidings_events SET envelope = ? WHERE stream = ? AND version = ?"
_GET_ENVELOPE = "SELECT envelope FROM tidings_events WHERE stream = ? AND version = ?"


async def _two_streams(store: EventStore) -> tuple[str, str]:
    victim, bystander = unique("victim"), unique("bystander")
    for stream in (victim, bystander):
        await store.append(stream, items(stream, 5))
    return victim, bystander


async def test_an_altered_event_breaks_verify_and_reads(store: EventStore, store_url: str) -> None:
    victim, bystander = await _two_streams(store)
    (document,) = raw_execute(
        store_url, "SELECT envelope FROM tidings_events WHERE stream = ? AND version = 3", victim
    )[0]
    forged = bytes(document).replace(b'"quantity":3', b'"quantity":300')
    assert forged != bytes(document)
    raw_execute(
        store_url, "UPDATE tidings_events SET envelope = ? WHERE stream = ? AND version = 3", forged, victim
    )
    report = await store.verify()
    assert not report.ok
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 3)]
    with pytest.raises(IntegrityError, match=victim):
        await store.read_stream(victim)
    with pytest.raises(IntegrityError):
        await store.read_stream(victim, from_version=3, to_version=3)
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
    rows = raw_execute(
        store_url,
        "SELECT version, envelope FROM tidings_events WHERE stream = ? AND version IN (1, 2)",
        victim,
    )
    by_version = {version: bytes(document) for version, document in rows}
    raw_execute(
        store_url,
        "UPDATE tidings_events SET envelope = ? WHERE stream = ? AND version = 1",
        by_version[2],
        victim,
    )
    raw_execute(
        store_url,
        "UPDATE tidings_events SET envelope = ? WHERE stream = ? AND version = 2",
        by_version[1],
        victim,
    )
    report = await store.verify()
    assert [(p.stream, p.version) for p in report.problems] == [(victim, 1)]


async def test_garbage_in_a_row_is_an_integrity_error_on_the_log(store: EventStore, store_url: str) -> None:
    victim, _ = await _two_streams(store)
    raw_execute(
        store_url,
        "UPDATE tidings_events SET envelope = ? WHERE stream = ? AND version = 1",
        b"\xff{not json",
        victim,
    )
    with pytest.raises(IntegrityError, match="damaged"):
        _ = [record async for record in store.read_log()]
    assert not (await store.verify()).ok
