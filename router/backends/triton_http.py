"""Triton inference over HTTP/1.1 with the binary tensor extension.

Why not gRPC here: a grpc.aio unary call costs ~0.33 ms of router CPU per
request on this hardware (the whole router budget is 0.5 ms); the same
inference over a kept-alive HTTP/1.1 connection with binary tensors costs
~0.12 ms and is ~0.25 ms faster end to end (docs/benchmarks.md). The exchange
is one fixed request shape, so a small purpose-built client on an asyncio
protocol is enough: a pool of kept-alive connections, one request in flight per
connection, the caller's remaining deadline on the whole exchange, and errors
mapped by HTTP status code.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
from opentelemetry import trace

from router.backends.wire import FutureConnection, Pool, WireError
from router.errors import Code, DeadlineExceeded, InferlineError, Unavailable

_MAX_IDLE = 64
_MAX_HEADER = 16 * 1024
_MAX_BODY = 16 * 1024 * 1024


Answer = tuple[int, dict[bytes, bytes], bytes]
"""(HTTP status, lower-cased headers, body)"""


class _Conn(FutureConnection[Answer]):
    """One kept-alive connection to Triton's HTTP endpoint."""

    peer = "Triton"

    def __init__(self) -> None:
        super().__init__()
        self._head: tuple[int, dict[bytes, bytes], int] | None = None  # status, headers, body at

    def parse(self) -> None:
        buf = self.buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEADER:
                    raise ProtocolError("response header too large")
                return
            status, headers = _parse_head(bytes(buf[:end]))
            length = int(headers.get(b"content-length", b"-1"))
            if length < 0 or length > _MAX_BODY:
                raise ProtocolError("response without a usable Content-Length")
            self._head = (status, headers, end + 4)
        status, headers, at = self._head
        length = int(headers[b"content-length"])
        if len(buf) < at + length:
            return
        body = bytes(buf[at : at + length])
        del buf[: at + length]
        self._head = None
        self.resolve((status, headers, body))


class ProtocolError(WireError):
    """Triton's answer could not be parsed: the connection is dropped."""


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError("bad status line")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers


def map_http_status(status: int) -> InferlineError:
    """Map Triton's HTTP status to a caller-visible error (by code, not text)."""
    if status == 400:
        # The router built the tensor: a rejection is our bug, not the caller's.
        return InferlineError("internal error", code=Code.INTERNAL)
    # 404 (version not loaded), 429, 500, 503...: the model server cannot serve it.
    return Unavailable("model server unavailable")


def _traceparent() -> bytes:
    """The current span as a W3C traceparent header, so Triton's own tracing
    (``--trace-config mode=opentelemetry``) continues the request's trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return b""
    return b"traceparent: 00-%032x-%016x-%02x\r\n" % (
        ctx.trace_id,
        ctx.span_id,
        int(ctx.trace_flags),
    )


def inference_header(n: int, f: int, input_name: str, output_name: str) -> bytes:
    """The JSON inference header of an [n, f] FP32 request whose input and output
    travel as binary data after it (Triton's binary tensor extension)."""
    body = {
        "inputs": [
            {
                "name": input_name,
                "shape": [n, f],
                "datatype": "FP32",
                "parameters": {"binary_data_size": n * f * 4},
            }
        ],
        "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
    }
    return json.dumps(body, separators=(",", ":")).encode()


_FP32_OUTPUT = b'"datatype":"FP32"'
_NUMERIC: dict[str, str] = {
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
}


def decode_scores(headers: dict[bytes, bytes], body: bytes, n: int) -> np.ndarray:
    """The binary output tensor after the JSON header, read as the datatype
    the header declares (FP32, the usual case, without parsing the JSON).
    Anything unreadable is the model server's fault: UNAVAILABLE, so the
    fallback ladder answers instead."""
    try:
        json_len = int(headers.get(b"inference-header-content-length", b"0"))
        if not 0 <= json_len <= len(body):
            raise ValueError("inference header past the body")
        if _FP32_OUTPUT in body[:json_len]:
            dtype = "<f4"
        else:
            (output,) = json.loads(body[:json_len])["outputs"]
            dtype = _NUMERIC[output["datatype"]]
        out = np.frombuffer(body, dtype=dtype, offset=json_len)
    except (ValueError, KeyError, TypeError) as e:
        raise Unavailable("model returned an invalid result") from e
    if out.size != n:
        raise Unavailable("model returned an invalid result")
    return out if dtype == "<f4" else out.astype(np.float32)


class TritonHttpClient:
    """Minimal keep-alive HTTP/1.1 client for Triton's v2 infer endpoint."""

    def __init__(self, host: str, port: int, max_age_s: float = 0.0) -> None:
        self._host = host
        self._port = port
        self.pool: Pool[_Conn] = Pool(_MAX_IDLE, max_age_s=max_age_s)
        self._framings: dict[tuple[str, int, int, int], tuple[bytes, bytes]] = {}

    async def _acquire(self) -> _Conn:
        conn = self.pool.take()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self._host, self._port)
        return conn

    def _framing(
        self, model: str, version: int, n: int, f: int, inp: str, out: str
    ) -> tuple[bytes, bytes]:
        """The request's bytes before and after its traceparent line, which
        depend only on the model, version and tensor shape: built once per shape
        (the inference header, the request line, both lengths), not per request."""
        key = (model, version, n, f)
        cached = self._framings.get(key)
        if cached is None:
            header = inference_header(n, f, inp, out)
            cached = (
                b"POST /v2/models/%s/versions/%d/infer HTTP/1.1\r\n"
                b"Host: triton\r\nContent-Type: application/octet-stream\r\n"
                % (model.encode(), version),
                b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
                % (len(header), len(header) + n * f * 4, header),
            )
            if len(self._framings) < 4096:
                self._framings[key] = cached
        return cached

    async def infer(
        self,
        model: str,
        version: int,
        input_name: str,
        output_name: str,
        batch: np.ndarray,
        timeout_s: float,
    ) -> np.ndarray:
        n, f = batch.shape
        head, tail = self._framing(model, version, n, f, input_name, output_name)
        payload = np.ascontiguousarray(batch, dtype=np.float32).tobytes()
        request = b"".join((head, _traceparent(), tail, payload))
        conn: _Conn | None = None
        timer: asyncio.TimerHandle | None = None
        try:
            idle = self.pool.idle
            if idle and idle[-1].usable():
                conn = idle.pop()
            else:
                # A new connection (rare): connecting spends the same budget as
                # the exchange, so a slow connect cannot double the timeout.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout_s
                async with asyncio.timeout_at(deadline):
                    conn = await self._acquire()
                timeout_s = deadline - loop.time()
            waiter = conn.send(request)
            assert conn.loop is not None  # set with the connection
            timer = conn.loop.call_later(timeout_s, _expire, waiter)
            status, headers, body = await waiter
        except TimeoutError as e:
            if conn is not None:
                self.pool.abandon(conn)  # Triton still answers: read it, keep the connection
            raise DeadlineExceeded("deadline exceeded during inference") from e
        except (OSError, EOFError, ValueError, ProtocolError) as e:
            if conn is not None:
                conn.close()
            raise Unavailable("model server unavailable") from e
        except asyncio.CancelledError:  # the caller left: the answer still comes
            if conn is not None:
                self.pool.abandon(conn)
            raise
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if headers.get(b"connection", b"").lower() == b"close":
            conn.close()
        else:
            self.pool.park(conn)
        if status != 200:
            raise map_http_status(status)
        return decode_scores(headers, body, n)

    async def close(self) -> None:
        self.pool.close()


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
