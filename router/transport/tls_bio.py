"""Server-side TLS for one connection over OpenSSL memory BIOs.

Why not the event loop's own TLS (``create_server(ssl=...)``): uvloop's TLS
transport runs every record through a general state machine (flow control,
write backlog, a read loop that ends on an exception per record) and cost the
router ~75 us of CPU per request behind Envoy, against ~20 us of OpenSSL work
(py-spy and perf, docs/benchmarks.md). A request/response protocol needs much
less: bytes in -> plaintext out, plaintext in -> records out. The protocol that
owns the socket calls ``receive`` and ``send`` and writes what they return.

Same OpenSSL, context, certificates, verification and SNI callback (certificate
rotation) as before; only the buffering around them is ours.
"""

from __future__ import annotations

import contextlib
import ssl

_MAX_READ = 256 * 1024


class ServerTls:
    """One accepted connection's TLS state (``ready`` once the handshake is done,
    ``closed`` once the peer sent close_notify)."""

    __slots__ = ("_in", "_obj", "_out", "closed", "ready")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.ready = False
        self.closed = False

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The connection's ``SSLObject`` (peer certificate, cipher, ALPN)."""
        return self._obj

    def receive(self, data: bytes) -> tuple[bytes, bytes]:
        """Feed bytes read from the socket: (the plaintext they complete, the
        bytes to write back: handshake messages, tickets, key updates).

        Raises ``ssl.SSLError`` when the handshake or a record fails; ``drain()``
        then holds the alert to send before closing."""
        self._in.write(data)
        obj = self._obj
        if not self.ready:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                return b"", self._out.read()
            self.ready = True
        chunks = []
        # Read while a record (or decrypted data) is waiting: in the usual case,
        # one request in one record, there is no further read ending in
        # SSLWantReadError.
        while self._in.pending or obj.pending():
            try:
                chunk = obj.read(_MAX_READ)
            except ssl.SSLWantReadError:
                break  # a partial record: the rest comes with the next segment
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not chunk:
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks), self._out.read()

    def send(self, plaintext: bytes) -> bytes:
        """The records carrying ``plaintext`` (after the handshake)."""
        view = memoryview(plaintext)
        while view:
            view = view[self._obj.write(view) :]
        return self._out.read()

    def close(self) -> bytes:
        """The close_notify to send before closing the socket (empty if none is
        due). The peer's own close_notify is not waited for."""
        if self.ready and not self.closed:
            # SSLWantReadError: ours is written, theirs is not awaited.
            with contextlib.suppress(ssl.SSLError):
                self._obj.unwrap()
        return self._out.read()

    def drain(self) -> bytes:
        """Whatever OpenSSL wrote and was not handed out yet (an alert)."""
        return self._out.read()
