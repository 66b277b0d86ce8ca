"""JetStream as the bus: one file-backed stream, a subject per partition and topic.

An event's subject is ``<prefix>.<partition>.<topic>`` (``tidings.3.order.placed``): the
partition is the store's (a hash of the partition key), so a group's members can share the
partitions and keep order per key, as on the SQL log. The stream takes exactly the subjects
``<prefix>.0.>`` … ``<prefix>.<n-1>.>``; a publish to any other subject gets no stream ack.

Messages are CloudEvents in binary mode (``ce-*`` headers), with ``Nats-Msg-Id`` = the event id:
a relay that publishes again after a crash is deduplicated by the server within the stream's
duplicate window (and by the consumers' inbox after it). ``Tidings-Stream`` and
``Tidings-Version`` say where the event is stored.

After each batch the relay rings a doorbell (a core NATS message on ``<prefix>.wake``, not
stored): idle consumers in every process read at once instead of at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import Error as JetStreamError
from nats.js.errors import NotFoundError

from tidings.adapters.nats.reads import DirectReader
from tidings.adapters.urls import redact_url
from tidings.domain.envelope import RecordedEvent, to_binary
from tidings.errors import BackendUnavailable, ConfigurationError
from tidings.ports import Log

_OWN_OPTIONS = ("stream", "prefix", "replicas", "duplicate_window", "connect_timeout")
STREAM_HEADER = "Tidings-Stream"
VERSION_HEADER = "Tidings-Version"
#: What a broker error is, as far as the bus is concerned: the server is not there for us.
DRIVER_ERRORS = (NatsError, JetStreamError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...]
    stream: str = "TIDINGS"
    prefix: str = "tidings"
    replicas: int = 1
    duplicate_window: float = 120.0  # seconds within which JetStream drops a repeated event id
    connect_timeout: float = 5.0
    display_url: str = field(default="", compare=False)

    @classmethod
    def from_url(cls, url: str) -> NatsSettings:
        """``nats://host:4222[,host2:4222...]`` or ``tls://...``; options as query parameters:
        ``stream``, ``prefix``, ``replicas``, ``duplicate_window`` (s), ``connect_timeout`` (s)."""
        parts = urlsplit(url)
        if parts.scheme not in ("nats", "tls") or not parts.netloc:
            raise ConfigurationError(f"not a NATS URL: {redact_url(url)!r} (expected nats://host:4222)")
        options = dict(parse_qsl(parts.query))
        unknown = set(options) - set(_OWN_OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown NATS URL option(s): {', '.join(sorted(unknown))}")
        auth, _, hosts = parts.netloc.rpartition("@")
        prefix = f"{parts.scheme}://{auth + '@' if auth else ''}"
        servers = tuple(prefix + host for host in hosts.split(",") if host)
        try:
            return cls(
                servers=servers,
                stream=options.get("stream", "TIDINGS"),
                prefix=options.get("prefix", "tidings"),
                replicas=int(options.get("replicas", "1")),
                duplicate_window=float(options.get("duplicate_window", "120")),
                connect_timeout=float(options.get("connect_timeout", "5")),
                display_url=redact_url(url),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad NATS URL option in {redact_url(url)!r}: {exc}") from None

    def subjects(self, partitions: int) -> list[str]:
        return [f"{self.prefix}.{partition}.>" for partition in range(partitions)]

    @property
    def doorbell(self) -> str:
        return f"{self.prefix}.wake"


class NatsBus:
    """``Bus`` on JetStream: one file-backed stream holds every partition under the prefix."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.url = settings.display_url
        self.partitions = 0
        self._client: Client | None = None
        self._reader: DirectReader | None = None

    async def open(self, partitions: int) -> None:
        if self._client is not None:
            return
        self.partitions = partitions
        try:
            client = self._client = await nats.connect(
                servers=list(self.settings.servers),
                connect_timeout=self.settings.connect_timeout,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
            await self._ensure_stream(client)
            self._reader = await DirectReader.start(client, self.settings.stream, self.settings.prefix)
        except DRIVER_ERRORS as exc:
            await self.close()
            raise BackendUnavailable(f"NATS at {self.url}: {type(exc).__name__}: {exc}") from None
        except ConfigurationError:
            await self.close()
            raise

    async def _ensure_stream(self, client: Client) -> None:
        js = client.jetstream()
        name, subjects = self.settings.stream, self.settings.subjects(self.partitions)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=subjects,
                    storage=StorageType.FILE,
                    num_replicas=self.settings.replicas,
                    duplicate_window=self.settings.duplicate_window,
                    allow_direct=True,  # consumers read partitions with batched direct gets
                )
            )
            return
        if sorted(info.config.subjects or []) != sorted(subjects) or not info.config.allow_direct:
            raise ConfigurationError(
                f"JetStream stream {name!r} at {self.url} takes subjects {info.config.subjects} "
                f"(direct reads {'on' if info.config.allow_direct else 'off'}); this store has "
                f"{self.partitions} partitions and needs {subjects[0]} … {subjects[-1]} with direct "
                "reads: use another stream (?stream=NAME) or delete this one"
            )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._reader = self._client, None, None
            try:
                await client.drain()
            except DRIVER_ERRORS:
                await client.close()

    def _connected(self) -> tuple[Client, DirectReader]:
        if self._client is None or self._reader is None:
            raise BackendUnavailable(f"bus {self.url} is not open (call open() first)")
        return self._client, self._reader

    def subject(self, partition: int, topic: str) -> str:
        return f"{self.settings.prefix}.{partition}.{topic}"

    async def publish(self, partition: int, records: Sequence[RecordedEvent]) -> None:
        """Publish in order, each after the previous one is stored (acknowledged): a publish
        that fails leaves nothing after it stored, so order per partition holds through retries."""
        client, _ = self._connected()
        js = client.jetstream()
        for record in records:
            headers, body = to_binary(record.envelope)
            headers["Nats-Msg-Id"] = record.envelope.id
            headers[STREAM_HEADER] = record.stream
            headers[VERSION_HEADER] = str(record.version)
            try:
                await js.publish(self.subject(partition, record.envelope.topic), body, headers=headers)
            except DRIVER_ERRORS as exc:
                what = f"{type(exc).__name__}: {exc}"
                raise BackendUnavailable(
                    f"NATS at {self.url} did not store event {record.envelope.id}: {what}"
                ) from None
        if records:
            # The doorbell only saves consumers a poll: the events are stored either way.
            with contextlib.suppress(*DRIVER_ERRORS):
                await client.publish(self.settings.doorbell, b"")

    async def read_partition(self, partition: int, *, after: int, limit: int) -> list[RecordedEvent]:
        """Messages of one partition after stream sequence ``after``, in stream order."""
        _, reader = self._connected()
        try:
            return await reader.read(partition, after=after, limit=limit)
        except DRIVER_ERRORS as exc:
            raise BackendUnavailable(f"NATS at {self.url}: {type(exc).__name__}: {exc}") from None

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` on every doorbell, until cancelled."""

        async def ring(_message: object) -> None:
            wake()

        subscription = await self._connected()[0].subscribe(self.settings.doorbell, cb=ring)
        try:
            await asyncio.Event().wait()
        finally:
            if self._client is not None:
                with contextlib.suppress(*DRIVER_ERRORS):
                    await subscription.unsubscribe()

    def log(self, store_log: Log) -> Log:
        from tidings.adapters.nats.log import JetStreamLog

        return JetStreamLog(self, store_log)
