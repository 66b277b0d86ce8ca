"""The master key check: an App given the wrong master key is refused at open, not at its first
read of another process's data (by then it may have written data under the wrong key).

The store keeps one key-check record per master key version, in the keyring's table under a
scope of its own (``CHECK_SCOPE``: no stream or topic can name it): 32 random bytes wrapped by
that version, which nothing ever uses. Only the master key version that wrapped them unwraps
them (AES-GCM's tag says so), so a process that holds a version of the same number but another
key is refused before it writes anything. The record of a version is written the first time an
App whose current version it is opens the store (insert-if-absent: of two processes that race
with different keys, the second is refused), and at a rotation for the new version.

A check record is found by the master key version that wraps it now (``master_version``), and
opened under its own number (``version``, in its context): a binary from before the check
records rewrapped it, as any data key, when it rotated the master key.

A store from before the records has none: its data keys are the evidence instead. A version
that no record covers is checked against a few of the data keys it wrapped (the first pages of
the keyring); if every one tried refuses it, the key is wrong and the App is refused. A store
without records, opened with the right key, opens as before and gets its record. Only the
current version is ever recorded (a master key wraps with that one alone), so an older version
held and never recorded is looked for among the first rows only (``_GLANCE``): it is looked
for on every open. So is a provider's new version until its record is written.

The check reads unless the current version's record is missing: an App whose master key may
only unwrap (a decrypt-only KMS principal) or whose store role may not insert opens all the
same, without the record, and says so in a log line. A provider that fails to answer (an error
of its own, not ``Undecryptable``) fails the open as ``BackendUnavailable``, to be tried again:
never as a key that does not match.

A local key file that shares no version with the store's records is refused outright: it is
another key file (a version of its own would otherwise look like a new one about to be rotated
to, and start a second keyring beside the first).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from datetime import UTC, datetime
from typing import Final

from tidings.errors import BackendUnavailable, ConfigurationError, TidingsError, Undecryptable, describe
from tidings.ports import DataKeyRecord, EventStore
from tidings.runtime.crypto import KEY_SIZE
from tidings.runtime.keyring import CHECK_SCOPE, CHECK_USES, key_context
from tidings.runtime.master_key import LocalMasterKey, MasterKey

log = logging.getLogger("tidings.keys")

#: Data keys tried per master key version in a store without its record; all refusing it means a
#: wrong key (one altered row alone does not refuse a right one).
_TRIES: Final = 3
#: How far into the keyring the evidence is looked for (pages of ``_PAGE``): a one-time cost of
#: an older store's first open, bounded on a store with millions of scopes.
_PAGES: Final = 10
_PAGE: Final = 500
#: How many data keys are looked at for a version unrecorded in a store that has records (a
#: version held but never current here, a provider's new version): on every open, so a few.
_GLANCE: Final = 20


async def check_master_key(store: EventStore, master: MasterKey) -> None:
    """Refuse (``ConfigurationError``) a master key that holds a version which does not match
    the one the store was encrypted with under that number; then make sure the store has the
    record of the current version, if it can be written. Writes nothing unless every check
    passed."""
    #: Per master version that wraps them now: the records' own numbers and wrapped keys.
    records: dict[int, list[tuple[int, bytes]]] = {}
    for record in await store.key_store.data_keys([CHECK_SCOPE]):
        if record.wrapped is not None:
            records.setdefault(record.master_version, []).append((record.version, record.wrapped))
    held = _held_versions(master)
    if records and isinstance(master, LocalMasterKey) and not records.keys() & set(held):
        # A key file sharing no version with the store's records is another key file: opening
        # would start a second keyring beside the first, each side's data closed to the other.
        # (A rotation records its new version, so a file that dropped the old ones shares it.)
        raise ConfigurationError(
            f"the master key given ({master.origin}) holds version(s) {_listed(held)} and this store "
            f"({store.url}) was encrypted with version(s) {_listed(records)}; nothing was written. "
            "Give the key file that encrypted it"
        )
    unrecorded: set[int] = set()
    for version in held:
        if version not in records:
            unrecorded.add(version)
        elif not await _any_unwraps(master, version, records[version]):
            raise _mismatch(store, master, version)
    if not unrecorded:
        return
    # A store from before the records: a long look, once (its record is written after it).
    # Else a glance: an older version held and never recorded is looked for on every open.
    pages, size = (_PAGES, _PAGE) if not records else (1, _GLANCE)
    for version, matches in (await _evidence(store, master, unrecorded, pages, size)).items():
        if not matches:
            raise _mismatch(store, master, version)
    if master.current_version in unrecorded:
        await _record(store, master)


async def _any_unwraps(master: MasterKey, version: int, records: list[tuple[int, bytes]]) -> bool:
    """Whether any of the check records that ``version`` wraps unwraps with it (each in the
    context of its own number)."""
    for number, wrapped in records:
        if await _unwraps(master, version, wrapped, key_context(CHECK_SCOPE, number)):
            return True
    return False


def _held_versions(master: MasterKey) -> list[int]:
    """The versions to check: all that a local key holds; a provider's current one (a KMS may
    hold more, but the protocol names only the one it wraps with)."""
    return master.versions if isinstance(master, LocalMasterKey) else [master.current_version]


async def _unwraps(master: MasterKey, version: int, wrapped: bytes, context: bytes) -> bool:
    """Whether the key unwraps with ``version``; a provider's own failure is raised, never read
    as a no."""
    try:
        await master.unwrap(version, wrapped, context)
    except Undecryptable:
        return False
    except TidingsError:
        raise
    except Exception as exc:
        raise _provider_failed(master, exc) from exc
    return True


async def _evidence(
    store: EventStore, master: MasterKey, versions: set[int], pages: int, size: int
) -> dict[int, bool]:
    """For each of ``versions`` met among the first ``pages`` of ``size`` data keys: whether
    any of those it wrapped (up to ``_TRIES``) unwraps with it."""
    matches: dict[int, bool] = {}
    tried: Counter[int] = Counter()
    after = ("", 0)
    for _ in range(pages):
        page = await store.key_store.data_key_page(after, size)
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
        if len(page) < size or settled:
            break
        after = (page[-1].scope, page[-1].version)
    return matches


async def _record(store: EventStore, master: MasterKey) -> None:
    """Store the current version's record, unless a process raced us to it: then theirs is
    checked (a process with another key under that number wrote it first). If it cannot be
    written (the master key may only unwrap, the store's role may not insert), the App opens
    without it: every check that could be made passed."""
    version = master.current_version
    context = key_context(CHECK_SCOPE, version)
    record: DataKeyRecord | None = None
    try:
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
            stored = await tx.key_store.add_data_key(record)
    except Exception as exc:  # any refusal to write: logged, and harmless
        step = "store" if record is not None else "wrap"
        log.warning(
            "the key check of master key version %d was not recorded in %s (could not %s it: %s: %s); "
            "opened without it, the check is made again at the next open",
            version,
            store.url,
            step,
            type(exc).__name__,
            exc,
        )
        return
    if stored.wrapped != wrapped and (
        stored.wrapped is None or not await _unwraps(master, version, stored.wrapped, context)
    ):
        raise _mismatch(store, master, version)


def _provider_failed(master: MasterKey, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(
        f"the master key provider ({type(master).__name__}) failed while the key was checked, "
        f"try again: {describe(exc)}"
    )


def _listed(versions: object) -> str:
    return ", ".join(str(v) for v in sorted(versions))  # type: ignore[call-overload]


def _mismatch(store: EventStore, master: MasterKey, version: int) -> ConfigurationError:
    given = f" ({master.origin})" if isinstance(master, LocalMasterKey) else ""
    return ConfigurationError(
        f"the master key version {version} given{given} does not match the one this store "
        f"({store.url}) was encrypted with; nothing was written. Give the key that encrypted it"
    )
