"""A refused TLS handshake, said in tidings' words chosen by OpenSSL's codes, not its texts."""

from __future__ import annotations

import ssl

import pytest

from tidings.adapters.tls_refusals import refuses_client_certificate, server_certificate_problem


def verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (10, "the server's certificate has expired"),
        (9, "the server's certificate is not valid yet"),
        (20, "the server's certificate is not signed by a CA that the connection trusts"),
        (7, "the server's certificate is not signed by a CA that the connection trusts"),
        (62, "the server's certificate is not for this host name"),
    ],
)
def test_known_codes_are_said_in_tidings_words(code: int, words: str) -> None:
    assert server_certificate_problem(verification_error(code, "whatever OpenSSL says today")) == words


def test_an_unknown_code_keeps_openssls_reason_after_tidings_words() -> None:
    problem = server_certificate_problem(verification_error(4242, "a reason of the future"))
    assert problem == "the server's certificate does not verify: a reason of the future"


def test_an_alert_about_a_certificate_is_about_the_clients() -> None:
    alert = ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired")
    alert.reason = "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    assert refuses_client_certificate(alert)
    alert.reason = "TLSV1_ALERT_UNKNOWN_CA"
    assert refuses_client_certificate(alert)
    alert.reason = "WRONG_VERSION_NUMBER"
    assert not refuses_client_certificate(alert)
    assert not refuses_client_certificate(ssl.SSLError("no reason at all"))
