"""``tidings certs dev``: a CA, a server and a client certificate that TLS accepts; more from the
same CA with ``issue_certificate`` (expired, for another host)."""

from __future__ import annotations

import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from tidings.cli import app as cli
from tidings.cli.certs import issue_certificate, make_dev_certificates


def _common_name(path: Path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_the_certificates_chain_to_the_ca_and_name_the_hosts(tmp_path: Path) -> None:
    made = make_dev_certificates(tmp_path / "certs", hosts=("localhost", "127.0.0.1", "nats.test"))
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    server = x509.load_pem_x509_certificate(made.server.read_bytes())
    client = x509.load_pem_x509_certificate(made.client.read_bytes())
    for leaf, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert leaf.issuer == ca.subject
        ca_key = ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        leaf.verify_directly_issued_by(ca)
        assert usage in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "nats.test"} <= set(names.get_values_for_type(x509.DNSName))
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for key in (made.server_key, made.client_key, tmp_path / "certs" / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, f"{key.name} is readable by others"
    # Python's TLS stack takes them as they are: a server context and a verifying client context.
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(made.server, made.server_key)
    client_side = ssl.create_default_context(cafile=str(made.ca))
    client_side.load_cert_chain(made.client, made.client_key)


def test_the_command_writes_once_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "dev"
    first = CliRunner().invoke(cli, ["certs", "dev", str(target)])
    assert first.exit_code == 0, first.output
    assert "not for production" in first.output
    before = (target / "ca.pem").read_bytes()
    again = CliRunner().invoke(cli, ["certs", "dev", str(target)])
    assert again.exit_code == 2 and "--force" in again.output
    assert (target / "ca.pem").read_bytes() == before
    forced = CliRunner().invoke(cli, ["certs", "dev", str(target), "--force"])
    assert forced.exit_code == 0 and (target / "ca.pem").read_bytes() != before


def test_the_client_name_is_the_client_certificates_common_name(tmp_path: Path) -> None:
    made = make_dev_certificates(tmp_path / "pg", client_name="postgres")
    assert _common_name(made.client) == "postgres"
    assert _common_name(make_dev_certificates(tmp_path / "default").client) == "tidings-client"
    named = CliRunner().invoke(cli, ["certs", "dev", str(tmp_path / "cli"), "--client-name", "app"])
    assert named.exit_code == 0, named.output
    assert _common_name(tmp_path / "cli" / "client.pem") == "app"


def test_issued_certificates_come_from_the_same_ca_with_the_window_asked(tmp_path: Path) -> None:
    made = make_dev_certificates(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    began = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    ended = datetime.datetime(2020, 2, 1, tzinfo=datetime.UTC)
    server, server_key = issue_certificate(
        made, "old", hosts=("db.example",), not_before=began, not_after=ended
    )
    client, client_key = issue_certificate(made, "old-client", common_name="postgres")
    assert (server.name, server_key.name, client.name) == ("old.pem", "old-key.pem", "old-client.pem")
    for key in (server_key, client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    old = x509.load_pem_x509_certificate(server.read_bytes())
    old.verify_directly_issued_by(ca)
    assert (old.not_valid_before_utc, old.not_valid_after_utc) == (began, ended)
    names = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["db.example"]
    usage = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    fresh = x509.load_pem_x509_certificate(client.read_bytes())
    fresh.verify_directly_issued_by(ca)
    assert _common_name(client) == "postgres"
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in fresh.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    # Without a window it lasts as long as the CA does.
    assert fresh.not_valid_after_utc == ca.not_valid_after_utc
    with pytest.raises(ValueError, match="end after it starts"):
        issue_certificate(made, "backwards", not_before=ended, not_after=began)
