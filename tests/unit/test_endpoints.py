"""The endpoints' HTTP server, in-process: what it answers to requests it cannot route, to a
request too large, to a client that sends nothing; and a held event loop makes it unhealthy."""

from __future__ import annotations

import asyncio
import time

import pytest

from tidings import endpoints
from tidings.endpoints import Answer, Route, serving
from tidings.runtime.monitoring import LOOP_BOUND, LoopWatch


async def _ok() -> Answer:
    return 200, "text/plain", b"fine\n"


async def _broken() -> Answer:
    raise RuntimeError("a route that fails")


ROUTES: dict[str, Route] = {"/fine": _ok, "/broken": _broken}


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_it_routes_get_and_head_and_refuses_the_rest() -> None:
    async with serving("127.0.0.1", 0, ROUTES) as port:
        got = await _exchange(port, b"GET /fine?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Connection: close\r\n" in got and b"Content-Length: 5\r\n" in got
        assert got.endswith(b"\r\n\r\nfine\n")
        head = await _exchange(port, b"HEAD /fine HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert (await _exchange(port, b"GET /other HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        refused = await _exchange(port, b"DELETE /fine HTTP/1.1\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD\r\n" in refused
        assert (await _exchange(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await _exchange(port, b"GET /broken HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 500 ")


async def test_a_client_that_sends_no_whole_request_is_answered_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoints, "READ_TIMEOUT", 0.2)
    async with serving("127.0.0.1", 0, ROUTES) as port:
        assert (await _exchange(port, b"GET /fine HTTP/1.1\r\n")).startswith(b"HTTP/1.1 408 ")


async def test_a_request_too_large_is_refused_unread() -> None:
    async with serving("127.0.0.1", 0, ROUTES) as port:
        huge = b"GET /fine HTTP/1.1\r\nX-Padding: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await _exchange(port, huge)).startswith(b"HTTP/1.1 431 ")


async def test_a_held_event_loop_shows_as_late() -> None:
    watch = LoopWatch()
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0.3)
        assert watch.lag() < LOOP_BOUND
        time.sleep(0.6)  # noqa: ASYNC251 - holds the loop on purpose, as a blocking handler would
        assert watch.lag() > 0.3
    finally:
        task.cancel()
