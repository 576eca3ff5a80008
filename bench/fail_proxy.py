"""An HTTP/1.1 proxy in front of Triton's HTTP endpoint that fails a fraction of
inference calls (no toxiproxy here): the "50% of backend calls fail" drill.

Every ``POST .../infer`` that reaches it is counted (what the router really sent
upstream: first attempts and fallback calls alike); a seeded coin decides whether
it is forwarded to Triton or answered ``503`` with Triton's JSON error shape, as
an overloaded or broken Triton would. Everything else (health, metadata) is
forwarded untouched. Keep-alive connections are kept: one upstream connection
per downstream one, requests relayed in order.

Runs its own event loop on a thread so synchronous launchers can start it first.
"""

from __future__ import annotations

import asyncio
import random

from bench.loop_server import LoopThreadServer

_FAIL_BODY = b'{"error":"injected failure (bench.fail_proxy)"}'


class FailProxy(LoopThreadServer):
    def __init__(self, upstream: str, fail_ratio: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.fail_ratio = fail_ratio
        self._rng = random.Random(seed)
        self.infer_calls = 0
        self.failed = 0

    def reset_counts(self) -> None:
        self.infer_calls = self.failed = 0

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        """(head, body) of one HTTP/1.1 message with a Content-Length body."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        return head, body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while (msg := await self._read_message(reader)) is not None:
                head, body = msg
                request_line = head.split(b"\r\n", 1)[0]
                if request_line.startswith(b"POST ") and b"/infer" in request_line:
                    self.infer_calls += 1
                    if self._rng.random() < self.fail_ratio:
                        self.failed += 1
                        writer.write(
                            b"HTTP/1.1 503 Service Unavailable\r\n"
                            b"Content-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(_FAIL_BODY), _FAIL_BODY)
                        )
                        await writer.drain()
                        continue
                if up is None:
                    up = await asyncio.open_connection(*self._upstream)
                up[1].write(head + body)
                await up[1].drain()
                resp = await self._read_message(up[0])
                if resp is None:
                    break
                writer.write(resp[0] + resp[1])
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if up is not None:
                up[1].close()
