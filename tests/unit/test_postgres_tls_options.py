"""PostgreSQL TLS options: libpq's pass through the store URL untouched, secrets stay out of what
is shown, and a refused certificate's error says whose it was. (The refusals themselves, against
a server that speaks TLS: ``tests/conformance/test_postgres_tls.py``.)"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from tidings.adapters.postgres.settings import PostgresSettings
from tidings.adapters.postgres.tls import explain_refusal

URL = (
    "postgresql://app:sesame@db.example:5433/shop?sslmode=verify-full&sslrootcert=/etc/tidings/ca.pem"
    "&sslcert=/etc/tidings/client.pem&sslkey=/etc/tidings/client-key.pem&sslpassword=hunter2"
    "&pool_size=3&connect_timeout=4"
)


def test_libpq_tls_options_reach_the_driver_and_tidings_options_do_not() -> None:
    settings = PostgresSettings.from_url(URL)
    params = conninfo_to_dict(settings.conninfo)
    assert {
        name: params[name] for name in ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")
    } == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/tidings/ca.pem",
        "sslcert": "/etc/tidings/client.pem",
        "sslkey": "/etc/tidings/client-key.pem",
        "sslpassword": "hunter2",
    }
    assert (params["host"], params["port"], params["user"], params["dbname"]) == (
        "db.example",
        "5433",
        "app",
        "shop",
    )
    assert "pool_size" not in params and (settings.pool_size, settings.connect_timeout) == (3, 4.0)
    assert "hunter2" not in settings.display_url and "sesame" not in settings.display_url
    assert "sslrootcert=/etc/tidings/ca.pem" in settings.display_url


def test_an_error_without_tls_in_it_is_left_as_it_is() -> None:
    message = 'connection to server at "127.0.0.1", port 5 failed: Connection refused'
    assert explain_refusal(URL, message) == message


def test_a_server_alert_about_a_certificate_is_about_the_clients() -> None:
    message = (
        'connection to server at "127.0.0.1", port 5 failed: SSL error: ssl/tls alert certificate expired'
    )
    assert explain_refusal(URL, message) == f"{message} (the server refused the client certificate)"


def test_a_server_that_is_not_verified_is_not_asked_again() -> None:
    message = "SSL error: unexpected eof while reading"
    for url in ("postgresql://app@127.0.0.1:1/shop?sslmode=require", "postgresql://app@127.0.0.1:1/shop"):
        assert explain_refusal(url, message) == message
