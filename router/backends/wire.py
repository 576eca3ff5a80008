"""One kept-alive client connection with one exchange in flight, answered
through a future: the shape shared by the router's hand-written clients
(Triton over HTTP/1.1, Redis over RESP). No stream reader/writer layers: on
this hardware they cost ~25 us of CPU per call.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")
C = TypeVar("C", bound="FutureConnection[Any]")

DRAIN_S = 1.0
"""How long a connection whose caller gave up may take to finish reading its answer."""


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
        self.born = 0.0  # the loop's time at connect (Pool's max age)
        self._drain_done: Callable[[bool], None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have its API.
        self.transport = cast(asyncio.Transport, transport)
        # The connection's loop, once: on Python 3.11 every
        # asyncio.get_running_loop() is a getpid() system call (fork check).
        self.loop = asyncio.get_running_loop()
        self.born = self.loop.time()

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


class Pool(Generic[C]):
    """A client's kept-alive connections: ``idle`` ones (taken newest first, the
    warmest) and those still reading an answer their caller gave up on.

    A caller that times out or is cancelled hands its connection to ``abandon``
    rather than closing it: it reads the late answer (up to ``drain_s``) and
    comes back to ``idle``. Closing instead would turn a slow peer's trouble into
    a reconnect per timeout against it, and would never keep a connection whose
    first answer is slower than any caller's budget.
    """

    def __init__(self, max_idle: int, drain_s: float = DRAIN_S, max_age_s: float = 0.0) -> None:
        self.idle: deque[C] = deque()
        self.draining: set[C] = set()
        self.max_idle = max_idle
        self.drain_s = drain_s
        self.max_age_s = max_age_s
        """Connections older than this are closed instead of parked (0: never),
        so new ones spread over the peers behind one address."""

    def take(self) -> C | None:
        """An idle connection still open, or None."""
        while self.idle:
            conn = self.idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def park(self, conn: C) -> None:
        """Back to ``idle`` after a complete exchange (closed if the pool is full,
        or the connection past its age)."""
        if (
            conn.usable()
            and len(self.idle) < self.max_idle
            and not (self.max_age_s and conn.loop and conn.loop.time() - conn.born > self.max_age_s)
        ):
            self.idle.append(conn)
        else:
            conn.close()

    def abandon(self, conn: C) -> None:
        """The caller gave up mid-exchange: drain, then park (or close)."""
        if conn.waiter is None:  # the answer was in before the caller left
            self.park(conn)
            return

        def done(clean: bool) -> None:
            self.draining.discard(conn)
            if clean:
                self.park(conn)

        self.draining.add(conn)
        conn.abandon(self.drain_s, done)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
        for conn in list(self.draining):
            conn.close()
