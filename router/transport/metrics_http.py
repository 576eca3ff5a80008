"""``GET /metrics`` for Prometheus, served on the router's own event loop.

A few lines of asyncio instead of prometheus_client's threaded server: the
scrape runs on the loop that owns the admission counters, breakers and caches,
so copying their state into gauges needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

log = structlog.get_logger("router.metrics")

_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    def __init__(self, host: str, port: int, render: Callable[[], bytes]) -> None:
        self._host = host
        self._port = port
        self._render = render
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            line = request.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                body, status = self._render(), b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
                status,
                _CONTENT_TYPE,
                len(body),
            )
            writer.write(head + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
