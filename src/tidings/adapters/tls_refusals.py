"""Why a TLS handshake was refused, in tidings' words, for the adapters that speak TLS.

OpenSSL's texts change between its versions; its verification codes (``X509_V_ERR_*``) and the
names of its alert reasons do not, so the words are chosen by those, and OpenSSL's own text
follows only where no code is known.
"""

from __future__ import annotations

import ssl
from typing import Final

_UNTRUSTED: Final = "is not signed by a CA that the connection trusts"
# X509_V_ERR_* codes (OpenSSL's include/openssl/x509_vfy.h), by what they say of the certificate.
_SERVER_CERTIFICATE: Final = {
    2: _UNTRUSTED,  # unable to get issuer certificate
    7: _UNTRUSTED,  # certificate signature failure: a CA of the same name, another key
    9: "is not valid yet",
    10: "has expired",
    18: _UNTRUSTED,  # self-signed certificate
    19: _UNTRUSTED,  # self-signed certificate in chain
    20: _UNTRUSTED,  # unable to get local issuer certificate
    21: _UNTRUSTED,  # unable to verify the first certificate
    23: "has been revoked",
    62: "is not for this host name",
    64: "is not for this IP address",
}


def server_certificate_problem(error: ssl.SSLCertVerificationError) -> str:
    """What is wrong with the server's certificate that ``error`` refused."""
    # An error made without OpenSSL's verdict (ssl.CertificateError("...")) has neither field.
    words = _SERVER_CERTIFICATE.get(getattr(error, "verify_code", -1))
    if words is None:
        return f"the server's certificate does not verify: {getattr(error, 'verify_message', None) or error}"
    return f"the server's certificate {words}"


def refuses_client_certificate(error: ssl.SSLError) -> bool:
    """Whether ``error`` is an alert by which the server refused the client's certificate (the
    client checks the server's itself: an alert from the server about a certificate is about ours)."""
    reason = str(getattr(error, "reason", "") or "")
    return "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)
