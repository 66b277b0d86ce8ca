"""PostgreSQL over TLS with client certificates, against a server these tests start
(``tidings.testing.postgres_tls``: TLS only, ``cert`` authentication). With ``sslmode=verify-full``,
the right CA and a client certificate an App appends and reads over TLS; plaintext, another CA,
an expired server certificate, a certificate for another host, a missing client certificate and
an expired one are refused with errors that say why."""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidings.app import App
from tidings.cli.certs import DEFAULT_HOSTS, DevCertificates, issue_certificate, make_dev_certificates
from tidings.errors import BackendUnavailable
from tidings.testing.conformance.events import items, unique
from tidings.testing.postgres_tls import TlsPostgres, postgres_tls_server
from tidings.testing.raw import raw_execute

# cert authentication takes the user from the client certificate's common name: the server's
# superuser, whom the tests connect as.
USER = "postgres"
# A validity window that ended yesterday.
BEGAN = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
ENDED = BEGAN + datetime.timedelta(days=29)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_dev_certificates(tmp_path_factory.mktemp("pg-certs"), client_name=USER)


@pytest.fixture(scope="module")
def server(certificates: DevCertificates) -> Iterator[TlsPostgres]:
    with postgres_tls_server(certificates.server, certificates.server_key, certificates.ca) as started:
        assert started.user == USER
        yield started


@contextlib.contextmanager
def presenting(
    server: TlsPostgres, certificates: DevCertificates, certificate: Path, key: Path
) -> Iterator[None]:
    """The server presents another certificate for the block, then its own again."""
    server.present(certificate, key)
    try:
        yield
    finally:
        server.present(certificates.server, certificates.server_key)


def _verified(server: TlsPostgres, certificates: DevCertificates, **overrides: str | Path) -> str:
    options: dict[str, str | Path] = {
        "sslmode": "verify-full",
        "sslrootcert": certificates.ca,
        "sslcert": certificates.client,
        "sslkey": certificates.client_key,
        "connect_timeout": "5",
    }
    options.update(overrides)
    return server.url(**{name: value for name, value in options.items() if value != ""})


async def _refusal(url: str) -> str:
    with pytest.raises(BackendUnavailable) as caught:
        async with App("tls", store=url):
            pass
    return str(caught.value)


async def test_the_right_ca_and_a_client_certificate_connect_over_tls(
    server: TlsPostgres, certificates: DevCertificates
) -> None:
    url = _verified(server, certificates)
    async with App("tls", store=url) as app:
        stream = unique("tls")
        await app.store.append(stream, items(stream, 3))
        assert [r.version for r in await app.store.read_stream(stream)] == [1, 2, 3]
    ((encrypted, client_dn),) = raw_execute(
        url, "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    )
    assert encrypted is True and client_dn.endswith(f"CN={USER}")


async def test_plaintext_is_refused(server: TlsPostgres) -> None:
    message = await _refusal(server.url(sslmode="disable", connect_timeout="5"))
    assert f"PostgreSQL at postgresql://{USER}@127.0.0.1:{server.port}" in message
    assert "no pg_hba.conf entry" in message and "no encryption" in message


async def test_another_ca_is_refused(
    tmp_path: Path, server: TlsPostgres, certificates: DevCertificates
) -> None:
    other = make_dev_certificates(tmp_path / "other", client_name=USER)
    message = await _refusal(_verified(server, certificates, sslrootcert=other.ca))
    # A CA of the same name but another key: the server's certificate's signature does not verify.
    assert "(the server's certificate is not signed by a CA that the connection trusts)" in message


async def test_an_expired_server_certificate_is_refused(
    server: TlsPostgres, certificates: DevCertificates
) -> None:
    expired, key = issue_certificate(
        certificates, "expired-server", hosts=DEFAULT_HOSTS, not_before=BEGAN, not_after=ENDED
    )
    # A password and an ssl key password in the URL: the error names the URL without them.
    url = _verified(server, certificates, sslpassword="hunter2").replace(f"{USER}@", f"{USER}:sesame@")
    with presenting(server, certificates, expired, key):
        message = await _refusal(url)
    assert "(the server's certificate has expired)" in message
    assert "hunter2" not in message and "sesame" not in message


async def test_a_certificate_for_another_host_is_refused(
    server: TlsPostgres, certificates: DevCertificates
) -> None:
    elsewhere, key = issue_certificate(certificates, "elsewhere", hosts=("db.example",))
    with presenting(server, certificates, elsewhere, key):
        message = await _refusal(_verified(server, certificates))
    assert re.search(
        r'server certificate for "db\.example".* does not match host name "127\.0\.0\.1"', message
    )


async def test_a_missing_client_certificate_is_refused(
    server: TlsPostgres, certificates: DevCertificates
) -> None:
    message = await _refusal(_verified(server, certificates, sslcert="", sslkey=""))
    assert "connection requires a valid client certificate" in message


async def test_an_expired_client_certificate_is_refused(
    server: TlsPostgres, certificates: DevCertificates
) -> None:
    expired, key = issue_certificate(
        certificates, "expired-client", common_name=USER, not_before=BEGAN, not_after=ENDED
    )
    message = await _refusal(_verified(server, certificates, sslcert=expired, sslkey=key))
    assert "(the server refused the client certificate)" in message
