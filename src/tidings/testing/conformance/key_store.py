"""The KeyStore suite: the stored data keys (``store.key_store``) and what a transaction makes and uses
of them (``tx.key_store``), asserted on every store engine.

The store never sees a key in the clear: it keeps wrapped keys by scope and version, counts the
encryptions reserved with each, and forgets them for good when a scope is shredded. The runtime
counts on these answers to never reuse a nonce budget or a shredded key (``runtime/keyring.py``).
Runs alone on the ``store`` fixture: ``from tidings.testing.conformance.key_store import *``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import msgspec

from tidings.ports import DataKeyRecord, EventStore
from tidings.testing.conformance.events import unique

#: A use limit far above what a test reserves, far below what retiring a key counts.
LIMIT = 2**32


def record(scope: str, version: int = 1, *, master_version: int = 1, uses: int = 0) -> DataKeyRecord:
    return DataKeyRecord(
        scope=scope,
        version=version,
        master_version=master_version,
        wrapped=os.urandom(60),
        uses=uses,
        created=datetime(2035, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )


async def add(store: EventStore, *records: DataKeyRecord) -> list[DataKeyRecord]:
    async with store.transaction() as tx:
        return [await tx.key_store.add_data_key(r) for r in records]


async def reserve(store: EventStore, scope: str, version: int, count: int, limit: int = LIMIT) -> int | None:
    async with store.transaction() as tx:
        return await tx.key_store.reserve_data_key_uses(scope, version, count, limit)


async def newest(store: EventStore, scope: str) -> DataKeyRecord | None:
    async with store.transaction() as tx:
        return await tx.key_store.newest_data_key(scope)


def by_version(records: list[DataKeyRecord]) -> list[DataKeyRecord]:
    return sorted(records, key=lambda r: (r.scope, r.version))


async def test_a_new_data_key_is_the_scopes_newest(store: EventStore) -> None:
    scope = unique("scope")
    assert await newest(store, scope) is None
    first, second = record(scope, 1), record(scope, 2, uses=5)
    assert await add(store, first) == [first]  # stored as given, to the microsecond
    assert await newest(store, scope) == first
    assert await add(store, second) == [second]
    assert await newest(store, scope) == second
    assert await newest(store, unique("scope")) is None


async def test_adding_a_stored_version_again_returns_the_stored_one(store: EventStore) -> None:
    """Two processes that make a scope's next version at once: one key wins, and both use it."""
    scope = unique("scope")
    stored, rival = record(scope, 1), record(scope, 1, master_version=2, uses=9)
    assert await add(store, stored) == [stored]
    assert await add(store, rival) == [stored]
    assert await store.key_store.data_keys([scope]) == [stored]


async def test_uses_are_reserved_up_to_the_limit(store: EventStore) -> None:
    scope = unique("scope")
    await add(store, record(scope, 1, uses=2))
    assert await reserve(store, scope, 1, 3, limit=10) == 5
    assert await reserve(store, scope, 1, 5, limit=10) == 10  # up to the limit itself
    assert await reserve(store, scope, 1, 1, limit=10) is None  # past it: refused
    assert await reserve(store, scope, 1, 0, limit=10) == 10
    assert await reserve(store, scope, 2, 1) is None  # no such version
    assert await reserve(store, unique("scope"), 1, 1) is None  # no such scope
    (stored,) = await store.key_store.data_keys([scope])
    assert stored.uses == 10, "a refused reservation counted"


async def test_data_keys_lists_every_version_of_the_scopes_asked(store: EventStore) -> None:
    first, second, third = unique("scope"), unique("scope"), unique("scope")
    records = [record(first, 1), record(first, 2), record(second, 1), record(third, 1)]
    await add(store, *records)
    assert by_version(await store.key_store.data_keys([first, second])) == by_version(records[:3])
    assert await store.key_store.data_keys([third]) == records[3:]
    assert await store.key_store.data_keys([unique("scope")]) == []
    assert await store.key_store.data_keys([]) == []


async def test_data_keys_answers_for_many_scopes_at_once(store: EventStore) -> None:
    """A rotation or a shred asks for many scopes at once (engines may split a long list)."""
    records = [record(unique("scope")) for _ in range(700)]
    await add(store, *records)
    kept = [r for n, r in enumerate(records) if n % 7]
    asked = [unique("scope"), *(r.scope for r in kept)]
    assert by_version(await store.key_store.data_keys(asked)) == by_version(kept)


async def test_data_key_page_walks_the_keyring_in_scope_and_version_order(store: EventStore) -> None:
    prefix = unique("paged")
    records = [record(f"{prefix}-{s}", v) for s in "cab" for v in (2, 1, 3)]
    await add(store, *records)
    walked: list[DataKeyRecord] = []
    after = (prefix, 0)
    while page := await store.key_store.data_key_page(after, 2):
        assert len(page) <= 2
        walked += page
        after = (page[-1].scope, page[-1].version)
    ours = [r for r in walked if r.scope.startswith(f"{prefix}-")]
    assert ours == by_version(records)
    assert [(r.scope, r.version) for r in walked] == sorted((r.scope, r.version) for r in walked)
    middle = (f"{prefix}-b", 2)
    assert [(r.scope, r.version) for r in await store.key_store.data_key_page(middle, 2)] == [
        (f"{prefix}-b", 3),
        (f"{prefix}-c", 1),
    ]


async def test_a_rewrap_is_a_compare_and_set(store: EventStore) -> None:
    """A rotation rewraps each key with the new master key version unless another process
    changed the key since it read it (rewrapped it first, or shredded it)."""
    scope = unique("scope")
    (stored,) = await add(store, record(scope, 1, master_version=1))
    wrapped = os.urandom(60)
    assert await store.key_store.rewrap_data_key(stored, 2, wrapped) is True
    assert await store.key_store.rewrap_data_key(stored, 3, os.urandom(60)) is False  # stale: changed
    (now,) = await store.key_store.data_keys([scope])
    assert now == msgspec.structs.replace(stored, master_version=2, wrapped=wrapped)
    assert await store.key_store.shred_data_keys(scope) == 1
    assert await store.key_store.rewrap_data_key(now, 3, os.urandom(60)) is False  # shredded stays so
    assert (await store.key_store.data_keys([scope]))[0].wrapped is None


async def test_retired_keys_reserve_nothing_more_but_stay(store: EventStore) -> None:
    live, other, shredded = unique("scope"), unique("scope"), unique("scope")
    await add(store, record(live, 1), record(live, 2), record(other, 1), record(shredded, 1))
    await store.key_store.shred_data_keys(shredded)
    assert await store.key_store.retire_data_keys() == 3  # the live versions, not the shredded one
    assert await store.key_store.retire_data_keys() == 0
    assert await reserve(store, live, 2, 1) is None
    assert await reserve(store, other, 1, 1) is None
    kept = await store.key_store.data_keys([live, other])
    assert len(kept) == 3 and all(r.wrapped is not None for r in kept), "retired keys must still open"
    await add(store, record(live, 3))  # the scope's next encryption makes a new version
    assert await reserve(store, live, 3, 1) == 1


async def test_shredding_destroys_every_version_of_a_scope_only(store: EventStore) -> None:
    scope, other = unique("scope"), unique("scope")
    await add(store, record(scope, 1), record(scope, 2), record(other, 1))
    assert await store.key_store.shred_data_keys(scope) == 2
    shredded = await store.key_store.data_keys([scope])
    assert len(shredded) == 2 and all(r.wrapped is None for r in shredded)
    assert (await store.key_store.data_keys([other]))[0].wrapped is not None
    found = await newest(store, scope)
    assert found is not None and found.version == 2 and found.wrapped is None  # shredded or not
    assert await reserve(store, scope, 2, 1) is None, "a shredded key reserved uses"
    assert await store.key_store.shred_data_keys(scope) == 0
    assert await store.key_store.shred_data_keys(unique("scope")) == 0
