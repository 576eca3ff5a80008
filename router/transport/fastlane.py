"""Predict over HTTP/1.1: the edge's fast lane into the router.

Why: a grpc.aio server spends ~0.34 ms of CPU per unary call on this hardware
before any handler code runs (C-core HTTP/2, its polling thread, the hand-off to
the event loop); an asyncio HTTP/1.1 server with a C parser (httptools) spends
~0.03 ms (docs/benchmarks.md). The router's whole budget is 0.5 ms. Envoy
already terminates the caller's HTTP/2 (mTLS), so it forwards Predict here over
HTTP/1.1 and callers still speak gRPC and see the same statuses. The request's
content-type picks the framing (``h1_framing``): ``application/grpc`` (what the
edge sends: the caller's gRPC request as is, the status back in HTTP/1.1
trailers, so Envoy needs no filter for it) or ``application/x-protobuf`` (the
bare message, the status in headers: plain-HTTP callers, load generators, and an
edge still on ``grpc_http1_reverse_bridge`` during a rollout).

Same pipeline, identity rules, deadline, log line and metrics as the gRPC
servicer: the request goes through ``InferenceServicer.handle``. One request at
a time per connection (Envoy does not pipeline HTTP/1.1; pipelined requests are
answered in order). ``GET /healthz`` answers 200 while the router is SERVING and
503 otherwise, for Envoy's active health check; from ``drain`` on, 503 for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import httptools
import structlog
from google.protobuf.message import DecodeError

from inferline.v1 import inference_pb2
from router.errors import InferlineError, InvalidArgument
from router.logging import clear_request
from router.observability.metrics import Metrics
from router.settings import ServerSettings, TlsSettings
from router.transport.h1_framing import (
    CONTENT_TYPE_STR,
    GRPC_CONTENT_TYPES,
    error_answer,
    grpc_response,
    grpc_timeout,
    grpc_unframe,
    protobuf_response,
)
from router.transport.interceptors import record_rpc
from router.transport.servicer import InferenceServicer
from router.transport.status import WireStatus, wire_status
from router.transport.tls_bio import ServerTls
from router.transport.tls_reload import CertReloader, TlsMaterial

log = structlog.get_logger("router.rpc")

PREDICT_PATH = b"/inferline.v1.InferenceService/Predict"
METHOD = PREDICT_PATH.decode()
HEALTH_PATH = b"/healthz"
_MAX_HEADER_BYTES = 16 * 1024
_MAX_HEADERS = 100
# Raw bytes of a request's head (request line, headers, separators) before it is
# refused. httptools buffers a header line until its CRLF before any callback
# sees it, so the per-header count alone would not bound a line that never ends.
_MAX_HEAD_BYTES = _MAX_HEADER_BYTES + 4 * _MAX_HEADERS + 8 * 1024
_SWEEP_S = 15.0
"""How often the lane looks for stuck connections: a request whose bytes are
still arriving after one to two sweeps is refused (408), a connection idle for
``_IDLE_SWEEPS`` sweeps is closed (longer than Envoy's 300 s upstream idle
timeout, so Envoy closes its own first)."""
_IDLE_SWEEPS = 40
_LINGER_S = 2.0  # how long a refused connection drains the peer's bytes before closing
_REFUSAL_CODES = {b"413": "RESOURCE_EXHAUSTED", b"408": "DEADLINE_EXCEEDED"}
"""The gRPC status of a refusal by its HTTP code; INVALID_ARGUMENT otherwise."""
_HANDSHAKE_TIMEOUT_S = 10.0  # a connection that never completes its handshake is dropped


def _peer_uris(ssl_object: ssl.SSLObject | None) -> frozenset[str]:
    if ssl_object is None:
        return frozenset()
    cert = ssl_object.getpeercert() or {}
    sans: tuple[tuple[str, str], ...] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    return frozenset(str(v) for k, v in sans if k == "URI")


Reply = tuple[bytes, Callable[[], None] | None]
"""A response's bytes, and what to record once they are written (None: nothing)."""


class _Request:
    __slots__ = ("body", "close", "headers", "method", "refusal", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.close = False
        self.refusal: bytes | None = None
        """The answer of a request that could not be read: sent in its turn."""


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection; requests answered in arrival order."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._req = _Request()
        self._header_bytes = 0
        self._body_bytes = 0
        self._queue: deque[_Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._next: asyncio.Future[None] | None = None  # the parked task's wake-up
        # Once per connection (the server builds it on its loop): on Python 3.11
        # every asyncio.get_running_loop() is a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._peers: frozenset[str] | None = None
        self._tls: ServerTls | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._receiving = False  # a request's first bytes are in, its last are not
        self._in_body = False  # the current request's head is complete
        self._head_bytes = 0  # raw bytes read while no head was complete
        self._eof = False  # the peer half-closed: answer what it sent, then close
        self._done_reading = False  # the stream can no longer be parsed: ignore the rest
        self.busy = False
        self.messages = 0  # requests begun (the lane's sweep compares it between rounds)
        self.swept = 0
        self.stale_sweeps = 0

    @property
    def idle(self) -> bool:
        """No request being read, waiting its turn or being answered: the only
        state in which stopping may close the connection without losing one."""
        return not (self.busy or self._queue or self._receiving)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._lane.connections.add(self)
        context = self._lane.ssl_context
        if context is not None:
            self._tls = ServerTls(context)
            self._handshake_timer = self._loop.call_later(
                _HANDSHAKE_TIMEOUT_S, self._transport.abort
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._lane.connections.discard(self)
        self._queue.clear()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the caller is gone: stop spending on it (as gRPC does)

    def eof_received(self) -> bool:
        """The peer will send nothing more (a half-close, as ``nc -N`` or a
        shutdown(SHUT_WR) does): requests it sent in full are still answered,
        then the connection closes. True keeps the write side open for them."""
        if not (self.busy or self._queue):
            return False  # nothing to answer (a request cut short is dropped)
        self._eof = True
        return True

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is not None:
            data = self._decrypt(tls, data)
            if not data:
                return
        if self._done_reading:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, _TooLarge) as e:
            # httptools wraps what a callback raised; the limit that tripped is the cause.
            cause = e if isinstance(e, _TooLarge) else e.__context__
            if isinstance(cause, _TooLarge):
                self._reject(cause.status, cause.message)
            else:
                self._reject(b"400 Bad Request", "malformed HTTP/1.1 request")
            return
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: not spoken here. The request itself is complete
            # and queued; it is answered (not upgraded), then the connection
            # closes, since what follows it is not HTTP/1.1.
            self._stop_reading()
            if self._queue:
                self._queue[-1].close = True
            elif not self.busy:
                self.close()
            return
        if not self._in_body and self._head_bytes > _MAX_HEAD_BYTES:
            self._reject(b"431 Request Header Fields Too Large", "request headers too large")

    def _decrypt(self, tls: ServerTls, data: bytes) -> bytes:
        transport = self._transport
        assert transport is not None
        try:
            plain, reply = tls.receive(data)
        except ssl.SSLError as e:
            # A failed handshake (no or untrusted client certificate) or a bad
            # record: send the alert, drop the connection.
            log.info("fastlane.tls_failed", reason=e.reason or type(e).__name__)
            transport.write(tls.drain())
            transport.close()
            return b""
        if reply:
            transport.write(reply)
        if self._handshake_timer is not None and tls.ready:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if tls.closed:
            self.close()
        return plain

    def write(self, data: bytes) -> None:
        """Send ``data`` (encrypted on a TLS connection)."""
        transport = self._transport
        assert transport is not None
        transport.write(self._tls.send(data) if self._tls is not None else data)

    def close(self, linger: bool = False) -> None:
        """Close the connection (after close_notify on a TLS one).

        ``linger``, after a refusal: closing a socket with unread bytes in it
        resets the connection, and the peer, still sending, would lose the
        answer with it. So our end's close is sent, what still comes is read
        and dropped (``_done_reading``), and the socket closes when the peer's
        does or after ``_LINGER_S``."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError, ValueError):
                transport.write(self._tls.close())
        if not (linger and transport.can_write_eof()):
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self._loop.call_later(_LINGER_S, transport.close)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._receiving = True
        self.messages += 1

    def on_headers_complete(self) -> None:
        self._in_body = True

    def on_url(self, url: bytes) -> None:
        self._req.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called per header (a dozen from Envoy): the size check inlined.
        self._header_bytes += len(name) + len(value)
        headers = self._req.headers
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise _TooLarge(b"431 Request Header Fields Too Large", "request headers too large")
        if len(headers) >= _MAX_HEADERS:
            raise _TooLarge(b"431 Request Header Fields Too Large", "too many headers")
        headers[name.lower().decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._lane.max_body:
            raise _TooLarge(b"413 Payload Too Large", "request larger than the server accepts")
        self._req.body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        req.method = self._parser.get_method()
        req.close = not self._parser.should_keep_alive()
        self._req = _Request()
        self._header_bytes = self._body_bytes = self._head_bytes = 0
        self._receiving = self._in_body = False
        self._enqueue(req)

    def _enqueue(self, req: _Request) -> None:
        self._queue.append(req)
        wake = self._next
        if wake is not None:
            self._next = None
            if not wake.done():
                wake.set_result(None)
        elif self._task is None or self._task.done():
            self._task = self._loop.create_task(self._serve())

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > _MAX_HEADER_BYTES:
            raise _TooLarge(b"431 Request Header Fields Too Large", "request headers too large")

    def _reject(self, status: bytes, message: str) -> None:
        """Refuse a request that could not be read, then close: the stream's
        framing can no longer be trusted. The refusal waits its turn behind
        the requests read before it (pipelined answers stay in order); a
        gRPC-framed one gets its status in trailers."""
        code = _REFUSAL_CODES.get(status[:3], "INVALID_ARGUMENT")
        if self._transport is None or self._transport.is_closing() or self._done_reading:
            return
        self._stop_reading()
        grpc = self._req.headers.get("content-type") in GRPC_CONTENT_TYPES
        refused, self._req = self._req, _Request()
        refused.refusal = error_answer(WireStatus(code, message), grpc, True, status)
        refused.close = True
        self._receiving = False
        self._enqueue(refused)

    def _stop_reading(self) -> None:
        self._done_reading = True
        if self._transport is not None:
            self._transport.pause_reading()

    def timeout_request(self) -> None:
        """The sweep found a request still arriving after a whole round: refuse it."""
        if self._receiving:
            self._reject(b"408 Request Timeout", "request not received in time")

    def peers(self) -> frozenset[str]:
        if self._peers is None:
            ssl_object = self._tls.ssl_object if self._tls is not None else None
            self._peers = _peer_uris(ssl_object)
        return self._peers

    async def _serve(self) -> None:
        """The connection's one task: answers the queued requests in order, then
        parks on ``_next`` until the next one arrives. Why not a task per
        request: creating, registering and freeing one cost more than waking a
        parked one, on every request of a kept-alive connection."""
        while True:
            while self._queue:
                req = self._queue.popleft()
                self.busy = True
                try:
                    if req.refusal is not None:
                        response, done = req.refusal, None
                    else:
                        answer = self._lane.answer(req, self.peers)
                        response, done = answer if isinstance(answer, tuple) else await answer
                finally:
                    self.busy = False
                transport = self._transport
                if transport is None or transport.is_closing():
                    if done is not None:
                        done()
                    return
                if self._lane.closing and not req.close:  # say so: the peer will not reuse it
                    response = response.replace(b"\r\n", b"\r\nconnection: close\r\n", 1)
                self.write(response)
                # The request's log line and metrics once the answer is on its way:
                # they are off the caller's latency (~50 us at concurrency 1).
                if done is not None:
                    done()
                if req.close or self._lane.closing:
                    self.close(linger=self._done_reading)
                    return
            if self._eof:
                self.close()
                return
            self._next = self._loop.create_future()
            await self._next


class _TooLarge(Exception):
    def __init__(self, status: bytes, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FastLane:
    """The HTTP/1.1 listener; started and stopped by ``GrpcServer``."""

    def __init__(
        self,
        settings: ServerSettings,
        tls: TlsSettings,
        servicer: InferenceServicer,
        metrics: Metrics | None,
        reloader: CertReloader | None,
    ) -> None:
        self._settings = settings
        self._tls = tls
        self._servicer = servicer
        self._metrics = metrics
        self._reloader = reloader
        self.max_body = settings.max_receive_message_bytes
        self.connections: set[_Connection] = set()
        self._serving = False
        self.closing = False
        """Draining or stopping: ``/healthz`` answers 503 whatever ``serving``
        is set to, and every answer says ``connection: close`` and closes."""
        self.port = 0
        self.sweep_s = _SWEEP_S
        self._sweeper: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._material: TlsMaterial | None = None
        self._ssl: ssl.SSLContext | None = None

    @property
    def serving(self) -> bool:
        """What ``GET /healthz`` says (200 or 503)."""
        return self._serving

    @serving.setter
    def serving(self, value: bool) -> None:
        # Never SERVING again once draining: the canary prober sets it every
        # round, and it once put a draining router back in Envoy's rotation
        # until the router closed its kept-alive connections under a request.
        self._serving = value and not self.closing

    def drain(self) -> None:
        """Health NOT_SERVING for good, still accepting and answering (what
        ``GrpcServer.stop`` does for ``server.drain_s`` before ``stop``). A
        request that still comes in is answered with ``connection: close``,
        so the peer drops that connection itself instead of reusing it when
        this router closes it."""
        self.closing = True
        self._serving = False

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The context new connections start their handshake with (None:
        plaintext); a rotation swaps it during the handshake (``_on_hello``)."""
        return self._ssl

    # TLS: the same files and rotation as the gRPC port
    def _build_ssl(self, m: TlsMaterial) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        # load_cert_chain reads files only: write the checked material to a
        # private temporary directory (RAM-backed where /dev/shm exists).
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(dir=base) as d:
            chain, key = os.path.join(d, "chain.pem"), os.path.join(d, "key.pem")
            for path, data in ((chain, m.chain), (key, m.key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            ctx.load_cert_chain(chain, key)
        if m.client_ca is not None:
            ctx.load_verify_locations(cadata=m.client_ca.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = self._on_hello
        return ctx

    def _on_hello(self, sock: ssl.SSLObject, _name: str | None, ctx: ssl.SSLContext) -> None:
        """Each handshake (with SNI, as Envoy sends) picks up rotated files."""
        reloader = self._reloader
        if reloader is None:
            return
        reloader.poll()
        if reloader.current is not self._material:
            try:
                self._ssl = self._build_ssl(reloader.current)
                self._material = reloader.current
            except (OSError, ssl.SSLError, ValueError) as e:
                log.warning("fastlane.tls_reload_failed", error=str(e))
        if self._ssl is not None and self._ssl is not ctx:
            sock.context = self._ssl

    async def start(self, port: int) -> int:
        if self._reloader is not None:
            self._material = self._reloader.current
            self._ssl = self._build_ssl(self._material)
        loop = asyncio.get_running_loop()
        # TLS is terminated by each connection (tls_bio), not by the loop.
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self._settings.host,
            port,
            reuse_port=True,
            backlog=1024,
        )
        # uvloop's Server.sockets is a list (typeshed: a tuple): read it untyped.
        server: Any = self._server
        self.port = int(server.sockets[0].getsockname()[1])
        self._sweeper = loop.create_task(self._sweep())
        return self.port

    async def _sweep(self) -> None:
        """Refuse requests that stall mid-way and close long-idle connections
        (a request counter compared between rounds: nothing on the request path)."""
        while True:
            await asyncio.sleep(self.sweep_s)
            for conn in list(self.connections):
                if conn.messages != conn.swept:
                    conn.swept, conn.stale_sweeps = conn.messages, 0
                    continue
                conn.stale_sweeps += 1
                if conn.idle:
                    if conn.stale_sweeps >= _IDLE_SWEEPS:
                        conn.close()
                else:
                    conn.timeout_request()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace_s``),
        then close every connection. Idle kept-alive connections close at once;
        one with a request still arriving or waiting its turn is answered first
        (``connection: close``), then closed. A load balancer that stopped
        sending (health NOT_SERVING, ``drain_s``) leaves only idle ones."""
        self.drain()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            for conn in list(self.connections):
                if conn.idle and conn._transport is not None:
                    conn.close()
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn._transport is not None:
                conn._transport.abort()

    def answer(
        self, req: _Request, peers: Callable[[], frozenset[str]]
    ) -> Reply | Awaitable[Reply]:
        """The response and what to record once it is written (None: nothing):
        at once, or for Predict the coroutine that computes them (returned, not
        awaited here: one coroutine layer less on every request's path)."""
        path = req.url.partition(b"?")[0]
        if req.method == b"POST" and path == PREDICT_PATH:
            return self._predict(req, peers)
        if req.method == b"GET" and path == HEALTH_PATH:
            status = b"200 OK" if self.serving else b"503 Service Unavailable"
            return b"HTTP/1.1 %s\r\ncontent-length: 0\r\n\r\n" % status, None
        ws = WireStatus("UNIMPLEMENTED", "unknown method")
        grpc = req.headers.get("content-type") in GRPC_CONTENT_TYPES
        return error_answer(ws, grpc), None

    async def _predict(self, req: _Request, peers: Callable[[], frozenset[str]]) -> Reply:
        """Predict's response (an error as the module docstring says), and its
        log line and metrics to record once it is written."""
        clear_request()
        t0 = time.monotonic()
        content_type = req.headers.get("content-type")
        grpc = content_type in GRPC_CONTENT_TYPES
        try:
            body = b"".join(req.body)
            if grpc:
                encoding = req.headers.get("grpc-encoding")
                body = grpc_unframe(body, encoding, self.max_body)
            elif content_type != CONTENT_TYPE_STR:
                raise InvalidArgument(
                    "content-type must be application/grpc or application/x-protobuf"
                )
            try:
                request = inference_pb2.PredictRequest.FromString(body)
            except DecodeError as e:
                raise InvalidArgument("request body is not a valid protobuf message") from e
            timeout = grpc_timeout(req.headers.get("grpc-timeout"))
            resp = await self._servicer.handle(request, req.headers, peers, timeout)
            data = resp.SerializeToString()
            response = grpc_response(data) if grpc else protobuf_response(b"200 OK", data)
            code = "OK"
        except InferlineError as e:
            response, code = error_answer(wire_status(e), grpc), e.code.name
        except asyncio.CancelledError:
            # No answer will be written: record now (the caller went away).
            record_rpc(self._metrics, METHOD, "CANCELLED", time.monotonic() - t0)
            raise
        except Exception:
            log.exception("rpc.unhandled_error", method=METHOD)
            ws, code = WireStatus("INTERNAL", "internal error"), "INTERNAL"
            response = error_answer(ws, grpc)
        return response, partial(record_rpc, self._metrics, METHOD, code, time.monotonic() - t0)
