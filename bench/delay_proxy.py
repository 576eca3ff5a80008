"""A TCP proxy that can slow a connection down on demand (no netem here).

Runs its own event loop on a thread so a synchronous launcher can start it
before the services that connect through it. ``delay_s`` applies to every chunk
forwarded in either direction from the moment it is set: a slow, not dead,
dependency. ``blackhole`` swallows every chunk instead (connections stay open,
nothing comes back: a partitioned or black-holed dependency) until cleared.
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
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
