"""``tidings acl passwd`` and the README's policy example, checked with bcrypt, the policy loader
and a real nats-server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest
from typer.testing import CliRunner

from tidings.cli import app
from tidings.domain.policy import Policy
from tidings.runtime.access import load_policy
from tidings.testing.nats import nats_servers

README = Path(__file__).resolve().parents[2] / "README.md"
#: The password whose hash the README's policy example holds (its bus URLs log in with it).
README_PASSWORD = "orders-Pw-7"


def passwd(password: str, *options: str) -> tuple[int, str, str]:
    """``tidings acl passwd`` with ``password`` on stdin (a pipe, not a terminal)."""
    result = CliRunner().invoke(app, ["acl", "passwd", *options], input=password + "\n")
    return result.exit_code, result.stdout, result.stderr


def readme_policy() -> str:
    """The README's one ```toml block, verbatim."""
    (block,) = re.findall(r"^```toml\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    return str(block)


def test_passwd_prints_a_bcrypt_hash_that_the_policy_takes() -> None:
    code, out, err = passwd("orders-Pw-7")
    assert code == 0 and err == "", err
    (hashed,) = out.splitlines()
    assert hashed.startswith("$2a$11$")  # what nats-server's own tool writes
    assert bcrypt.checkpw(b"orders-Pw-7", hashed.encode())
    assert not bcrypt.checkpw(b"orders-Pw-8", hashed.encode())
    policy = Policy.from_toml(f'[principals.orders]\npassword = "{hashed}"\n', source="policy.toml")
    assert policy.principal("orders").password == hashed
    code, out, _ = passwd("x", "--cost", "4")
    assert code == 0 and out.startswith("$2a$04$") and bcrypt.checkpw(b"x", out.strip().encode())


@pytest.mark.parametrize("password", ["", "has space", "user@host", "a" * 73])
def test_passwd_refuses_what_a_bus_url_cannot_carry(password: str) -> None:
    code, out, err = passwd(password)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: a password must be 1 to 72 letters, digits")


def test_the_cli_starts_without_the_extras_and_passwd_names_the_one_it_needs() -> None:
    # nats-py, psycopg and bcrypt made unimportable in a process of its own, as in a base install.
    hidden = "; ".join(f"sys.modules[{name!r}] = None" for name in ("nats", "psycopg", "bcrypt"))
    script = f"import sys; {hidden}; from tidings.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", script, "acl", "passwd"],
        input="orders-Pw-7\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "error: tidings acl passwd needs bcrypt: pip install 'tidings[nats]'"


def test_the_readme_policy_example_works_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(readme_policy())
    orders = load_policy(path).principal("orders")
    assert orders.password is not None and orders.relay
    assert bcrypt.checkpw(README_PASSWORD.encode(), orders.password.encode())
    config = CliRunner().invoke(app, ["acl", "nats-config", str(path)])
    assert config.exit_code == 0, config.output
    with nats_servers(1, extra=config.stdout) as (server,):
        assert logs_in(server.port, "orders", README_PASSWORD)  # checked against the hash
        assert not logs_in(server.port, "orders", "orders-Pw-8")


def logs_in(port: int, user: str, password: str) -> bool:
    """Whether nats-server lets ``user`` in: it answers a PING after CONNECT only when it does
    (speaking the protocol itself: a client library's wording is not what is tested)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.recv(4096)  # the server's INFO
        hello = json.dumps({"user": user, "pass": password, "verbose": False, "pedantic": False})
        connection.sendall(f"CONNECT {hello}\r\nPING\r\n".encode())
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = connection.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.startswith(b"PONG")
