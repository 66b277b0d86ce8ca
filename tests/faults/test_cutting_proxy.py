"""The fault tests' cutting proxy, against a real TCP server on loopback: it forwards both ways,
and cuts where it is told (what a test then proves about tidings rests on it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tidings.testing.proxy import cutting_proxy


@contextlib.asynccontextmanager
async def echo_server(received: list[bytes]) -> AsyncIterator[int]:
    """A server that notes every chunk it receives and answers each with the same bytes."""

    serving: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        serving.add(task)
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.append(chunk)
                writer.write(chunk)
                await writer.drain()
        await _close(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await asyncio.gather(*serving, return_exceptions=True)
        await server.wait_closed()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    got = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            got += chunk
    return got


async def test_it_forwards_both_ways_until_cut() -> None:
    received: list[bytes] = []
    async with echo_server(received) as port, cutting_proxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        proxy.cut()
        assert await _until_closed(reader) == b""
        await _close(writer)
    assert received == [b"hello"] and proxy.cuts == 1


async def test_a_marked_message_reaches_the_server_and_its_answer_never_comes_back() -> None:
    received: list[bytes] = []
    async with echo_server(received) as port, cutting_proxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"before")
        assert await reader.readexactly(6) == b"before"
        cut = proxy.cut_after_client_sends(b"PUB x")
        writer.write(b"PUB x 1")
        await asyncio.wait_for(cut.wait(), 10)
        assert await _until_closed(reader) == b""
        await _close(writer)
        # The next connection goes through again.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"after")
        assert await reader.readexactly(5) == b"after"
        await _close(writer)
    assert b"".join(received) == b"beforePUB x 1after"


async def test_it_cuts_after_so_many_bytes_from_the_server() -> None:
    received: list[bytes] = []
    async with echo_server(received) as port, cutting_proxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        cut = proxy.cut_after_server_bytes(4)
        writer.write(b"de")
        assert await reader.readexactly(2) == b"de"  # 2 of the 4 bytes allowed
        writer.write(b"fghij")
        await asyncio.wait_for(cut.wait(), 10)
        assert await _until_closed(reader) == b"fg"  # the other 2
        await _close(writer)
    assert b"".join(received) == b"abcdefghij"
