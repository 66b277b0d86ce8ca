"""JetStream as the bus: a file-backed stream per partition of the store's log.

An event's subject is ``<prefix>.<partition>.<topic>`` (``tidings.3.order.placed``), stored in
stream ``<stream>_<partition>``: the partition is the store's (a hash of the partition key), so
a group's members share the partitions and keep order per key, as on the SQL log. The streams
take exactly the subjects ``<prefix>.0.>`` … ``<prefix>.<n-1>.>``; a publish to any other
subject under the prefix gets no stream ack.

Messages are CloudEvents in binary mode as the NATS protocol binding defines it (percent-encoded
``ce-*`` headers, ``domain/binary.py``), with ``Nats-Msg-Id`` = the event id; consumers read
messages of other producers in either content mode.
``Tidings-Stream``, ``Tidings-Version`` and ``Tidings-Position`` say where the event is stored.
How a partition is published in order and once: see ``publish.py``.

After each batch the relay rings a doorbell (a core NATS message on ``<prefix>.wake``, not
stored): idle consumers in every process read at once instead of at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client
from nats.errors import AuthorizationError
from nats.errors import Error as NatsError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from tidings.adapters.nats.feed import JetStreamFeed
from tidings.adapters.nats.inbox import Inbox
from tidings.adapters.nats.names import inbox_prefix, read_patterns, read_stream
from tidings.adapters.nats.publish import (
    SEQUENCE_HEADER_SIZE,
    Seen,
    headers_bound,
    message_size,
    publish_in_order,
    resync,
    stand_in,
)
from tidings.adapters.nats.reads import (
    POSITION_HEADER,
    STREAM_HEADER,
    VERSION_HEADER,
    direct_get,
    record_of,
)
from tidings.adapters.nats.retention import dropping_settings
from tidings.adapters.nats.settings import NatsSettings as NatsSettings  # re-exported, as before
from tidings.adapters.nats.views import ensure_read_stream, read_stream_config
from tidings.adapters.tls_refusals import refuses_client_certificate, server_certificate_problem
from tidings.domain.binary import to_binary
from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent, TopicOf
from tidings.domain.headers import percent_encode
from tidings.errors import BackendUnavailable, ConfigurationError, describe
from tidings.ports import EventStore, Feed

PARTITIONS_KEY = "tidings_partitions"  # in each stream's metadata: the log's partition count
LOG_KEY = "tidings_log"  # and the id of the log it carries
#: What a broker error is, as far as the bus is concerned: the server is not there for us.
DRIVER_ERRORS = (NatsError, JetStreamError, OSError, TimeoutError)
log = logging.getLogger("tidings.nats")
_ERRORS_KEPT = 20  # of a first connection that failed, the last errors the client reported


def _telling(errors: Sequence[Exception]) -> Exception:
    """The error that says why a first connection failed: the last refusal (a TLS error, or the
    server's authorization violation) if there was one.

    A server that refuses a client certificate (expired, unknown CA) sends an alert after the
    client's side of the handshake is done, and one that refuses a password sends its error and
    closes: the client may meet a broken pipe or a reset connection before it reads either. The
    refusal is the reason, the broken connection its echo.
    """
    refusals: list[Exception] = [e for e in errors if isinstance(e, (ssl.SSLError, AuthorizationError))]
    return (refusals or list(errors))[-1]


def _is_authorization_violation(error: Exception) -> bool:
    """Whether ``error`` carries the server's ``-ERR 'Authorization Violation'`` (the protocol's
    own words), which some client versions hand over as a plain error, not AuthorizationError."""
    return isinstance(error, NatsError) and "authorization violation" in str(error).lower()


#: A version or position as wide as the relay may ever write one (19 digits).
_WIDEST = 10**19 - 1


def _message_of(record: RecordedEvent) -> tuple[dict[str, str], bytes]:
    """The headers and body of the message that carries ``record``."""
    headers, body = to_binary(record.envelope)
    # Header values are printable ASCII (the NATS binding's rule for ce-* headers, kept for
    # tidings' own too): a stream name may hold any character.
    headers["Nats-Msg-Id"] = percent_encode(record.envelope.id)
    headers[STREAM_HEADER] = percent_encode(record.stream)
    headers[VERSION_HEADER] = str(record.version)
    headers[POSITION_HEADER] = str(record.position)
    return headers, body


class NatsBus:
    """``Bus`` on JetStream: a file-backed stream per partition under the prefix."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.url = settings.display_url
        self.partitions = 0
        self.log_id = ""
        #: The store's feed, which confirms (or denies) what a message on a stream claims to be.
        self._store_feed: Feed | None = None
        self._client: Client | None = None
        self._inbox: Inbox | None = None
        #: Per partition, its stream's last sequence as this bus last saw it (unknown after a
        #: failed publish: ``published`` asks the stream again).
        self._tails: dict[int, int] = {}
        #: Per partition, what resyncs learned of its stream (the next one looks only after it).
        self._seen: dict[int, Seen] = {}
        #: With an access policy (``read_as``): who reads here, what each principal may read, and
        #: whether this App makes the read streams (the relay's does).
        self._reader: str | None = None
        self._read_streams: dict[int, str] = {}  # by partition: named once, read on every read
        self._readers: dict[str, tuple[str, ...]] = {}
        self._makes_views = False

    def read_as(self, principal: str, readers: Mapping[str, Sequence[str]], *, relay: bool) -> None:
        """Read the topics ``principal`` may subscribe to from read streams of its own
        (``views.py``); ``readers`` are every principal's subscribe patterns, from which the
        relay's App (``relay``) makes everyone's read streams."""
        self._reader = principal
        self._readers = {name: tuple(patterns) for name, patterns in readers.items() if patterns}
        self._makes_views = relay
        self._read_streams.clear()

    def read_stream_of(self, partition: int) -> str:
        """The stream this App reads a partition from: its principal's read stream, if any."""
        if self._reader is None:
            return self.settings.stream_of(partition)
        name = self._read_streams.get(partition)
        if name is None:
            patterns = self._readers.get(self._reader, ())
            name = self._read_streams[partition] = read_stream(
                self.settings.stream, partition, self._reader, patterns
            )
        return name

    async def open(self, store: EventStore) -> None:
        if self._client is not None:
            return
        self.partitions, self.log_id = store.feed.partitions, store.log_id
        self._store_feed = store.feed
        # The client reconnects forever once connected; the first connection has a deadline (a
        # server it cannot talk to, such as one that wants TLS, would be retried forever), and
        # the errors the client met say why it failed.
        seen: list[Exception] = []

        async def note(error: Exception) -> None:
            seen.append(error)
            del seen[:-_ERRORS_KEPT]

        tls = self.settings.tls_context()
        try:
            client = self._client = await asyncio.wait_for(
                nats.connect(
                    servers=list(self.settings.servers),
                    connect_timeout=self.settings.connect_timeout,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    tls=tls,
                    tls_hostname=urlsplit(self.settings.servers[0]).hostname if tls else None,
                    inbox_prefix=inbox_prefix(urlsplit(self.settings.servers[0]).username),
                    error_cb=note,
                ),
                self.settings.connect_timeout * (len(self.settings.servers) + 1),
            )
            # With a policy, only the relay's App looks at the partition streams (their info tells
            # every topic's count); a reader checks its read streams, made for this store.
            if self._reader is None or self._makes_views:
                for partition in range(self.partitions):
                    await self._ensure_stream(client, partition)
            await self._ensure_views(client)
            self._inbox = await Inbox.open(client)
        except DRIVER_ERRORS as exc:
            await self.close()
            # A timeout says nothing of its own; any other error may be the echo of a refusal.
            cause = _telling(seen if isinstance(exc, TimeoutError) and seen else [*seen, exc])
            hint = ""
            if isinstance(cause, ssl.SSLError) and tls is None:
                # The client upgrades to TLS by itself when the server demands it, and then
                # verifies the server against the system's CAs only.
                hint = " (the server requires TLS: give tls_ca, and tls_cert with tls_key if it asks)"
            elif isinstance(cause, ssl.SSLCertVerificationError):
                hint = f" ({server_certificate_problem(cause)})"
            elif isinstance(cause, ssl.SSLError) and refuses_client_certificate(cause):
                hint = " (the server refused the client certificate)"
            elif isinstance(cause, AuthorizationError) or _is_authorization_violation(cause):
                hint = " (the server refused the user and password)"
            elif isinstance(cause, ConnectionError) and "@" in self.settings.servers[0]:
                # A server that refuses credentials closes the connection, and the client may
                # meet the closed socket before it reads the server's reason.
                hint = " (the server closed the connection: are the user and password right?)"
            raise BackendUnavailable(f"NATS at {self.url}: {describe(cause)}{hint}") from None
        except (ConfigurationError, BackendUnavailable, ValueError) as exc:
            await self.close()  # else the client would go on reconnecting, for ever
            if isinstance(exc, ValueError):  # an answer of the server that is no JSON
                raise BackendUnavailable(f"NATS at {self.url}: unexpected answer: {exc}") from None
            raise

    async def _ensure_stream(self, client: Client, partition: int) -> None:
        js = client.jetstream()
        name, subject = self.settings.stream_of(partition), self.settings.subject_of(partition)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    num_replicas=self.settings.replicas,
                    duplicate_window=self.settings.duplicate_window,
                    allow_direct=True,  # consumers read partitions with batched direct gets
                    metadata={PARTITIONS_KEY: str(self.partitions), LOG_KEY: self.log_id},
                )
            )
            return
        metadata = info.config.metadata or {}
        made_for, carries = metadata.get(PARTITIONS_KEY), metadata.get(LOG_KEY)
        fits = info.config.subjects == [subject] and info.config.allow_direct
        if not fits or made_for != str(self.partitions):
            raise ConfigurationError(
                f"JetStream stream {name!r} at {self.url} was not made for this store, which has "
                f"{self.partitions} partitions (the stream: subjects {info.config.subjects}, made for "
                f"{made_for or 'unknown'} partitions): use another stream name (?stream=NAME) or delete it"
            )
        if carries != self.log_id:
            raise ConfigurationError(
                f"JetStream stream {name!r} at {self.url} carries the log of another store ({carries}; "
                f"this one is {self.log_id}): use another stream name (?stream=NAME) per store"
            )
        if dropping := dropping_settings(info.config):
            raise ConfigurationError(
                f"JetStream stream {name!r} at {self.url} would delete events its groups have not "
                f"read ({dropping}): remove the limit, or set discard new so that the server refuses "
                f"publishes at the limit instead"
            )

    async def _ensure_views(self, client: Client) -> None:
        principals = self._readers if self._makes_views else {}
        if not self._makes_views and self._reader in self._readers:
            principals = {self._reader: self._readers[self._reader]}
        metadata = {PARTITIONS_KEY: str(self.partitions), LOG_KEY: self.log_id}
        for principal, patterns in principals.items():
            copied = read_patterns(principal, patterns)
            for partition in range(self.partitions):
                subjects = [f"{self.settings.prefix}.{partition}.{p}" for p in copied]
                config = read_stream_config(
                    read_stream(self.settings.stream, partition, principal, patterns),
                    self.settings.stream_of(partition),
                    subjects,
                    replicas=self.settings.replicas,
                    metadata=metadata,
                )
                await ensure_read_stream(client, config, principal, create=self._makes_views)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._inbox = self._client, None, None
            self._tails.clear()
            self._seen.clear()
            try:
                await client.drain()
            except DRIVER_ERRORS:
                await client.close()

    def _connected(self) -> tuple[Client, Inbox]:
        if self._client is None or self._inbox is None:
            raise BackendUnavailable(f"bus {self.url} is not open (call open() first)")
        return self._client, self._inbox

    def subject(self, partition: int, topic: str) -> str:
        return f"{self.settings.prefix}.{partition}.{topic}"

    async def published(self, partition: int) -> int:
        """The store position of the partition's last event on the bus (0: none yet): of the
        last message there whose position and event id the store confirms (anyone may publish)."""
        client, _ = self._connected()
        store_feed = self._store_feed
        if store_feed is None:
            raise BackendUnavailable(f"bus {self.url} is not open (call open() first)")

        async def holds(position: int, message_id: str) -> bool:
            found = await store_feed.read_partition(partition, after=position - 1, limit=1)
            return (
                bool(found)
                and found[0].position == position
                and (percent_encode(found[0].envelope.id) == message_id)
            )

        try:
            stream = self.settings.stream_of(partition)
            self._tails[partition], seen = await resync(client, stream, holds, self._seen.get(partition))
            self._seen[partition] = seen
        except DRIVER_ERRORS as exc:
            raise BackendUnavailable(f"NATS at {self.url}: {describe(exc)}") from None
        return seen.position

    async def publish(self, partition: int, records: Sequence[RecordedEvent]) -> None:
        """Publish the partition's events after those it holds (``published``), in order; returns
        once all are stored. On failure, ask ``published`` again before publishing more."""
        client, inbox = self._connected()
        last = self._tails.pop(partition, None)
        if last is None:
            raise BackendUnavailable(
                f"partition {partition} on {self.url}: ask where it stands (published) first"
            )
        messages = []
        for record in records:
            headers, body = _message_of(record)
            if message_size(headers, body) > client.max_payload - SEQUENCE_HEADER_SIZE:
                # Published before the limit was checked at publish (or by an App with another
                # limit): the server would close the connection on it, every time, stopping every
                # partition. A stand-in takes its place, which every group dead-letters.
                headers, body = stand_in(record, headers, message_size(headers, body), client.max_payload)
            messages.append((self.subject(partition, record.envelope.topic), body, headers))
        try:
            tail = self._tails[partition] = await publish_in_order(client, inbox, messages, last=last)
        except DRIVER_ERRORS as exc:
            raise BackendUnavailable(f"NATS at {self.url}: {describe(exc)}") from None
        seen = self._seen.get(partition)
        if records and seen is not None:  # the last message is the relay's own: look after it
            self._seen[partition] = replace(seen, through=tail, own=tail, position=records[-1].position)
        if records:
            # The doorbell only saves consumers a poll: the events are stored either way.
            with contextlib.suppress(*DRIVER_ERRORS):
                await client.publish(self.settings.doorbell, b"")

    def room_for(self, stream: str, envelope: Envelope, size: int | None = None) -> int:
        """The bytes of data a message of ``envelope`` in ``stream`` may hold: the server's
        ``max_payload`` (its INFO, read at connect) less the message's headers, counted with the
        widest version, position and sequence that the relay may write. Data of ``size`` bytes
        far from the limit gets a lower bound that holds it, without building the headers."""
        client, _ = self._connected()
        room = client.max_payload - SEQUENCE_HEADER_SIZE
        if (
            size is not None
            and (bound := headers_bound(stream, envelope)) is not None
            and size <= room - bound
        ):
            return room - bound
        headers, _ = _message_of(RecordedEvent(envelope, stream, _WIDEST, _WIDEST))
        return room - message_size(headers, b"")

    async def read_partition(
        self,
        partition: int,
        *,
        after: int,
        limit: int,
        topic_of: TopicOf | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> list[RecordedEvent]:
        """Messages of one partition after stream sequence ``after``, in stream order;
        ``topic_of`` gives the topic of an event from another producer that carries none, and
        ``max_size`` the most data an event may hold (the App's ``max_event_size``)."""
        client, inbox = self._connected()
        request = {"seq": after + 1, "next_by_subj": self.settings.subject_of(partition), "batch": limit}
        try:
            found = await direct_get(client, inbox, self.read_stream_of(partition), request, limit)
        except DRIVER_ERRORS as exc:
            raise BackendUnavailable(f"NATS at {self.url}: {describe(exc)}") from None
        prefix = self.settings.prefix
        return [record_of(message, prefix, max_size, topic_of=topic_of) for message in found]

    async def head(self, partition: int) -> int:
        """The last sequence of the stream this App reads the partition from: the stream's info
        (its state), which the server keeps without reading any message."""
        client, _ = self._connected()
        try:
            info = await client.jetstream().stream_info(self.read_stream_of(partition))
        except DRIVER_ERRORS as exc:
            raise BackendUnavailable(f"NATS at {self.url}: {describe(exc)}") from None
        return int(info.state.last_seq)

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` on every doorbell, until cancelled."""

        later: list[asyncio.TimerHandle] = []

        async def ring(_message: object) -> None:
            wake()
            if self._reader is not None and not any(
                not h.cancelled() and h.when() > loop.time() for h in later
            ):
                # A read stream copies from its partition stream a moment after the relay
                # stored (and rang): look again shortly, not only at the next poll (once per
                # burst of doorbells).
                later[:] = [loop.call_later(delay, wake) for delay in (0.01, 0.05, 0.2)]

        loop = asyncio.get_running_loop()

        subscription = await self._connected()[0].subscribe(self.settings.doorbell, cb=ring)
        try:
            await asyncio.Event().wait()
        finally:
            for handle in later:
                handle.cancel()
            if self._client is not None:
                with contextlib.suppress(*DRIVER_ERRORS):
                    await subscription.unsubscribe()

    def feed(self, *, topic_of: TopicOf | None = None, max_event_size: int = DEFAULT_MAX_SIZE) -> Feed:
        if self._store_feed is None:
            raise BackendUnavailable(f"bus {self.url} is not open (call open() first)")
        return JetStreamFeed(self, self._store_feed, topic_of, max_event_size)
