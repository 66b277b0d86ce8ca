"""``tidings certs dev``: a CA, a server and a client certificate that TLS accepts."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from tidings.cli import app as cli
from tidings.cli.certs import make_dev_certificates


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
