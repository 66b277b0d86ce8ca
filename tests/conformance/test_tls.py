"""NATS over mutual TLS against a nats-server that requires it (certificates from ``tidings
certs dev``): the right CA and a client certificate connect; plaintext, another CA, a missing
client certificate, a certificate for another host and expired certificates (the server's, the
client's) are refused with clear errors."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.app import App
from tidings.cli.certs import DEFAULT_HOSTS, DevCertificates, issue_certificate, make_dev_certificates
from tidings.errors import BackendUnavailable
from tidings.testing.nats import NatsServer, nats_servers

# A validity window that ended yesterday.
BEGAN = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
ENDED = BEGAN + datetime.timedelta(days=29)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certificates: DevCertificates) -> Iterator[NatsServer]:
    with nats_servers(1, tls=(certificates.server, certificates.server_key, certificates.ca)) as (server,):
        yield server


def _url(server: NatsServer, host: str = "127.0.0.1", scheme: str = "tls", **files: Path) -> str:
    query = "&".join(f"{name}={path}" for name, path in files.items())
    return f"{scheme}://{host}:{server.port}?connect_timeout=2&stream=TLS" + (f"&{query}" if query else "")


async def _open(tmp_path: Path, bus: str) -> None:
    async with App("tls", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus):
        pass


async def test_the_right_ca_and_a_client_certificate_connect(
    tmp_path: Path, tls_server: NatsServer, certificates: DevCertificates
) -> None:
    bus = _url(
        tls_server, tls_ca=certificates.ca, tls_cert=certificates.client, tls_key=certificates.client_key
    )
    await _open(tmp_path, bus)


async def test_plaintext_is_refused(tmp_path: Path, tls_server: NatsServer) -> None:
    # The client upgrades to TLS when the server demands it, verifying it with the system's CAs.
    with pytest.raises(BackendUnavailable, match=r"NATS at nats://127\.0\.0\.1.*the server requires TLS"):
        await _open(tmp_path, _url(tls_server, scheme="nats"))


async def test_another_ca_is_refused(
    tmp_path: Path, tls_server: NatsServer, certificates: DevCertificates
) -> None:
    other = make_dev_certificates(tmp_path / "other")
    bus = _url(tls_server, tls_ca=other.ca, tls_cert=certificates.client, tls_key=certificates.client_key)
    with pytest.raises(BackendUnavailable, match=r"the server's certificate is not signed by a CA"):
        await _open(tmp_path, bus)


async def test_a_missing_client_certificate_is_refused(
    tmp_path: Path, tls_server: NatsServer, certificates: DevCertificates
) -> None:
    with pytest.raises(BackendUnavailable):
        await _open(tmp_path, _url(tls_server, tls_ca=certificates.ca))


async def test_a_certificate_for_another_host_is_refused(
    tmp_path: Path, certificates: DevCertificates
) -> None:
    elsewhere = make_dev_certificates(tmp_path / "elsewhere", hosts=("db.example",))
    with nats_servers(1, tls=(elsewhere.server, elsewhere.server_key, elsewhere.ca)) as (server,):
        bus = _url(server, tls_ca=elsewhere.ca, tls_cert=elsewhere.client, tls_key=elsewhere.client_key)
        with pytest.raises(BackendUnavailable, match=r"the server's certificate is not for this IP address"):
            await _open(tmp_path, bus)


async def test_an_expired_server_certificate_is_refused(
    tmp_path: Path, certificates: DevCertificates
) -> None:
    expired, key = issue_certificate(
        certificates, "expired-server", hosts=DEFAULT_HOSTS, not_before=BEGAN, not_after=ENDED
    )
    with nats_servers(1, tls=(expired, key, certificates.ca)) as (server,):
        bus = _url(
            server, tls_ca=certificates.ca, tls_cert=certificates.client, tls_key=certificates.client_key
        )
        with pytest.raises(BackendUnavailable, match=r"the server's certificate has expired"):
            await _open(tmp_path, bus)


async def test_an_expired_client_certificate_is_refused(
    tmp_path: Path, tls_server: NatsServer, certificates: DevCertificates
) -> None:
    expired, key = issue_certificate(certificates, "expired-client", not_before=BEGAN, not_after=ENDED)
    bus = _url(tls_server, tls_ca=certificates.ca, tls_cert=expired, tls_key=key)
    # nats-server refuses it with a TLS alert, which may reach the client only after a write of
    # its own failed: the error names the alert, not the broken pipe.
    with pytest.raises(BackendUnavailable, match=r"the server refused the client certificate"):
        await _open(tmp_path, bus)
