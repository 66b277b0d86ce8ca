"""A TCP proxy for the fault tests, that cuts its connections on demand.

Between a client and a server on loopback, it forwards bytes both ways until told to cut: at
once (``cut``), once the client has sent bytes that hold a marker (``cut_after_client_sends``:
the chunk with the marker reaches the server, nothing the server answers reaches the client, so
a publish is stored and its acknowledgement lost), or after some more bytes from the server
(``cut_after_server_bytes``). A cut closes every connection both ways, as a dead network path
would; the client may connect again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass
class _Trigger:
    """When to cut: once a chunk from the client holds ``marker``, or once ``server_bytes``
    more bytes came from the server."""

    marker: bytes = b""
    server_bytes: int | None = None
    fired: asyncio.Event = field(default_factory=asyncio.Event)


class CuttingProxy:
    """Listens on a free loopback port and forwards each connection to ``upstream``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.cuts = 0  # how many times connections were cut
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._trigger: _Trigger | None = None
        self._muted = False  # from the marker to the cut: nothing from the server gets through

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_all()
        # The connections' tasks end on their aborted transports; wait for them, so that none
        # outlives the event loop.
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        """Close every connection now."""
        self.cuts += 1
        self._close_all()

    def cut_after_client_sends(self, marker: bytes) -> asyncio.Event:
        """Cut right after the first chunk from a client that holds ``marker`` is forwarded;
        the returned event is set when that happened."""
        self._trigger = _Trigger(marker=marker)
        return self._trigger.fired

    def cut_after_server_bytes(self, count: int) -> asyncio.Event:
        """Let ``count`` more bytes from the server through, then cut."""
        self._trigger = _Trigger(server_bytes=count)
        return self._trigger.fired

    def _fire(self) -> None:
        trigger, self._trigger = self._trigger, None
        self.cut()
        self._muted = False
        if trigger is not None:
            trigger.fired.set()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                # An abort, not a polite close: nothing still buffered goes out.
                writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        await asyncio.gather(
            self._pump(client_reader, server_writer, from_client=True),
            self._pump(server_reader, client_writer, from_client=False),
        )
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        tail = b""  # the end of the previous chunk, for a marker split between two
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            async for chunk in _chunks(reader):
                trigger = self._trigger
                if trigger is not None and not from_client and trigger.server_bytes is not None:
                    if len(chunk) >= trigger.server_bytes:
                        writer.write(chunk[: trigger.server_bytes])  # the last bytes let through
                        with contextlib.suppress(OSError):
                            await writer.drain()
                        self._fire()
                        return
                    trigger.server_bytes -= len(chunk)
                if writer.transport.is_closing():
                    return
                if self._muted and not from_client:
                    continue  # an answer to the marked message (or later): lost with the cut
                seen, tail = tail + chunk, chunk[-64:]
                marked = (
                    trigger is not None and from_client and bool(trigger.marker) and trigger.marker in seen
                )
                self._muted = self._muted or marked
                writer.write(chunk)
                await writer.drain()
                if marked:
                    # Give the server the moment to read the chunk before the connection goes.
                    await asyncio.sleep(0.05)
                    self._fire()
                    return
        writer.transport.abort()


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read(_CHUNK):
        yield chunk


@contextlib.asynccontextmanager
async def cutting_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[CuttingProxy]:
    """A started ``CuttingProxy`` to the upstream, closed afterwards."""
    proxy = CuttingProxy(upstream_host, upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
