"""The GroupState suite: what a store keeps of consumer groups (``store.groups``) and what a
transaction writes of them (``tx.groups``), asserted on every store engine.

Leases share a group's partitions among its members; the inbox makes a handler's effects happen
once; dead letters are queued, redriven and purged by compare-and-set, and park the later events
of their key in an ordered group until the key is resolved. Runs alone on the ``store`` fixture
(a fresh, opened store): ``from tidings.testing.conformance.group_state import *``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.errors import InvalidArgument
from tidings.ports import DeadLetter, EventStore, StoreTransaction
from tidings.testing.conformance.events import ItemAdded, codec, unique

#: Long enough that no lease of a test expires while it runs (expiry is tested on its own).
TTL = 60.0


class _Rollback(Exception):
    """Raised inside a transaction to roll it back."""


async def _rolled_back(store: EventStore, write: Callable[[StoreTransaction], Awaitable[object]]) -> None:
    """Make ``write`` in a transaction that then fails."""

    async def attempt() -> None:
        async with store.transaction() as tx:
            await write(tx)
            raise _Rollback

    with pytest.raises(_Rollback):
        await attempt()


async def _write(store: EventStore, letter: DeadLetter) -> int:
    async with store.transaction() as tx:
        return await tx.groups.dead_letter(letter)


def _letter(group: str, key: str | None, reason: DeadLetterReason = DeadLetterReason.FAILED) -> DeadLetter:
    return DeadLetter(group=group, reason=reason, error="boom", key=key, dead_at=datetime.now(UTC))


async def _states(store: EventStore, group: str) -> dict[int, DeadLetterState]:
    return {x.id: x.state for x in await store.groups.dead_letters(group, state=None)}


async def test_members_share_the_partitions_evenly_and_take_over_a_released_share(
    store: EventStore,
) -> None:
    groups, group, every = store.groups, unique("leasing"), list(range(store.feed.partitions))
    assert sorted(await groups.lease(group, "member-a", ttl=TTL)) == every  # alone: everything
    assert await groups.lease(group, "member-b", ttl=TTL) == []  # nothing free yet
    a = sorted(await groups.lease(group, "member-a", ttl=TTL))  # gives its surplus up
    b = sorted(await groups.lease(group, "member-b", ttl=TTL))  # and the newcomer takes it
    assert sorted(a + b) == every and not set(a) & set(b), (a, b)
    assert abs(len(a) - len(b)) <= 1, f"uneven shares: {a} and {b}"
    assert sorted(await groups.lease(group, "member-a", ttl=TTL)) == a  # a renewal keeps its share
    assert sorted(await groups.lease(group, "member-b", ttl=TTL)) == b
    assert sorted(await groups.lease(unique("other"), "member-b", ttl=TTL)) == every  # groups apart
    await groups.release(group, "member-b")
    assert sorted(await groups.lease(group, "member-a", ttl=TTL)) == every


async def test_only_the_holder_holds_a_lease_and_only_while_it_renews(store: EventStore) -> None:
    """A member that lost its lease (released, or silent past its ttl) must not move the
    group's checkpoint: ``holds_lease`` is what the transaction checks before it does."""
    groups, group = store.groups, unique("holding")
    (first, *_) = sorted(await groups.lease(group, "member-a", ttl=TTL))
    async with store.transaction() as tx:
        assert await tx.groups.holds_lease(group, first, "member-a") is True
        assert await tx.groups.holds_lease(group, first, "member-b") is False
        assert await tx.groups.holds_lease(unique("other"), first, "member-a") is False
    await groups.release(group, "member-a")
    async with store.transaction() as tx:
        assert await tx.groups.holds_lease(group, first, "member-a") is False

    silent = unique("silent")
    # Long enough that a loaded machine still asks member-b within it, short for a test.
    (first, *_) = sorted(await groups.lease(silent, "member-a", ttl=1.5))
    assert await groups.lease(silent, "member-b", ttl=TTL) == []
    await asyncio.sleep(2.0)
    async with store.transaction() as tx:
        assert await tx.groups.holds_lease(silent, first, "member-a") is False, "an expired lease held"
    assert sorted(await groups.lease(silent, "member-b", ttl=TTL)) == list(range(store.feed.partitions))


async def test_the_inbox_takes_an_event_once_per_group_with_its_transaction(store: EventStore) -> None:
    group, other = unique("inbox"), unique("inbox")
    async with store.transaction() as tx:
        assert await tx.groups.mark_handled(group, "event-1") is True
        assert await tx.groups.mark_handled(group, "event-1") is False
    async with store.transaction() as tx:
        assert await tx.groups.mark_handled(group, "event-1", attempts=3) is False  # a duplicate
        assert await tx.groups.mark_handled(other, "event-1") is True  # each group its own inbox
    assert await store.groups.handled(group, ["event-1", "event-2"]) == {"event-1"}
    assert await store.groups.handled(group, []) == set()
    await _rolled_back(store, lambda tx: tx.groups.mark_handled(group, "event-2"))
    assert await store.groups.handled(group, ["event-2"]) == set(), "the inbox outlived its rollback"
    async with store.transaction() as tx:
        assert await tx.groups.mark_handled(group, "event-2") is True


async def test_handled_answers_for_many_events_at_once(store: EventStore) -> None:
    """A consumer asks for a whole batch (engines may split a long list, as SQLite must)."""
    group = unique("batch")
    ids = [unique("event") for _ in range(700)]
    marked = [event_id for n, event_id in enumerate(ids) if n % 7]
    async with store.transaction() as tx:
        for event_id in marked:
            await tx.groups.mark_handled(group, event_id)
    assert await store.groups.handled(group, ids) == set(marked)


async def test_dead_letters_read_back_as_written_by_group_and_state(store: EventStore) -> None:
    first, second = unique("letters"), unique("letters")
    now = datetime(2034, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    full = DeadLetter(
        group=first,
        reason=DeadLetterReason.FAILED,
        error='caf\u00e9 "boom"',
        traceback="Traceback (most recent call last): ...",
        attempts=3,
        event_id="event-1",
        position=7,
        stream="cart-1",
        topic="conformance.item.added",
        key="cart-1",
        envelope=b'{"specversion":"1.0"}',
        raw=bytes(range(256)),
        first_failed=now - timedelta(seconds=5),
        dead_at=now,
    )
    bare = DeadLetter(group=first, reason=DeadLetterReason.EXPIRED, error="", dead_at=now)
    elsewhere = DeadLetter(group=second, reason=DeadLetterReason.MALFORMED, error="junk", dead_at=now)
    entries = [await _write(store, letter) for letter in (full, bare, elsewhere)]
    assert len(set(entries)) == 3
    await _rolled_back(store, lambda tx: tx.groups.dead_letter(_letter(first, "gone")))
    written = [
        msgspec.structs.replace(x, id=e) for x, e in zip((full, bare, elsewhere), entries, strict=True)
    ]
    groups = store.groups
    assert await groups.dead_letters(first, state=None) == written[:2], "the rolled-back letter stayed"
    assert await groups.dead_letters(second, state=None) == written[2:]
    assert await groups.dead_letters(state=None) == written
    assert await groups.dead_letters(first, state=None, limit=1) == written[:1]
    assert await groups.set_dead_letter_state([entries[0]], DeadLetterState.REDRIVE) == 1
    assert await groups.dead_letters(first, state=DeadLetterState.DEAD) == written[1:2]
    redrive = msgspec.structs.replace(written[0], state=DeadLetterState.REDRIVE)
    assert await groups.dead_letters(first, state=DeadLetterState.REDRIVE) == [redrive]
    assert await groups.dead_letters(state=DeadLetterState.DEAD) == written[1:]
    assert await groups.dead_letters(unique("none"), state=None) == []
    assert await groups.set_dead_letter_state(entries[1:], DeadLetterState.PURGED) == 2
    assert await groups.dead_letters(state=DeadLetterState.DEAD) == []


async def test_a_redrive_settles_only_a_letter_queued_for_redrive(store: EventStore) -> None:
    """``settle_dead_letter`` is a compare-and-set out of ``redrive``: a run that ends after
    another run settled the letter (as redriven) cannot put it back to dead."""
    group = unique("settling")
    letter = DeadLetter(group=group, reason=DeadLetterReason.FAILED, error="boom", dead_at=datetime.now(UTC))
    async with store.transaction() as tx:
        entry = await tx.groups.dead_letter(letter)
    async with store.transaction() as tx:
        assert (
            await tx.groups.settle_dead_letter(entry, DeadLetterState.REDRIVEN) is False
        )  # not queued: stays dead
    assert await store.groups.set_dead_letter_state([entry], DeadLetterState.REDRIVE) == 1
    async with store.transaction() as tx:
        assert await tx.groups.settle_dead_letter(entry, DeadLetterState.REDRIVEN) is True
    async with store.transaction() as tx:
        assert await tx.groups.settle_dead_letter(entry, DeadLetterState.DEAD) is False
    assert [x.state for x in await store.groups.dead_letters(group, state=None)] == ["redriven"]


async def test_letters_read_back_in_the_vocabulary(store: EventStore) -> None:
    """Every store hands a letter's reason and state back as the enums, a reason written by
    another version of tidings as itself (never an error that would stop the queue), and
    refuses a state that does not exist."""
    group = unique("vocabulary")
    now = datetime.now(UTC)
    for reason in (DeadLetterReason.PARKED, DeadLetterReason("quarantined")):
        async with store.transaction() as tx:
            await tx.groups.dead_letter(DeadLetter(group=group, reason=reason, error="e", dead_at=now))
    read = await store.groups.dead_letters(group, state=None)
    assert [(x.reason, x.state) for x in read] == [("parked", "dead"), ("quarantined", "dead")]
    assert all(isinstance(x.reason, DeadLetterReason) and x.state is DeadLetterState.DEAD for x in read)
    with pytest.raises(InvalidArgument, match="dead letter state must be one of"):
        await store.groups.set_dead_letter_state([read[0].id], "deed")  # type: ignore[arg-type]


async def test_a_key_is_blocked_while_it_has_an_unresolved_letter(store: EventStore) -> None:
    """An ordered group parks the events of a key behind its dead letter: dead or queued for
    redrive, the key stays blocked; redriven or purged, it is free again."""
    group = unique("blocking")
    failed = await _write(store, _letter(group, "key-1"))
    parked = await _write(store, _letter(group, "key-2", DeadLetterReason.PARKED))
    await _write(store, _letter(group, None))  # a letter of no key blocks nothing
    await _write(store, _letter(unique("other"), "key-3"))  # another group's
    groups = store.groups
    assert await groups.blocked_keys(group) == {"key-1", "key-2"}
    await groups.set_dead_letter_state([failed], DeadLetterState.REDRIVE)
    assert await groups.blocked_keys(group) == {"key-1", "key-2"}
    await groups.set_dead_letter_state([failed], DeadLetterState.PURGED)
    assert await groups.blocked_keys(group) == {"key-2"}
    await groups.set_dead_letter_state([parked], DeadLetterState.REDRIVE)
    async with store.transaction() as tx:
        assert await tx.groups.settle_dead_letter(parked, DeadLetterState.REDRIVEN)
    assert await groups.blocked_keys(group) == set()
    assert await groups.blocked_keys(unique("none")) == set()


async def test_unparking_queues_a_keys_parked_letters_and_release_frees_unblocked_keys(
    store: EventStore,
) -> None:
    """``unpark`` queues a key's parked letters for redrive, never the letter that blocks it;
    ``release_parked`` queues those of keys with nothing unresolved but them (their blocking
    letter purged), never of a key that still has a failed letter, or one queued for redrive."""
    group, other = unique("parking"), unique("parking")
    parked = DeadLetterReason.PARKED
    a_failed = await _write(store, _letter(group, "a"))
    a_parked = [await _write(store, _letter(group, "a", parked)) for _ in range(2)]
    b_parked = await _write(store, _letter(group, "b", parked))  # its blocker is gone
    c_failed = await _write(store, _letter(group, "c"))
    c_parked = await _write(store, _letter(group, "c", parked))
    d_queued = await _write(store, _letter(group, "d", parked))
    d_parked = await _write(store, _letter(group, "d", parked))
    elsewhere = await _write(store, _letter(other, "b", parked))
    groups = store.groups
    await groups.set_dead_letter_state([d_queued], DeadLetterState.REDRIVE)  # d: being redriven

    assert await groups.release_parked(group) == 1  # b's: nothing unresolved but parked letters
    states = await _states(store, group)
    assert states[b_parked] == "redrive"
    assert [states[e] for e in (a_failed, *a_parked, c_failed, c_parked, d_parked)] == ["dead"] * 6
    assert await _states(store, other) == {elsewhere: "dead"}, "another group's letter released"
    assert await groups.release_parked(group) == 0

    assert await groups.unpark(group, "a") == 2
    states = await _states(store, group)
    assert [states[e] for e in (a_failed, *a_parked)] == ["dead", "redrive", "redrive"]
    assert await groups.unpark(group, "a") == 0
    assert await groups.unpark(group, "missing") == 0

    await groups.set_dead_letter_state([c_failed], DeadLetterState.PURGED)
    async with store.transaction() as tx:
        assert await tx.groups.settle_dead_letter(d_queued, DeadLetterState.REDRIVEN)
    assert await groups.release_parked(group) == 2  # c's, and d's once its redrive ended
    states = await _states(store, group)
    assert (states[c_parked], states[d_parked]) == ("redrive", "redrive")


async def test_a_trace_tells_how_each_group_dealt_with_a_correlations_events(store: EventStore) -> None:
    root_id = unique("root")
    stream, unrelated = unique("traced"), unique("untraced")
    root = codec.encode(ItemAdded(cart_id=stream, sku="root"), event_id=root_id)
    children = [
        codec.encode(ItemAdded(cart_id=stream, sku=f"child-{n}"), correlation_id=root_id) for n in range(2)
    ]
    await store.append(stream, [root, *children])
    await store.append(unrelated, [codec.encode(ItemAdded(cart_id=unrelated, sku="x"))])
    billing, shipping = unique("billing"), unique("shipping")
    async with store.transaction() as tx:
        await tx.groups.mark_handled(billing, root_id, attempts=2)
        await tx.groups.mark_handled(billing, children[0].id)
        letter = msgspec.structs.replace(_letter(shipping, stream), event_id=children[1].id, attempts=4)
        await tx.groups.dead_letter(letter)
    trace = await store.groups.trace(root_id)
    assert [r.envelope.id for r in trace.events] == [root_id, children[0].id, children[1].id]
    assert sorted((h.group, h.event_id, h.outcome, h.attempts) for h in trace.handlings) == sorted(
        [
            (billing, root_id, "handled", 2),
            (billing, children[0].id, "handled", 1),
            (shipping, children[1].id, "failed", 4),
        ]
    )
    assert [h.at for h in trace.handlings] == sorted(h.at for h in trace.handlings)
    assert len((await store.groups.trace(root_id, limit=2)).events) == 2
    assert (await store.groups.trace(unique("nothing"))).events == []
