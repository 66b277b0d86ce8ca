"""How a store and a bus are opened for tidings: the adapters their URLs name, the data keys and
the sealing around them when encryption is on, and the feed that consumer groups read.

Part of the composition root with ``app.py``: the App and the CLI both open stores here, so that
a store is wired one way only, and no module outside the root and ``tidings.testing`` builds
adapters (``tests/unit/test_architecture.py`` says so).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

from tidings.adapters.registry import examine_bus, examine_store, open_bus, open_store
from tidings.domain.envelope import DEFAULT_MAX_SIZE
from tidings.domain.findings import Finding
from tidings.ports import Bus, EventStore, Feed
from tidings.runtime.access import Guard
from tidings.runtime.codec import Codec
from tidings.runtime.doctor import examine_encryption, examine_master_key
from tidings.runtime.encryption import Encryption
from tidings.runtime.key_check import check_master_key
from tidings.runtime.keyring import KeyRing
from tidings.runtime.publishing import say_bus_limit
from tidings.runtime.sealed_store import SealedFeed, SealedStore

log = logging.getLogger("tidings.app")  # what it says, it says of an App


def store_at(url: str, *, create: bool = True, max_size: int = DEFAULT_MAX_SIZE) -> EventStore:
    """The event store adapter for ``url``, not yet opened (``create=False``: only inspect it;
    see ``tidings.adapters.registry.open_store``)."""
    return open_store(url, create=create, max_size=max_size)


@dataclass(frozen=True, slots=True)
class WiredStore:
    """An open store as tidings uses it (and, for an App in distributed mode, its bus)."""

    #: The adapter itself: what is closed, and what a relay reads (it passes sealed data on
    #: without opening it).
    raw: EventStore
    #: What everything else uses: ``raw`` sealed with ``keys``, or ``raw`` itself without them.
    store: EventStore
    #: The data keys, with encryption on; else ``None``.
    keys: KeyRing | None
    bus: Bus | None = None
    #: What consumer groups read from ``bus`` (sealed like the store); ``None`` without a bus.
    feed: Feed | None = None


async def wire_store(raw: EventStore, encryption: Encryption | None, *, check_key: bool) -> WiredStore:
    """The open store ``raw`` with the data keys of ``encryption`` (None: off) and sealing.

    ``check_key``: refuse a wrong master key before anything is written with it (an App does;
    the CLI only reads, or acts on the keyring itself). The caller closes ``raw`` if this raises."""
    if encryption is None:
        return WiredStore(raw, raw, None)
    keys = encryption.keyring(raw)
    if check_key:
        await check_master_key(raw, keys.master)
    return WiredStore(raw, SealedStore(raw, keys), keys)


async def wire_bus(
    url: str,
    store_feed: Feed,
    *,
    name: str,
    codec: Codec,
    guard: Guard | None,
    principal: str,
    keys: KeyRing | None,
) -> tuple[Bus, Feed]:
    """The bus at ``url``, open and fed from ``store_feed``, and the feed that the App
    ``name``'s consumer groups read from it (sealed like the store when ``keys`` are given).

    With a ``guard``, the bus reads for ``principal`` only what the policy lets it subscribe to."""
    bus = open_bus(url)
    if guard is not None:
        readers = {name: p.subscribe for name, p in guard.policy.principals.items()}
        bus.read_as(principal, readers, relay=guard.relay)
    try:
        await bus.open(store_feed)
        say_bus_limit(name, codec, bus)
        feed = bus.feed(topic_of=codec.registry.topic_of, max_event_size=codec.max_size)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            await bus.close()
        raise
    codec.bus_room = bus.room_for  # only once the bus is there to stay
    return bus, feed if keys is None else SealedFeed(feed, keys)


async def connect(
    store_url: str,
    bus_url: str | None,
    *,
    name: str,
    codec: Codec,
    encryption: Encryption | None,
    guard: Guard | None,
    principal: str,
) -> WiredStore:
    """Open the App ``name``'s store (creating it if need be) and its bus, with its data keys
    (``codec`` is given them, and the bus's room) and its sealing. What cannot be opened raises,
    and leaves nothing open: ``open`` may be tried again."""
    raw = store_at(store_url, max_size=codec.max_size)
    await raw.open()
    # Said once per open, so that a deployment that forgot its master key shows it in its log.
    log.info(
        "App %s: event data %s",
        name,
        "encrypted" if encryption else "NOT encrypted",
        extra={"app": name},
    )
    try:
        # A wrong master key is refused here, before this App writes anything with it.
        wired = await wire_store(raw, encryption, check_key=True)
        if bus_url:
            bus, feed = await wire_bus(
                bus_url,
                wired.raw.feed,  # what the bus checks against: no key needed to compare ids
                name=name,
                codec=codec,
                guard=guard,
                principal=principal,
                keys=wired.keys,
            )
            wired = replace(wired, bus=bus, feed=feed)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            await raw.close()
        raise
    # The codec takes the keys only once everything is open: a failed open leaves it as it was.
    if encryption is not None and wired.keys is not None:
        codec.use_keys(wired.keys, accept_plaintext=encryption.accept_plaintext)
    return wired


async def examine(store_url: str, bus_url: str | None, *, master_key: bool) -> list[Finding]:
    """What the durability doctor finds in the store at ``store_url`` (opened read-only, never
    created: one that cannot be opened raises), on the bus at ``bus_url``, and in the encryption
    of an App given a master key or not (``master_key``)."""
    store = store_at(store_url, create=False)
    await store.open()
    try:
        findings = await examine_store(store_url)
        findings += examine_master_key()
        findings += await examine_encryption(store, master_key=master_key)
        if bus_url:
            findings += await examine_bus(bus_url, store.feed.partitions)
    finally:
        await store.close()
    return findings
