"""A TCP proxy that can slow a connection down on demand (no netem here).

Runs its own event loop on a thread so a synchronous launcher can start it
before the services that connect through it. ``delay_s`` applies to every chunk
forwarded in either direction from the moment it is set: a slow, not dead,
dependency. ``blackhole`` swallows every chunk instead (connections stay open,
nothing comes back: a partitioned or black-holed dependency) until cleared.
``connect_delay_s`` holds each new connection that long before it reaches the
upstream (its first answer comes that much later, later ones on time): a
dependency whose connection set-up is slow, as after a partition heals.
``refuse`` closes each new connection at once (a dependency whose port is gone).
"""

from __future__ import annotations

import asyncio

from bench.loop_server import LoopThreadServer


class DelayProxy(LoopThreadServer):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.delay_s = 0.0
        self.blackhole = False
        self.connect_delay_s = 0.0
        self.refuse = False
        self.connections = 0
        """Connections accepted so far."""

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.blackhole:
                    continue
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refuse:
            writer.close()
            return
        try:
            if self.connect_delay_s:
                await asyncio.sleep(self.connect_delay_s)
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
