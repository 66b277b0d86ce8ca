"""``tidings certs dev DIR``: a development CA with a server and a client certificate, so that
TLS and mutual TLS can be tried locally in one command (never for production: the CA's key sits
beside its certificate). ``issue_certificate`` adds more from the same CA, for tests: an expired
certificate, one for another host."""

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
DEFAULT_CLIENT_NAME = "tidings-client"
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
# Leaves start a little in the past, so that a peer whose clock lags a few minutes accepts them.
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class DevCertificates:
    ca: Path
    ca_key: Path
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


def _make_ca(not_after: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("tidings development CA"))
        .issuer_name(_name("tidings development CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.now(datetime.UTC) - _CLOCK_SKEW)
        .not_valid_after(not_after)
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
        .sign(key, hashes.SHA256())
    )
    return ca, key


def _make_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    hosts: tuple[str, ...] | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``hosts``, or a client certificate when ``hosts`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if hosts is None else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts is not None:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(
    directory: Path, stem: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return path, key_path


def make_dev_certificates(
    directory: Path,
    *,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    client_name: str = DEFAULT_CLIENT_NAME,
    days: int = 365,
    force: bool = False,
) -> DevCertificates:
    """Write a CA, a server certificate for ``hosts`` and a client certificate named
    ``client_name`` (PostgreSQL's ``cert`` authentication takes it as the user) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [name for name in FILES if (directory / name).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)} (use --force to replace them)"
        )
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    ca, ca_key = _make_ca(not_after)
    server = _make_leaf(ca, ca_key, hosts[0], hosts, now - _CLOCK_SKEW, not_after)
    client = _make_leaf(ca, ca_key, client_name, None, now - _CLOCK_SKEW, not_after)
    ca_path, ca_key_path = _write(directory, "ca", ca, ca_key)
    server_path, server_key_path = _write(directory, "server", *server)
    client_path, client_key_path = _write(directory, "client", *client)
    return DevCertificates(ca_path, ca_key_path, server_path, server_key_path, client_path, client_key_path)


def issue_certificate(
    made: DevCertificates,
    stem: str,
    *,
    hosts: tuple[str, ...] | None = None,
    common_name: str | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Another certificate from the CA of ``made``, written beside it as ``STEM.pem`` and
    ``STEM-key.pem``: for ``hosts`` a server certificate, else a client one (``common_name``
    defaults to the first host, or the client name). A window in the past makes it expired."""
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(made.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{made.ca_key} is not the key of a development CA")
    now = datetime.datetime.now(datetime.UTC)
    start = not_before or now - _CLOCK_SKEW
    end = not_after or ca.not_valid_after_utc
    if end <= start:
        raise ValueError(f"a certificate must end after it starts ({start} .. {end})")
    name = common_name or (hosts[0] if hosts else DEFAULT_CLIENT_NAME)
    leaf = _make_leaf(ca, ca_key, name, hosts, start, end)
    return _write(made.ca.parent, stem, *leaf)


@certs_app.command("dev")
def certs_dev(
    directory: Annotated[Path, typer.Argument(help="Where to write the files (created if missing).")],
    host: Annotated[
        list[str] | None, typer.Option("--host", help="A name or address the server answers on (repeatable).")
    ] = None,
    client_name: Annotated[
        str,
        typer.Option(
            "--client-name",
            help="The client certificate's common name (PostgreSQL's cert authentication: the user).",
        ),
    ] = DEFAULT_CLIENT_NAME,
    days: Annotated[int, typer.Option("--days", min=1, max=3650, help="Validity in days.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace files that exist.")] = False,
) -> None:
    """A development CA, a server certificate and a client certificate (keys mode 0600)."""
    try:
        made = make_dev_certificates(
            directory, hosts=tuple(host or DEFAULT_HOSTS), client_name=client_name, days=days, force=force
        )
    except (FileExistsError, OSError, ValueError) as exc:
        fail(str(exc))
    console = stdout()
    console.print(f"wrote a development CA and certificates to {directory} (not for production)")
    console.print(
        f"  nats-server: tls {{ cert_file: {made.server}, key_file: {made.server_key},"
        f" ca_file: {made.ca}, verify: true }}"
    )
    console.print(
        f"  postgresql.conf: ssl = on, ssl_cert_file = '{made.server}', ssl_key_file = '{made.server_key}'"
        f" (owned by the server's user), ssl_ca_file = '{made.ca}'; pg_hba.conf: hostssl ... cert"
    )
    console.print(f"  clients: CA {made.ca}; client certificate {made.client}, key {made.client_key}")
