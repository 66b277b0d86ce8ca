"""A PostgreSQL server for tests that speaks TLS only and wants client certificates.

``postgres_tls_server(certificate, key, ca)`` starts a throwaway server (see
``tidings.testing.servers``) whose TCP port accepts only TLS connections that present a client
certificate issued by ``ca`` whose common name is the user (``hostssl ... cert``; there is no
plain ``host`` line, so a connection without TLS is refused). ``present`` swaps the server's
certificate with a configuration reload, so that one server can show the clients an expired
certificate or one for another host without another ``initdb``.

The server reads its certificate, key, CA and ``pg_hba.conf`` from a directory of its own,
owned by its user: PostgreSQL refuses a key that others can read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from tidings.adapters.postgres.tls import handshake
from tidings.testing.servers import EmbeddedServer, embedded_server, server_account

__all__ = ["TlsPostgres", "postgres_tls_server", "presented_certificate"]

_HOST = "127.0.0.1"
_RELOAD_TIMEOUT = 15.0
# The Unix socket (in a directory private to the server's user) serves the tests' own set-up;
# TCP takes TLS with a client certificate only, its common name being the user name.
_HBA = """\
local all all trust
hostssl all all 127.0.0.1/32 cert
hostssl all all ::1/128 cert
"""


@dataclass(frozen=True)
class TlsPostgres:
    """A running server that wants TLS and client certificates."""

    server: EmbeddedServer
    directory: Path  # where the server reads its certificate, key, CA and pg_hba.conf
    owner: tuple[int, int] | None  # (uid, gid) of the server's user, when it is not ours

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def user(self) -> str:
        """The user that a client certificate must name (its common name)."""
        return self.server.user

    def url(self, **options: str | Path) -> str:
        """``postgresql://user@127.0.0.1:PORT/tidings_test`` with libpq ``options``
        (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``) as query parameters."""
        query = urlencode({name: str(value) for name, value in options.items()}, safe="/")
        base = f"postgresql://{self.user}@{_HOST}:{self.port}/{self.server.database}"
        return f"{base}?{query}" if query else base

    def present(self, certificate: Path, key: Path) -> None:
        """Make the server present ``certificate`` (with ``key``) to new connections."""
        self._place("server.pem", certificate.read_bytes())
        self._place("server-key.pem", key.read_bytes())
        import psycopg

        with psycopg.connect(self.server.socket_conninfo(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        # The postmaster reloads when it gets to the signal; a connection made before then would
        # still see the old certificate.
        _wait_until_presented(self.server, certificate, _RELOAD_TIMEOUT)

    def _place(self, name: str, content: bytes) -> None:
        _place(self.directory / name, content, self.owner)


def _place(path: Path, content: bytes, owner: tuple[int, int] | None) -> None:
    """Write ``path`` for the server's user only (mode 0600, owned by it)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    if owner is not None:
        os.chown(path, *owner)


@contextlib.contextmanager
def postgres_tls_server(certificate: Path, key: Path, ca: Path) -> Iterator[TlsPostgres]:
    """A throwaway server presenting ``certificate`` and trusting client certificates from ``ca``."""
    account = server_account()
    owner = (account.pw_uid, account.pw_gid) if account is not None else None
    directory = Path(tempfile.mkdtemp(prefix="tidings-pg-tls-"))
    try:
        if owner is not None:
            os.chown(directory, *owner)
        for name, content in (
            ("server.pem", certificate.read_bytes()),
            ("server-key.pem", key.read_bytes()),
            ("ca.pem", ca.read_bytes()),
            ("pg_hba.conf", _HBA.encode()),
        ):
            _place(directory / name, content, owner)
        settings = {
            "ssl": "on",
            "ssl_cert_file": str(directory / "server.pem"),
            "ssl_key_file": str(directory / "server-key.pem"),
            "ssl_ca_file": str(directory / "ca.pem"),
            "hba_file": str(directory / "pg_hba.conf"),
        }
        with embedded_server(settings=settings, ssl=True) as server:
            # The Unix socket can only be our server's; the TCP port is ours if it presents the
            # certificate we just made.
            _wait_until_presented(server, certificate, _RELOAD_TIMEOUT)
            yield TlsPostgres(server, directory, owner)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def presented_certificate(host: str, port: int) -> bytes:
    """The certificate (DER) that the PostgreSQL server at ``host:port`` presents, unverified."""
    # Only to look at the certificate: nothing is sent over this connection.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    der = handshake(host, port, context)
    if der is None:
        raise RuntimeError(f"PostgreSQL at {host}:{port} does not speak TLS")
    return der


def _wait_until_presented(server: EmbeddedServer, certificate: Path, timeout: float) -> None:
    expected = ssl.PEM_cert_to_DER_cert(certificate.read_text())
    deadline = time.monotonic() + timeout
    seen = "nothing"
    while time.monotonic() < deadline:
        try:
            if presented_certificate(_HOST, server.port) == expected:
                return
            seen = "another certificate"
        except (OSError, RuntimeError) as exc:
            seen = str(exc)
        time.sleep(0.05)
    raise RuntimeError(
        f"PostgreSQL on port {server.port} does not present {certificate.name} ({seen}); "
        f"its log ends with:\n{server.log_tail()}"
    )
