"""How to reach JetStream and where the log goes there, read from a ``nats://`` or ``tls://`` URL.

Client-free (the standard library only), like ``names``: the bus and the log it feeds both read
these settings, and neither needs the other for it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from tidings.adapters.nats.names import check_prefix
from tidings.adapters.urls import redact_url
from tidings.errors import ConfigurationError

_OWN_OPTIONS = (
    "stream",
    "prefix",
    "replicas",
    "duplicate_window",
    "connect_timeout",
    "tls_ca",
    "tls_cert",
    "tls_key",
)


@dataclass(frozen=True, slots=True)
class NatsSettings:
    servers: tuple[str, ...] = field(repr=False)  # they may carry a password
    stream: str = "TIDINGS"
    prefix: str = "tidings"
    replicas: int = 1
    duplicate_window: float = 120.0  # seconds within which JetStream drops a repeated event id
    connect_timeout: float = 5.0
    tls_ca: str | None = None  # a CA file to verify the server with (else the system's CAs)
    tls_cert: str | None = None  # a client certificate and its key, for mutual TLS
    tls_key: str | None = None
    display_url: str = field(default="", compare=False)

    @classmethod
    def from_url(cls, url: str) -> NatsSettings:
        """``nats://host:4222[,host2:4222...]`` or ``tls://...``; options as query parameters:
        ``stream``, ``prefix``, ``replicas``, ``duplicate_window`` (s), ``connect_timeout`` (s),
        and for TLS ``tls_ca``, ``tls_cert``, ``tls_key`` (file paths)."""
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
                prefix=check_prefix(options.get("prefix", "tidings")),
                replicas=int(options.get("replicas", "1")),
                duplicate_window=float(options.get("duplicate_window", "120")),
                connect_timeout=float(options.get("connect_timeout", "5")),
                tls_ca=options.get("tls_ca"),
                tls_cert=options.get("tls_cert"),
                tls_key=options.get("tls_key"),
                display_url=redact_url(url),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad NATS URL option in {redact_url(url)!r}: {exc}") from None

    def tls_context(self) -> ssl.SSLContext | None:
        """TLS for ``tls://`` URLs or when TLS files are given: the server's certificate is
        verified (against ``tls_ca``) and must name the host; a client certificate if given."""
        if not (any(s.startswith("tls://") for s in self.servers) or self.tls_ca or self.tls_cert):
            return None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigurationError("tls_cert and tls_key go together (a client certificate and its key)")
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert and self.tls_key:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"NATS TLS settings of {self.display_url}: {exc}") from None
        return context

    def stream_of(self, partition: int) -> str:
        return f"{self.stream}_{partition}"

    def subject_of(self, partition: int) -> str:
        return f"{self.prefix}.{partition}.>"

    @property
    def doorbell(self) -> str:
        return f"{self.prefix}.wake"
