"""The keyring: data keys per scope, wrapped by the master key, cached unwrapped in memory.

A scope is what one data key covers: by default a stream (so that shredding one entity's key
erases that entity's events and nothing else); events published without a key, each a stream of
its own, share one key per topic (``topic:<topic>``) instead of a key per event. An application
can map streams to scopes of its own (``Encryption(scope=...)``: a customer, a tenant).

The two kinds never share a stored name: a stream (or an application's scope) whose name starts
with ``topic:`` is stored with a control character in front (``named_scope``), which no stream
name holds, so a stream called ``topic:order.placed`` can neither read with nor shred the key of
that topic's unkeyed events. Every other stream keeps the stored name it always had; events
sealed under an old name still open, as each names its scope in its header.

Each scope has versions of its key. A process reserves encryptions with the newest version in
blocks (a counter in the store) and moves to a new version once a version has been used
``rotate_after`` times, far below the 2**32 encryptions that AES-GCM allows with random nonces.
Old versions stay to open what they sealed.

Sealing runs inside a store's append (it needs the stream version), so the keys it needs are
prepared before: ``prepare`` makes sure the transaction has a key with room for its events.
Opening is synchronous in the codec, so reads ``load`` the keys their records name first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.domain.envelope import Envelope
from tidings.domain.names import check_name, check_stream_name
from tidings.domain.topics import validate_topic
from tidings.errors import InvalidArgument, Undecryptable
from tidings.ports import DataKeyRecord, EventStore, StoreTransaction
from tidings.runtime import crypto
from tidings.runtime.crypto import SEALED, Header, Kind
from tidings.runtime.master_key import MasterKey

#: Encryptions with one data key version before the next version is made (AES-GCM with random
#: 96-bit nonces is safe to 2**32; this stays a factor of four below).
ROTATE_AFTER: Final = 2**30
#: Encryptions a process reserves at a time (one counter update per block).
RESERVE: Final = 16_384
#: How long a process trusts a loaded key before it looks again (a shred elsewhere shows then).
REFRESH_SECONDS: Final = 60.0
#: Scopes whose keys a process keeps in memory; with a scope per stream a long-running consumer
#: meets millions, so the oldest half goes when there are more (they load again when needed).
CACHED_SCOPES: Final = 100_000

ScopeOf = Callable[[str], str]

#: The stored scopes of topics (the key of their unkeyed publications) start with this.
TOPIC_SCOPE: Final = "topic:"
#: Put in front of a stream's or an application's scope that starts with ``TOPIC_SCOPE``: a
#: C0 control character, which ``check_name`` keeps out of every stream name and scope, so these
#: stored names are a namespace of their own (finding: a stream named ``topic:x`` shared, and
#: shredded, the key of topic x's unkeyed events).
NAMED_MARK: Final = "\x1f"
#: The longest scope an application may map a stream to.
MAX_SCOPE: Final = 1000
#: The scope of the master key check records (``runtime/key_check.py``), one per master key
#: version; a control character in front, so no stream, application scope or topic names it.
CHECK_SCOPE: Final = "\x1emaster key check"
#: A check record's use count: the most any store counts (the SQL stores' retired mark), so it
#: is never reserved, and a rotation does not count it among the data keys it retires.
CHECK_USES: Final = 2**62


def topic_scope(topic: str) -> str:
    """The stored scope of a topic's unkeyed publications."""
    return TOPIC_SCOPE + validate_topic(topic)


def named_scope(scope: str) -> str:
    """The stored scope of a stream, or of an application's scope (by default a stream is its
    own scope): never one of a topic."""
    # DEL and C1 pass as in stream names (names.py): a stream of such a name must stay shreddable.
    return _marked(check_name("encryption scope", scope, max_length=MAX_SCOPE, c1_controls=True))


def _marked(scope: str) -> str:
    return NAMED_MARK + scope if scope.startswith(TOPIC_SCOPE) else scope


def stored_scope(scope: str | None = None, topic: str | None = None) -> str:
    """The stored scope that a person names: a stream's or an application's ``scope``, or a
    ``topic``'s (exactly one of them)."""
    if (scope is None) == (topic is None):
        raise InvalidArgument("name a scope (a stream, by default) or a topic, not both")
    return named_scope(scope) if scope is not None else topic_scope(topic or "")


def scope_label(stored: str) -> str:
    """A stored scope as people name it: ``topic:<topic>`` for a topic's, else the stream's or
    the application's scope with ``(stream)`` after it where it could be read as a topic's."""
    if stored.startswith(NAMED_MARK):
        return f"{stored[len(NAMED_MARK) :]} (stream)"
    return stored


@dataclass(slots=True)
class Reserved:
    """A key version this process seals with, and how many encryptions it has left reserved."""

    version: int
    cipher: AESGCM
    remaining: int
    #: When reserved (monotonic): a reservation is trusted for a while (``refresh``), then made
    #: again in the store, which refuses a key shredded meanwhile by another process.
    at: float


class Erasure:
    """What opening data of a shredded scope yields: the data is gone for good."""


ERASED: Final = Erasure()


def key_context(scope: str, version: int) -> bytes:
    return f"{scope}\0{version}".encode()


class KeyRing:
    def __init__(
        self,
        store: EventStore,
        master: MasterKey,
        *,
        scope: ScopeOf | None = None,
        rotate_after: int = ROTATE_AFTER,
        reserve: int = RESERVE,
        refresh: float = REFRESH_SECONDS,
        cached_scopes: int = CACHED_SCOPES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self.master = master
        self._scope = scope or (lambda stream: stream)
        self._custom_scope = scope is not None
        self._rotate_after = rotate_after
        self._reserve = min(reserve, rotate_after)
        #: How long a loaded key or a reservation is trusted before the store is asked again.
        self._refresh = refresh
        self._cached_scopes = cached_scopes
        self._now = clock
        self._ciphers: dict[str, dict[int, AESGCM | None]] = {}  # by scope, version; None: shredded
        self._loaded_at: dict[str, float] = {}
        self._reserved: dict[str, Reserved] = {}
        self._broken: dict[tuple[str, int], str] = {}  # keys that would not unwrap, and why

    # -- scopes ------------------------------------------------------------------------------

    def scope_of(self, stream: str, envelope: Envelope) -> str:
        if stream == envelope.id and envelope.partitionkey is None:
            check_stream_name(stream)
            return topic_scope(envelope.topic)  # an unkeyed publication: one stream per event
        return self.stream_scope(stream)

    def stream_scope(self, stream: str) -> str:
        """The stored scope of a stream's events and snapshots (the application's mapping,
        checked): ``InvalidArgument`` for a stream name, or a scope it maps to, that no store
        can hold, before any key is looked up with it."""
        check_stream_name(stream)
        if not self._custom_scope:
            return _marked(stream)
        try:
            return named_scope(self._scope(stream))
        except InvalidArgument as exc:
            raise InvalidArgument(f"the scope that stream {stream!r} maps to is invalid: {exc}") from None

    # -- sealing -----------------------------------------------------------------------------

    async def prepare(
        self, tx: StoreTransaction, stream: str, envelopes: Sequence[Envelope], staged: dict[str, Reserved]
    ) -> None:
        """Make sure ``staged`` (the transaction's keys) has room to seal ``envelopes``."""
        wanted, pending = self._wanted(stream, envelopes)
        if pending:  # timers' events, sealed when they were set: opened and sealed again
            await self.load(e.data for e in pending)
        for scope, count in wanted.items():
            await self.make_room(tx, scope, count, staged)

    def _wanted(self, stream: str, envelopes: Sequence[Envelope]) -> tuple[dict[str, int], list[Envelope]]:
        """Encryptions wanted per scope, and the envelopes sealed already (timers' events)."""
        wanted: dict[str, int] = {}
        for envelope in envelopes:
            scope = self.scope_of(stream, envelope)
            wanted[scope] = wanted.get(scope, 0) + 1
        return wanted, [e for e in envelopes if e.datacontenttype == SEALED]

    def room_in_memory(self, stream: str, envelopes: Sequence[Envelope], staged: dict[str, Reserved]) -> bool:
        """Stage keys for ``envelopes`` if this process has room reserved already (no I/O, so an
        append can go straight to the store); False leaves ``staged`` as it was."""
        wanted, pending = self._wanted(stream, envelopes)
        if pending:
            return False
        reserved = [
            (scope, self._usable(self._reserved.get(scope), count), count) for scope, count in wanted.items()
        ]
        if any(key is None for _, key, _ in reserved):
            return False
        for scope, key, count in reserved:
            if key is not None:
                key.remaining -= count
                staged[scope] = key
        return True

    async def make_room(
        self, tx: StoreTransaction, scope: str, count: int, staged: dict[str, Reserved]
    ) -> Reserved:
        known = staged.get(scope) or self._reserved.get(scope)
        if known is not None and known.remaining >= count and self._usable(known, count) is None:
            # Trusted too long: still the scope's live key? (another process may have shredded it)
            newest = await tx.key_store.newest_data_key(scope)
            live = newest is not None and newest.wrapped is not None and newest.uses <= self._rotate_after
            if live and newest is not None and newest.version == known.version:
                known.at = time.monotonic()  # else shredded, retired by a rotation, or superseded
        reserved = self._usable(known, count)
        if reserved is None:
            reserved = await self._reserve_in(tx, scope, count)
        reserved.remaining -= count
        staged[scope] = reserved
        return reserved

    def _usable(self, reserved: Reserved | None, count: int) -> Reserved | None:
        if reserved is None or reserved.remaining < count:
            return None
        return reserved if time.monotonic() - reserved.at < self._refresh else None

    async def _reserve_in(self, tx: StoreTransaction, scope: str, count: int) -> Reserved:
        block = max(self._reserve, count)
        newest = await tx.key_store.newest_data_key(scope)
        if newest is not None and newest.wrapped is not None and newest.uses + block <= self._rotate_after:
            total = await tx.key_store.reserve_data_key_uses(scope, newest.version, block, self._rotate_after)
            if total is not None:
                return Reserved(newest.version, await self._cipher_of(newest), block, time.monotonic())
        version = newest.version + 1 if newest is not None else 1
        key = crypto.new_data_key()
        master_version, wrapped = await self.master.wrap(key, key_context(scope, version))
        record = DataKeyRecord(
            scope=scope,
            version=version,
            master_version=master_version,
            wrapped=wrapped,
            uses=block,
            created=self._now(),
        )
        stored = await tx.key_store.add_data_key(record)
        if stored.wrapped != wrapped:  # another process made this version first: use theirs
            return await self._reserve_in(tx, scope, count)
        # Not cached until the transaction commits (``adopt``): on SQLite the key is written in
        # it, and if it rolls back another process may make this version with another key.
        return Reserved(version, AESGCM(key), block, time.monotonic())

    def adopt(self, staged: dict[str, Reserved]) -> None:
        """The transaction committed: its keys and reservations are this process's now."""
        self._reserved.update(staged)
        for scope, reserved in staged.items():
            self._ciphers.setdefault(scope, {})[reserved.version] = reserved.cipher

    def sealer(self, staged: dict[str, Reserved]) -> Callable[[str, int, Envelope], Envelope]:
        """The function that a store's append calls with each new envelope's version."""

        def seal(stream: str, version: int, envelope: Envelope) -> Envelope:
            if envelope.datacontenttype == SEALED:
                envelope = self.open_pending(envelope, stream)
            return self._sealed(stream, envelope, staged, Kind.EVENT, version)

        return seal

    def seal_pending(self, stream: str, envelope: Envelope, staged: dict[str, Reserved]) -> Envelope:
        """A timer's event, sealed until it fires (its stream version is not known yet)."""
        return self._sealed(stream, envelope, staged, Kind.PENDING, 0)

    def sealed_size(self, stream: str, envelope: Envelope) -> int:
        """How long the envelope's data will be once sealed in ``stream``, as event or timer."""
        return crypto.sealed_size(
            len(envelope.data),
            scope=self.scope_of(stream, envelope),
            stream=stream,
            content_type=envelope.datacontenttype,
        )

    def _sealed(
        self, stream: str, envelope: Envelope, staged: dict[str, Reserved], kind: Kind, version: int
    ) -> Envelope:
        scope = self.scope_of(stream, envelope)
        key = staged[scope]
        data = crypto.seal(
            key.cipher,
            envelope.data,
            kind=kind,
            key_version=key.version,
            version=version,
            scope=scope,
            stream=stream,
            content_type=envelope.datacontenttype,
            context=crypto.event_context(envelope.id, envelope.type, envelope.schemaversion),
        )
        return msgspec.structs.replace(envelope, datacontenttype=SEALED, data=data)

    def seal_snapshot(self, stream: str, version: int, schema: str, state: bytes, key: Reserved) -> bytes:
        return crypto.seal(
            key.cipher,
            state,
            kind=Kind.SNAPSHOT,
            key_version=key.version,
            version=version,
            scope=self.stream_scope(stream),
            stream=stream,
            content_type="",
            context=crypto.snapshot_context(schema),
        )

    # -- opening -----------------------------------------------------------------------------

    async def load(self, blobs: Iterable[bytes]) -> None:
        """Load (unwrap) the keys that these sealed blobs name, unless known and fresh."""
        if len(self._loaded_at) > self._cached_scopes:
            self._evict_oldest_half()
        now = time.monotonic()
        missing: set[str] = set()
        for blob in blobs:
            try:
                header = crypto.read_header(blob, "sealed data")
            except Undecryptable:
                continue  # opening it will say so, with the event's name
            if header.scope == CHECK_SCOPE:
                continue  # a check record seals nothing: opening it says it is not in the keyring
            known = header.key_version in self._ciphers.get(header.scope, {})
            if not known or now - self._loaded_at.get(header.scope, 0.0) > self._refresh:
                missing.add(header.scope)
        if missing:
            await self.reload(missing)

    async def reload(self, scopes: Iterable[str]) -> None:
        wanted = sorted(set(scopes))
        now = time.monotonic()
        for record in await self._store.key_store.data_keys(wanted):
            versions = self._ciphers.setdefault(record.scope, {})
            if record.wrapped is None:
                versions[record.version] = None
                self._reserved.pop(record.scope, None)
                continue
            try:
                versions[record.version] = await self._cipher_of(record)
            except Undecryptable as exc:
                # Only the events this key sealed fail (each with this reason), not the batch.
                versions.pop(record.version, None)
                self._broken[(record.scope, record.version)] = str(exc)
        for scope in wanted:
            self._loaded_at.pop(scope, None)  # to the end: the order is the eviction order
            self._loaded_at[scope] = now

    async def _cipher_of(self, record: DataKeyRecord) -> AESGCM:
        known = self._ciphers.get(record.scope, {}).get(record.version)
        if known is not None:
            return known
        if record.wrapped is None:
            raise Undecryptable(f"the data key of scope {record.scope!r} was shredded")
        key = await self.master.unwrap(
            record.master_version, record.wrapped, key_context(record.scope, record.version)
        )
        cipher = AESGCM(key)
        self._ciphers.setdefault(record.scope, {})[record.version] = cipher
        return cipher

    def open_event(
        self, envelope: Envelope, stream: str | None = None, version: int | None = None
    ) -> Envelope | Erasure:
        """The envelope with its data opened, checked against where it was found (``stream``,
        ``version``: where known); an ``Erasure`` if its scope was shredded."""
        what = f"event {envelope.id} ({envelope.type})"
        header = crypto.read_header(envelope.data, what)
        # Version 0 or None: not known where it was read (a dead letter's copy); the id, type and
        # schema in the associated data still tie the data to its event.
        if header.kind is not Kind.EVENT or (
            stream is not None and (header.stream != stream or (version and header.version != version))
        ):
            raise Undecryptable(
                f"{what}: found in stream {stream!r} at version {version}, but it was sealed for "
                f"{header.describe()}: rows were moved or swapped"
            )
        return self._open(envelope, header, what)

    def open_pending(self, envelope: Envelope, stream: str) -> Envelope:
        """A timer's event, opened to be sealed again in ``stream``, the one it was set for."""
        what = f"timer event {envelope.id} ({envelope.type})"
        header = crypto.read_header(envelope.data, what)
        if header.kind is not Kind.PENDING or header.stream != stream:
            raise Undecryptable(
                f"{what}: due in stream {stream!r}, but it was sealed for {header.describe()}"
            )
        opened = self._open(envelope, header, what)
        if isinstance(opened, Erasure):
            raise Undecryptable(f"{what}: the data key of scope {header.scope!r} was shredded")
        return opened

    def _open(self, envelope: Envelope, header: Header, what: str) -> Envelope | Erasure:
        cipher = self._cipher(header, what)
        if cipher is None:
            return ERASED
        context = crypto.event_context(envelope.id, envelope.type, envelope.schemaversion)
        data = crypto.open_sealed(cipher, envelope.data, header, context, what)
        return msgspec.structs.replace(envelope, data=data, datacontenttype=header.content_type)

    def open_snapshot(self, stream: str, version: int, schema: str, blob: bytes) -> bytes | None:
        """A snapshot's state, or None if its scope was shredded; ``Undecryptable`` if altered."""
        what = f"snapshot of {stream!r} at version {version}"
        header = crypto.read_header(blob, what)
        if header.kind is not Kind.SNAPSHOT or header.stream != stream or header.version != version:
            raise Undecryptable(f"{what}: it was sealed for the snapshot of {header.describe()}")
        cipher = self._cipher(header, what)
        if cipher is None:
            return None
        return crypto.open_sealed(cipher, blob, header, crypto.snapshot_context(schema), what)

    def _cipher(self, header: Header, what: str) -> AESGCM | None:
        try:
            return self._ciphers[header.scope][header.key_version]
        except KeyError:
            broken = self._broken.get((header.scope, header.key_version))
            reason = f"cannot be used: {broken}" if broken else "is not in this store's keyring"
            raise Undecryptable(
                f"{what}: data key {header.key_version} of scope {header.scope!r} {reason}"
            ) from None

    def _evict_oldest_half(self) -> None:
        scopes = list(self._loaded_at)  # in the order they were loaded
        for scope in scopes[: len(scopes) // 2]:
            self.forget(scope)
        if len(self._reserved) > self._cached_scopes:
            for scope in list(self._reserved)[: len(self._reserved) // 2]:
                del self._reserved[scope]

    def drop_reservations(self) -> None:
        """Seal nothing more with the versions reserved so far (after a rotation retired them)."""
        self._reserved.clear()

    def forget(self, scope: str) -> None:
        """Drop a scope's keys from memory (after shredding it here)."""
        self._ciphers.pop(scope, None)
        for broken in [b for b in self._broken if b[0] == scope]:
            del self._broken[broken]
        self._reserved.pop(scope, None)
        self._loaded_at.pop(scope, None)
