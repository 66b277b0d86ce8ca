"""``tidings certs dev DIR``: a development CA with a server and a client certificate, so that
TLS and mutual TLS can be tried locally in one command (never for production: the CA's key sits
beside its certificate)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tidings.cli.common import fail, stdout

certs_app = typer.Typer(help="Certificates for trying TLS locally.", no_args_is_help=True)

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")


@dataclass(frozen=True)
class DevCertificates:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tidings development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Owner-only from the moment the file exists: a private key is never readable by others.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_dev_certificates(
    directory: Path, *, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365, force: bool = False
) -> DevCertificates:
    """Write a CA, a server certificate for ``hosts`` and a client certificate into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in FILES if (directory / name).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)} (use --force to replace them)"
        )
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("tidings development CA"))
        .issuer_name(_name("tidings development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier, san: x509.SubjectAlternativeName | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, _san(hosts))
    client, client_key = leaf("tidings-client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    for name, certificate in (("ca.pem", ca), ("server.pem", server), ("client.pem", client)):
        (directory / name).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    for name, key in (("ca-key.pem", ca_key), ("server-key.pem", server_key), ("client-key.pem", client_key)):
        _write_key(directory / name, key)
    return DevCertificates(
        ca=directory / "ca.pem",
        server=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )


@certs_app.command("dev")
def certs_dev(
    directory: Annotated[Path, typer.Argument(help="Where to write the files (created if missing).")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="A name or address the server answers on (repeatable).")
    ] = None,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity in days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """A development CA, a server certificate and a client certificate (keys mode 0600)."""
    try:
        made = make_dev_certificates(directory, hosts=tuple(host or DEFAULT_HOSTS), days=days, force=force)
    except (FileExistsError, OSError, ValueError) as exc:
        fail(str(exc))
    console = stdout()
    console.print(f"wrote a development CA and certificates to {directory} (not for production)")
    console.print(
        f"  nats-server: tls {{ cert_file: {made.server}, key_file: {made.server_key},"
        f" ca_file: {made.ca}, verify: true }}"
    )
    console.print(f"  clients: CA {made.ca}; client certificate {made.client}, key {made.client_key}")
