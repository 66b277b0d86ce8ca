"""Publishing envelopes to a JetStream stream, in CloudEvents binary mode.

The subject of an event is ``<prefix>.<topic>`` (``tidings.order.placed``), so that a group's
topic pattern maps one-to-one onto a subject filter. Each message carries ``Nats-Msg-Id`` = the
event id: a relay that publishes again after a crash is deduplicated by the server within the
stream's duplicate window (and by the consumers' inbox after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import Error as JetStreamError

from tidings.adapters.urls import redact_url
from tidings.domain.envelope import RecordedEvent, to_binary
from tidings.errors import BackendUnavailable, ConfigurationError

_OWN_OPTIONS = ("stream", "prefix", "replicas", "duplicate_window", "connect_timeout")


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


class NatsBus:
    """``Bus`` on JetStream: one file-backed stream holds every topic under the prefix."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.url = settings.display_url
        self._client: Client | None = None

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            client = self._client = await nats.connect(
                servers=list(self.settings.servers),
                connect_timeout=self.settings.connect_timeout,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
            await self._ensure_stream(client)
        except (NatsError, JetStreamError, OSError, TimeoutError) as exc:
            await self.close()
            raise BackendUnavailable(f"NATS at {self.url}: {type(exc).__name__}: {exc}") from None

    async def _ensure_stream(self, client: Client) -> None:
        js = client.jetstream()
        config = StreamConfig(
            name=self.settings.stream,
            subjects=[f"{self.settings.prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=self.settings.replicas,
            duplicate_window=self.settings.duplicate_window,
        )
        try:
            await js.stream_info(self.settings.stream)
        except JetStreamError:
            await js.add_stream(config)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.drain()
            except (NatsError, OSError, TimeoutError):
                await client.close()

    def subject(self, topic: str) -> str:
        return f"{self.settings.prefix}.{topic}"

    async def publish(self, records: Sequence[RecordedEvent]) -> None:
        """Publish in order; returns once JetStream has stored (acknowledged) every one."""
        if self._client is None:
            raise BackendUnavailable(f"bus {self.url} is not open (call open() first)")
        js = self._client.jetstream()
        for record in records:
            headers, body = to_binary(record.envelope)
            headers["Nats-Msg-Id"] = record.envelope.id
            try:
                await js.publish(self.subject(record.envelope.topic), body, headers=headers)
            except (NatsError, JetStreamError, OSError, TimeoutError) as exc:
                what = f"{type(exc).__name__}: {exc}"
                raise BackendUnavailable(
                    f"NATS at {self.url} did not store event {record.envelope.id}: {what}"
                ) from None
