"""One kept-alive client connection with one exchange in flight, answered
through a future: the shape shared by the router's hand-written clients
(Triton over HTTP/1.1, Redis over RESP). No stream reader/writer layers: on
this hardware they cost ~25 us of CPU per call.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class WireError(Exception):
    """The peer's bytes could not be parsed: the connection is dropped."""


class FutureConnection(asyncio.Protocol, Generic[T], metaclass=abc.ABCMeta):
    """Subclasses parse ``self.buf`` in ``parse`` and call ``resolve`` with the
    answer; raising WireError or ValueError there fails the exchange and closes."""

    peer = "peer"

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiter: asyncio.Future[T] | None = None
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have its API.
        self.transport = cast(asyncio.Transport, transport)
        # The connection's loop, once: on Python 3.11 every
        # asyncio.get_running_loop() is a getpid() system call (fork check).
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(ConnectionResetError(f"connection to {self.peer} closed"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: a stray byte means a broken exchange
            self.close()
            return
        self.buf += data
        try:
            self.parse()
        except (WireError, ValueError) as e:
            self.fail(e)
            self.close()

    @abc.abstractmethod
    def parse(self) -> None:
        """Consume what ``buf`` holds of the current answer."""

    def send(self, payload: bytes) -> asyncio.Future[T]:
        """Write one exchange and return the future its answer resolves."""
        transport, loop = self.transport, self.loop
        assert transport is not None and loop is not None
        waiter: asyncio.Future[T] = loop.create_future()
        self.waiter = waiter
        transport.write(payload)
        return waiter

    def resolve(self, answer: T) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
