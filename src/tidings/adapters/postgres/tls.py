"""Why libpq refused a server's certificate.

libpq reports only OpenSSL's last error ("SSL error: certificate verify failed", or for a CA of
the same name with another key "provider signature failure"), not the verification result that
says why: an expired certificate and an unknown CA read the same. When a connection that
verifies the server (``sslmode=verify-ca`` or ``verify-full``) fails in TLS, the store asks
again with Python's TLS stack, whose verification code tells the reason, said in tidings' words
(``the server's certificate has expired``). A TLS alert from the server about a certificate is
about the client's, and is said so.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tidings.adapters.tls_refusals import server_certificate_problem

# PostgreSQL's SSLRequest: a length of 8 and the code 1234 << 16 | 5679. The server answers b"S"
# and the TLS handshake follows on the same connection (or b"N": it does not speak TLS).
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_VERIFYING_MODES = ("verify-ca", "verify-full")
# TLS alerts (as OpenSSL words them) by which a server refuses a client certificate.
_CLIENT_CERTIFICATE_ALERTS = (
    "alert bad certificate",
    "alert certificate expired",
    "alert certificate revoked",
    "alert certificate unknown",
    "alert unknown ca",
    "alert unsupported certificate",
    "alert certificate required",
)
_TIMEOUT = 5.0


def handshake(host: str, port: int, context: ssl.SSLContext, timeout: float = _TIMEOUT) -> bytes | None:
    """Start TLS with the PostgreSQL server at ``host:port`` as ``context`` says and return the
    certificate it presented (DER), or None if it does not speak TLS. Nothing else is sent."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.sendall(SSL_REQUEST)
        if raw.recv(1) != b"S":
            return None
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)


def explain_refusal(conninfo: str, message: str) -> str:
    """libpq's error ``message`` with the reason a certificate was refused, where libpq left it
    out and it can be told. Blocks: it may take a TLS handshake with the server."""
    message = message.rstrip()
    if "SSL error" not in message:
        return message
    if any(alert in message for alert in _CLIENT_CERTIFICATE_ALERTS):
        # The client checks the server's certificate itself; an alert from the server that names
        # a certificate is about the client's.
        return f"{message} (the server refused the client certificate)"
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return message
    reason = _verification_failure(params)
    if not reason:
        return message
    return f"{message} ({reason})"


def _verification_failure(params: dict[str, Any]) -> str:
    """Why the server's certificate fails verification with the connection's root certificate
    (``the server's certificate has expired``), or "" if it passes or was not to be verified."""
    mode = _text(params, "sslmode") or os.environ.get("PGSSLMODE", "")
    if mode not in _VERIFYING_MODES:
        return ""
    address = (_text(params, "hostaddr") or _text(params, "host")).split(",")[0]
    port = (_text(params, "port") or os.environ.get("PGPORT") or "5432").split(",")[0]
    root = _text(params, "sslrootcert") or os.environ.get("PGSSLROOTCERT") or ""
    if not root:
        root = str(Path.home() / ".postgresql" / "root.crt")
    if not address or address.startswith("/") or not port.isdigit():
        return ""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # libpq names a host name that does not match by itself
    try:
        if root == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=root)
        handshake(address, int(port), context)
    except ssl.SSLCertVerificationError as exc:
        return server_certificate_problem(exc)
    except (OSError, ValueError):
        return ""
    return ""


def _text(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    return str(value) if value is not None else ""
