"""The ports: small protocols that the runtime is written against and adapters implement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Final, Literal, Protocol, runtime_checkable

import msgspec

from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent, TopicOf
from tidings.domain.integrity import IntegrityReport, VerifiedState

ANY: Final = "any"
NO_STREAM: Final = "no-stream"
#: ``ANY`` skips the check, ``NO_STREAM`` (or 0) requires a new stream, a number the exact version.
ExpectedVersion = int | Literal["any", "no-stream"]
#: Called by a store's append for each new envelope with its stream and the version it gets there,
#: under the append's lock: returns the envelope to store (its data encrypted, bound to both).
Sealer = Callable[[str, int, Envelope], Envelope]


class DataKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a scope's data key as stored: wrapped by a master-key version, never in
    the clear; ``wrapped`` is None once the scope was shredded."""

    scope: str
    version: int
    master_version: int
    wrapped: bytes | None
    uses: int  # encryptions reserved with this key so far
    created: datetime


class StreamInfo(msgspec.Struct, frozen=True):
    stream: str
    version: int
    first_time: datetime
    last_time: datetime


class Snapshot(msgspec.Struct, frozen=True):
    """An aggregate's state as of ``version`` of its stream; ``schema`` names the state's shape."""

    stream: str
    version: int
    schema: str
    time: datetime
    state: bytes


class KeyWrites(Protocol):
    """The keyring's part of a store transaction: what the runtime needs to make and use a key
    within the transaction that seals with it.

    These may commit at once, apart from the transaction (the PostgreSQL store does, as key row
    locks held to the end would deadlock with the append lock); the runtime counts on keys only
    once the transaction committed either way."""

    async def newest_data_key(self, scope: str) -> DataKeyRecord | None:
        """The scope's data key of the highest version (shredded or not), if any."""

    async def add_data_key(self, record: DataKeyRecord) -> DataKeyRecord:
        """Store a new data key version unless that version exists; returns the stored one."""

    async def reserve_data_key_uses(self, scope: str, version: int, count: int, limit: int) -> int | None:
        """Count ``count`` more encryptions with a key unless that passes ``limit``; the new total
        (None: over the limit, shredded or absent)."""


class GroupWrites(Protocol):
    """The consumer groups' part of a store transaction: a handler's effects, its inbox record and
    its dead letters commit together, with the group's checkpoint (the transaction's
    ``set_checkpoint``)."""

    async def holds_lease(self, group: str, partition: int, member: str) -> bool:
        """Whether ``member`` still holds the partition: checked before a checkpoint commits,
        so that a member that lost its lease (paused, partitioned away) cannot move it."""

    async def mark_handled(self, group: str, event_id: str, attempts: int = 1) -> bool:
        """Record the event in the group's inbox; False if it was there already (a duplicate)."""

    async def dead_letter(self, letter: DeadLetter) -> int:
        """Put an event into the group's dead letter queue; returns the entry's id."""

    async def settle_dead_letter(self, entry: int, state: DeadLetterState) -> bool:
        """End a redrive: move the dead letter to ``state`` if it is still queued for redrive
        (``redrive``); else change nothing and return False. A compare-and-set, so that a run
        that ends after another settled the letter cannot undo it: a letter ``redriven`` (its
        effects committed) never returns to ``dead``."""


class StoreTransaction(Protocol):
    """One transaction on the store: appends, documents, checkpoints and timers commit together,
    and with them what its ``groups`` part writes (inbox records, dead letters). Its
    ``key_store`` part makes and uses the keys that its appends seal with (those writes may
    commit at once: see ``KeyWrites``)."""

    @property
    def groups(self) -> GroupWrites: ...

    @property
    def key_store(self) -> KeyWrites: ...

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]: ...

    async def get_document(self, collection: str, key: str) -> bytes | None: ...

    async def put_document(self, collection: str, key: str, value: bytes) -> None: ...

    async def delete_document(self, collection: str, key: str) -> None: ...

    async def clear_collection(self, collection: str) -> None: ...

    async def get_checkpoint(self, name: str) -> int: ...

    async def set_checkpoint(self, name: str, position: int) -> None: ...

    async def schedule_timer(self, timer_id: str, due: datetime, stream: str, envelope: Envelope) -> None:
        """At ``due``, append ``envelope`` to ``stream`` (a timer of the same id is replaced)."""

    async def cancel_timer(self, timer_id: str) -> None: ...

    async def due_timers(self, now: datetime, limit: int) -> list[Timer]:
        """Timers due by ``now``, soonest first, held by this transaction until it ends; a row
        that cannot be read is returned too (``envelope`` None, with its error), never raised,
        so that it cannot stop the timers behind it."""


class Timer(msgspec.Struct, frozen=True):
    id: str
    stream: str
    #: None if the stored row is no envelope that can be read; ``error`` says why, ``raw`` holds it.
    envelope: Envelope | None
    error: str = ""
    raw: bytes = b""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event that a group will not process, and why."""

    group: str
    reason: DeadLetterReason
    error: str
    traceback: str = ""
    attempts: int = 0
    event_id: str | None = None
    position: int | None = None
    stream: str | None = None
    topic: str | None = None
    key: str | None = None  # the partition key (or stream): what ``ordered`` groups park by
    envelope: bytes | None = None  # the original envelope, CloudEvents structured JSON
    raw: bytes | None = None  # undecodable bytes, as received
    first_failed: datetime | None = None
    dead_at: datetime
    id: int = 0  # given by the store
    state: DeadLetterState = DeadLetterState.DEAD


class Handling(msgspec.Struct, frozen=True):
    """How one group dealt with one event: handled (and when, after how many attempts) or
    dead-lettered (and why)."""

    group: str
    event_id: str
    outcome: str  # "handled" or the dead letter's reason
    attempts: int
    at: datetime


class Trace(msgspec.Struct, frozen=True):
    events: list[RecordedEvent]
    handlings: list[Handling]


@runtime_checkable
class Feed(Protocol):
    """What consumer groups and the relay read: the log's partitions, each in log order.

    The SQL stores are a feed of their own log; a bus (JetStream) is a feed of what the relay
    published. A feed holds no state of its readers: that is ``GroupState``'s, in the store."""

    @property
    def partitions(self) -> int: ...

    def partition_of(self, key: str) -> int:
        """The partition of a partition key (a stream's name when its events carry none)."""

    def checkpoint_name(self, group: str, partition: int) -> str:
        """Where the group's checkpoint in this feed's positions is kept (positions of different
        feeds, such as the store's and a JetStream stream's, are not interchangeable)."""

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        """Events of one partition after a position, in log order."""

    async def head(self, partition: int) -> int:
        """The position of the partition's last event (0: none yet), found by the partition's
        index, never by reading its events: how far a group's checkpoint is behind (metrics)."""

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` soon after any process appends, until cancelled (LISTEN/NOTIFY on
        PostgreSQL, a low-latency poll of the file's change counter on SQLite)."""


class GroupState(Protocol):
    """What the store keeps of consumer groups, whatever feed they read: leases, inbox, dead
    letters and parking, and the trace of how each group dealt with each event. Its writes that
    commit with a handler's effects are the transaction's (``StoreTransaction.groups``)."""

    async def lease(self, group: str, member: str, *, ttl: float) -> list[int]:
        """Renew the member's heartbeat and its share of the partitions (the store's, which every
        feed keeps); returns those it holds.

        Members share a group's partitions evenly: a member over its share gives the surplus
        up, one under it claims free ones; a member that stops renewing loses its leases after
        ``ttl`` seconds and the others take them over."""

    async def release(self, group: str, member: str) -> None:
        """Give up every lease of the member (on shutdown), so others take over at once."""

    async def handled(self, group: str, event_ids: Sequence[str]) -> set[str]:
        """Those of the events that are in the group's inbox (handled before: duplicates)."""

    async def trace(self, correlation_id: str, *, limit: int = 1000) -> Trace:
        """Every event of a correlation (and its root), with how each group dealt with it."""

    async def dead_letters(
        self, group: str | None = None, *, state: DeadLetterState | None = None, limit: int = 100
    ) -> list[DeadLetter]: ...

    async def set_dead_letter_state(self, entries: Sequence[int], state: DeadLetterState) -> int:
        """Ask for redrive or purge; returns how many entries changed."""

    async def dead_letter_counts(self) -> dict[tuple[str, DeadLetterReason, DeadLetterState], int]:
        """How many dead letters each group holds, by reason and state, in one grouped count
        (metrics: the depth of each queue, and, summed over states, how many were ever made)."""

    async def blocked_keys(self, group: str) -> set[str]:
        """Keys with unresolved dead letters in the group: an ordered group parks their events."""

    async def unpark(self, group: str, key: str) -> int:
        """Queue the key's parked dead letters for redrive (its blocking event is resolved)."""

    async def release_parked(self, group: str) -> int:
        """Queue for redrive the parked letters of every key with nothing unresolved but them:
        its blocking letter was purged, or was handled while a parked one was being written."""


class KeyStore(Protocol):
    """The stored data keys, outside transactions: listing, rewrapping, retiring and shredding
    (making and using keys is the transaction's part, ``StoreTransaction.key_store``)."""

    async def data_keys(self, scopes: Sequence[str]) -> list[DataKeyRecord]:
        """Every version of the scopes' data keys."""

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        """Data keys after ``(scope, version)`` in that order: for walking the whole keyring."""

    async def rewrap_data_key(self, record: DataKeyRecord, master_version: int, wrapped: bytes) -> bool:
        """Replace a key's wrapping if it is still as ``record`` says; False if it changed."""

    async def retire_data_keys(self) -> int:
        """Let no live data key version seal anything more: each scope's next encryption makes a
        new version (they stay to open what they sealed); returns how many were retired."""

    async def shred_data_keys(self, scope: str) -> int:
        """Destroy every version of the scope's data key, also in the store's own files where the
        engine allows (SQLite: overwritten and checkpointed); returns how many were destroyed."""


class Bus(Protocol):
    """A broker that the relay feeds from the store's log, and consumer groups read from
    (distributed mode). It keeps the store's partitions: an event goes to its partition there."""

    url: str

    async def open(self, store: EventStore) -> None:
        """Connect, and create the broker's streams for the store's partitions (its ``feed``) if
        missing; refuse streams made for another log (another ``log_id``)."""

    async def close(self) -> None: ...

    async def published(self, partition: int) -> int:
        """The log position of the partition's last event that the broker holds (0: none):
        the relay publishes on from there, so the broker itself is the relay's checkpoint. A
        message counts only if the log (given to ``open``) holds the event it claims to be."""

    async def publish(self, partition: int, records: Sequence[RecordedEvent]) -> None:
        """Publish one partition's next events in log order; return once the broker stored them."""

    def room_for(self, stream: str, envelope: Envelope, size: int | None = None) -> int:
        """How many bytes of data the message that carries ``envelope`` of ``stream`` may hold
        (its attributes as given, its data as relayed): the broker's largest message, as the
        server said when the bus opened, less what the message adds. Publishing refuses more.
        With the data's ``size``, it may answer a cheaper lower bound, at least ``size``, when
        the data fits by far: exact whenever the data does not fit."""

    def feed(self, *, topic_of: TopicOf | None = None, max_event_size: int = DEFAULT_MAX_SIZE) -> Feed:
        """The feed that consumer groups read (once open): partitions from the broker, the
        store's partitions; their leases, inbox and dead letters stay in the store's
        ``GroupState`` and their checkpoints in the store, so that effects commit with them.
        ``topic_of`` gives the topic of an event from another producer that carries none;
        ``max_event_size`` is the App's limit, which what it reads is held to, as what it writes."""

    def read_as(self, principal: str, readers: Mapping[str, Sequence[str]], *, relay: bool) -> None:
        """With an access policy (before ``open``): read only what ``principal`` may subscribe to,
        so that the broker can refuse it the rest; ``readers`` holds every principal's subscribe
        patterns, and the relay's App (``relay``) prepares everyone's reading."""


class EventStore(Protocol):
    """An append-only store of streams whose events also form one totally ordered log.

    Three parts, each a port of its own, serve the rest: ``feed`` (the log by partition),
    ``groups`` (consumer groups' state) and ``keys`` (the stored data keys)."""

    url: str

    @property
    def log_id(self) -> str:
        """Made with the store's log (once open): a broker that carries a log checks that it
        carries this one."""

    @property
    def feed(self) -> Feed: ...

    @property
    def groups(self) -> GroupState: ...

    @property
    def key_store(self) -> KeyStore: ...

    async def open(self) -> None:
        """Connect and create the schema if missing. Idempotent."""

    async def close(self) -> None: ...

    async def append(
        self,
        stream: str,
        envelopes: Sequence[Envelope],
        *,
        expected_version: ExpectedVersion = ANY,
        seal: Sealer | None = None,
    ) -> list[RecordedEvent]:
        """Append atomically; an envelope whose id is stored already is returned, not repeated.
        ``seal`` turns each new envelope into what is stored, once its version is known."""

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        at: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream, checked against their hash chain as they are read.

        ``at`` reads the stream as of a time: the longest prefix of its history whose events all
        happened by then."""

    async def read_from_snapshot(
        self, stream: str, *, to_version: int | None = None, at: datetime | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]]:
        """The newest snapshot within the bounds and the events after it, in one round trip."""

    def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """The global log after a position, in batches, streamed (memory stays flat)."""

    async def head_position(self) -> int: ...

    async def stream_version(self, stream: str) -> int: ...

    async def list_streams(self, *, prefix: str = "", limit: int | None = None) -> list[StreamInfo]: ...

    async def save_snapshot(self, snapshot: Snapshot) -> None: ...

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None: ...

    async def get_document(self, collection: str, key: str) -> bytes | None: ...

    async def get_checkpoint(self, name: str) -> int: ...

    async def next_timer_due(self) -> datetime | None:
        """When the soonest timer is due (None: no timer)."""

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]: ...

    async def verify(self, against: VerifiedState | None = None) -> IntegrityReport:
        """Check every stream's hash chain and the storage itself; report the first breaks.
        With ``against`` (a state an earlier verify reported), also report each recorded head
        no longer in its chain as recorded, and a log changed at or below the recorded end."""
