"""The HTTP endpoints of a running App (``tidings run --metrics-port``), Kubernetes-style:

* ``/metrics``: every metric of the process in the Prometheus text format;
* ``/healthz``: 200 while the process lives and its event loop answers in time (it is answered
  from the loop itself), else 503;
* ``/readyz``: 200 while the store and the bus answer within a second, the App's workers run and
  its relay is not stalled; else 503, the body naming what is not ready.

A small server of its own (``asyncio.start_server``; GET and HEAD only, one bounded request per
connection, then ``Connection: close``), so that no web framework comes with tidings. The
Prometheus exposition needs the optional ``metrics`` extra (the OpenTelemetry SDK and the
Prometheus exporter), imported only here and only when asked (``prometheus_exposition``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from tidings.errors import ConfigurationError
from tidings.runtime.monitoring import Monitor

log = logging.getLogger("tidings.endpoints")

MAX_REQUEST: Final = 8192  # bytes of request line and headers; a longer request is refused
READ_TIMEOUT: Final = 5.0  # seconds a client has to send its request
EXTRA: Final = "tidings[metrics]"
TEXT: Final = "text/plain; charset=utf-8"
#: What Prometheus scrapes (prometheus_client's CONTENT_TYPE_LATEST for the text format).
PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Answer = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Awaitable[Answer]]


def prometheus_exposition() -> Callable[[], bytes]:
    """Install the OpenTelemetry SDK's meter provider with a Prometheus reader as the process's
    own, and return what renders the text format; ``ConfigurationError`` naming the extra to
    install when it is missing."""
    try:
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import REGISTRY, generate_latest
    except ImportError as exc:
        raise ConfigurationError(f"serving metrics needs {EXTRA} (pip install '{EXTRA}'): {exc}") from None
    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    return lambda: generate_latest(REGISTRY)


def routes(monitor: Monitor, exposition: Callable[[], bytes]) -> dict[str, Route]:
    """The three endpoints over a running App's monitor."""

    async def scrape() -> Answer:
        return 200, PROMETHEUS_TEXT, exposition()

    async def healthz() -> Answer:
        problems = monitor.unhealthy()
        return (503, TEXT, _lines(problems)) if problems else (200, TEXT, b"ok\n")

    async def readyz() -> Answer:
        problems = await monitor.unready()
        return (503, TEXT, _lines(problems)) if problems else (200, TEXT, b"ready\n")

    return {"/metrics": scrape, "/healthz": healthz, "/readyz": readyz}


@contextlib.asynccontextmanager
async def probed(
    host: str, port: int, monitor: Monitor, exposition: Callable[[], bytes]
) -> AsyncIterator[int]:
    """Serve a running App's endpoints (``routes``) and watch its event loop for ``/healthz``,
    for the duration of the block; gives the bound port."""
    watch = asyncio.create_task(monitor.loop.run())
    try:
        async with serving(host, port, routes(monitor, exposition)) as bound:
            yield bound
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch


def _lines(problems: list[str]) -> bytes:
    return "".join(f"{problem}\n" for problem in problems).encode()


@contextlib.asynccontextmanager
async def serving(host: str, port: int, served: dict[str, Route]) -> AsyncIterator[int]:
    """Serve ``served`` on ``host:port`` for the duration of the block; gives the bound port
    (of use when ``port`` is 0)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, (status, content_type, body) = await _answer(reader, served)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                + ("Allow: GET, HEAD\r\n" if status == 405 else "")
                + "\r\n"
            )
            writer.write(head.encode("ascii") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away
        except Exception:
            log.exception("endpoints: answering a request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, host, port, limit=MAX_REQUEST)
    bound = server.sockets[0].getsockname()[1]
    log.info("metrics and probes on http://%s:%d (/metrics, /healthz, /readyz)", host, bound)
    try:
        yield int(bound)
    finally:
        server.close()
        await server.wait_closed()


async def _answer(reader: asyncio.StreamReader, served: dict[str, Route]) -> tuple[str, Answer]:
    """Read one request (its line and headers, within ``MAX_REQUEST`` bytes) and route it;
    gives its method (a HEAD's answer goes without its body) and the answer."""
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except (asyncio.LimitOverrunError, ValueError):
        return "", (431, TEXT, b"request too large\n")
    except asyncio.IncompleteReadError:
        return "", (400, TEXT, b"incomplete request\n")
    except TimeoutError:
        return "", (408, TEXT, b"no request in time\n")
    parts = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return "", (400, TEXT, b"not an HTTP/1.x request\n")
    method, target, _ = parts
    route = served.get(target.split("?", 1)[0])
    if route is None:
        return method, (404, TEXT, b"not found: try /metrics, /healthz or /readyz\n")
    if method not in ("GET", "HEAD"):
        return method, (405, TEXT, b"only GET\n")
    try:
        return method, await route()
    except Exception:
        log.exception("endpoints: %s failed", target)
        return method, (500, TEXT, b"failed: see the log\n")
