"""Rotating the master key: rewrapping data keys, never event data, so it is quick and every old
event stays readable; and shredding (one statement of the store: ``KeyStore.shred_data_keys``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.ports import EventStore
from tidings.runtime.key_check import check_master_key
from tidings.runtime.keyring import CHECK_SCOPE, KeyRing, key_context
from tidings.runtime.master_key import MasterKey

_PAGE = 500


@dataclass(frozen=True, slots=True)
class Rotation:
    master_version: int  # what every live data key is wrapped by now
    rewrapped: int
    current: int  # were wrapped by it already
    shredded: int  # have no key left to wrap
    retired: int  # data key versions that seal nothing more: new events get new versions


async def rotate_keys(store: EventStore, keys: KeyRing) -> Rotation:
    """``rotate`` with the keyring's master key; the keyring then moves to new data key versions
    at once (other processes within a minute)."""
    rotation = await rotate(store, keys.master)
    keys.drop_reservations()
    return rotation


async def shred_keys(store: EventStore, keys: KeyRing, scope: str) -> int:
    """Destroy the stored ``scope``'s data keys, and forget them in this process at once."""
    destroyed = await store.key_store.shred_data_keys(scope)
    keys.forget(scope)
    return destroyed


async def rotate(store: EventStore, master: MasterKey) -> Rotation:
    """Rewrap every data key that an older master-key version wrapped with the current one, and
    retire every data key version, so that new events get new versions (made under the current
    master key) while old events stay readable.

    Each key is rewrapped with a compare-and-set, so running it twice, or beside running Apps,
    is safe; the master key must still hold the old versions until this has finished. Running
    Apps move to the new data key versions within a minute (they trust a reservation that long)."""
    # Refuses a master key that does not match the store's before anything is rewrapped, and
    # records the new version's key check.
    await check_master_key(store, master)
    target = master.current_version
    rewrapped = current = shredded = 0
    after = ("", 0)
    while page := await store.key_store.data_key_page(after, _PAGE):
        for record in page:
            if record.scope == CHECK_SCOPE:
                continue  # each check stays wrapped by its own version
            if record.wrapped is None:
                shredded += 1
            elif record.master_version == target:
                current += 1
            else:
                context = key_context(record.scope, record.version)
                key = await master.unwrap(record.master_version, record.wrapped, context)
                version, wrapped = await master.wrap(key, context)
                if await store.key_store.rewrap_data_key(record, version, wrapped):
                    rewrapped += 1
                else:  # rewrapped or shredded meanwhile by someone else
                    current += 1
        after = (page[-1].scope, page[-1].version)
    return Rotation(target, rewrapped, current, shredded, await store.key_store.retire_data_keys())
