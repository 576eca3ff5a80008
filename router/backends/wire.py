"""One kept-alive client connection with one exchange in flight, answered
through a future: the shape shared by the router's hand-written clients
(Triton over HTTP/1.1, Redis over RESP). No stream reader/writer layers: on
this hardware they cost ~25 us of CPU per call.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
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
        self._drain_done: Callable[[bool], None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

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
        elif self._drain_done is not None:
            self._end_drain(True)

    def fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._drain_done is not None:
            self._end_drain(False)

    def abandon(self, drain_s: float, done: Callable[[bool], None]) -> None:
        """The caller gave up on the exchange in flight: read the rest of its
        answer anyway, then call ``done(True)`` (the connection is clean again);
        ``done(False)`` if it fails or is not complete within ``drain_s`` (closed).

        Why: closing on every timeout turns a slow dependency's trouble into a
        reconnect storm against it, and a connection whose first answer is slower
        than the caller's budget (set-up behind a proxy) would never be kept.
        """
        assert self.loop is not None  # set with the connection
        self._drain_done = done
        self._drain_timer = self.loop.call_later(drain_s, self.close)

    def _end_drain(self, clean: bool) -> None:
        done, self._drain_done = self._drain_done, None
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if done is not None:
            done(clean)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        if self._drain_done is not None:
            self._end_drain(False)
