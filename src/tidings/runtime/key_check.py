"""The master key check: an App given the wrong master key is refused at open, not at its first
read of another process's data (by then it may have written data under the wrong key).

The store keeps one key-check record per master key version, in the keyring's table under a
scope of its own (``CHECK_SCOPE``: no stream or topic can name it): 32 random bytes wrapped by
that version, which nothing ever uses. Only the master key version that wrapped them unwraps
them (AES-GCM's tag says so), so a process that holds a version of the same number but another
key is refused before it writes anything. The record of a version is written the first time an
App whose current version it is opens the store (insert-if-absent: of two processes that race
with different keys, the second is refused), and at a rotation for the new version.

A store from before the records has none: its data keys are the evidence instead. A version
that no record covers is checked against a few of the data keys it wrapped (the first pages of
the keyring); if every one tried refuses it, the key is wrong and the App is refused. A store
without records, opened with the right key, opens as before and gets its record.
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from typing import Final

from tidings.errors import ConfigurationError, Undecryptable
from tidings.ports import DataKeyRecord, EventStore
from tidings.runtime.crypto import KEY_SIZE
from tidings.runtime.keyring import CHECK_SCOPE, CHECK_USES, key_context
from tidings.runtime.master_key import LocalMasterKey, MasterKey

#: Data keys tried per master key version in a store without its record; all refusing it means a
#: wrong key (one altered row alone does not refuse a right one).
_TRIES: Final = 3
#: How far into the keyring the evidence is looked for (pages of ``_PAGE``): a one-time cost of
#: an older store's first open, bounded on a store with millions of scopes.
_PAGES: Final = 10
_PAGE: Final = 500


async def check_master_key(store: EventStore, master: MasterKey) -> None:
    """Refuse (``ConfigurationError``) a master key that holds a version which does not match
    the one the store was encrypted with under that number; then make sure the store has the
    record of the current version. Writes nothing unless every check passed."""
    records = {
        record.version: record.wrapped
        for record in await store.data_keys([CHECK_SCOPE])
        if record.wrapped is not None
    }
    unrecorded: set[int] = set()
    for version in _held_versions(master):
        wrapped = records.get(version)
        if wrapped is None:
            unrecorded.add(version)
        elif not await _unwraps(master, version, wrapped, key_context(CHECK_SCOPE, version)):
            raise _mismatch(store, master, version)
    if not unrecorded:
        return
    for version, matches in (await _evidence(store, master, unrecorded)).items():
        if not matches:
            raise _mismatch(store, master, version)
    if master.current_version in unrecorded:
        await _record(store, master)


def _held_versions(master: MasterKey) -> list[int]:
    """The versions to check: all that a local key holds; a provider's current one (a KMS may
    hold more, but the protocol names only the one it wraps with)."""
    return master.versions if isinstance(master, LocalMasterKey) else [master.current_version]


async def _unwraps(master: MasterKey, version: int, wrapped: bytes, context: bytes) -> bool:
    try:
        await master.unwrap(version, wrapped, context)
    except Undecryptable:
        return False
    return True


async def _evidence(store: EventStore, master: MasterKey, versions: set[int]) -> dict[int, bool]:
    """For each of ``versions`` met among the first data keys: whether any of those it wrapped
    (up to ``_TRIES``) unwraps with it."""
    matches: dict[int, bool] = {}
    tried: Counter[int] = Counter()
    after = ("", 0)
    for _ in range(_PAGES):
        page = await store.data_key_page(after, _PAGE)
        for record in page:
            version, wrapped = record.master_version, record.wrapped
            if record.scope == CHECK_SCOPE or wrapped is None or version not in versions:
                continue
            if matches.get(version) or tried[version] >= _TRIES:
                continue
            tried[version] += 1
            context = key_context(record.scope, record.version)
            matches[version] = await _unwraps(master, version, wrapped, context)
        settled = all(matches.get(v) or tried[v] >= _TRIES for v in versions)
        if len(page) < _PAGE or settled:
            break
        after = (page[-1].scope, page[-1].version)
    return matches


async def _record(store: EventStore, master: MasterKey) -> None:
    """Store the current version's record, unless a process raced us to it: then theirs is
    checked (a process with another key under that number wrote it first)."""
    version = master.current_version
    context = key_context(CHECK_SCOPE, version)
    wrapped_by, wrapped = await master.wrap(os.urandom(KEY_SIZE), context)
    if wrapped_by != version:  # the provider moved on meanwhile: its next open records that one
        return
    record = DataKeyRecord(
        scope=CHECK_SCOPE,
        version=version,
        master_version=version,
        wrapped=wrapped,
        uses=CHECK_USES,
        created=datetime.now(UTC),
    )
    async with store.transaction() as tx:
        stored = await tx.add_data_key(record)
    if stored.wrapped != wrapped and (
        stored.wrapped is None or not await _unwraps(master, version, stored.wrapped, context)
    ):
        raise _mismatch(store, master, version)


def _mismatch(store: EventStore, master: MasterKey, version: int) -> ConfigurationError:
    given = f" ({master.origin})" if isinstance(master, LocalMasterKey) else ""
    return ConfigurationError(
        f"the master key version {version} given{given} does not match the one this store "
        f"({store.url}) was encrypted with; nothing was written. Give the key that encrypted it"
    )
