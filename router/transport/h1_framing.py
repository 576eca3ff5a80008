"""The fast lane's two wire framings of Predict over HTTP/1.1 (router/transport/fastlane.py).

- ``application/grpc``: gRPC's own framing: a length-prefixed message in the
  body, the answer chunked with the status in HTTP/1.1 trailers. What the edge
  sends: Envoy forwards the caller's request unchanged and passes the trailers
  on (``enable_trailers`` on its fast-lane cluster).
- ``application/x-protobuf``: the bare message; an error is an empty body with
  the status in ``x-inferline-grpc-*`` headers and a rough HTTP code.

Bytes only: no sockets, no pipeline.
"""

from __future__ import annotations

import base64
import urllib.parse
import zlib

from router.errors import Code, InferlineError, InvalidArgument, Unimplemented
from router.transport.status import WireStatus

CONTENT_TYPE_STR = "application/x-protobuf"
GRPC_CONTENT_TYPES = frozenset({"application/grpc", "application/grpc+proto"})
STATUS_HEADER = "x-inferline-grpc-status"
_GRPC_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n"
# A rough HTTP code per gRPC status, for plain-HTTP readers and logs; the gRPC
# status itself travels in STATUS_HEADER.
_HTTP_CODES: dict[str, bytes] = {
    "INVALID_ARGUMENT": b"400 Bad Request",
    "UNAUTHENTICATED": b"401 Unauthorized",
    "PERMISSION_DENIED": b"403 Forbidden",
    "NOT_FOUND": b"404 Not Found",
    "UNIMPLEMENTED": b"404 Not Found",
    "FAILED_PRECONDITION": b"412 Precondition Failed",
    "RESOURCE_EXHAUSTED": b"429 Too Many Requests",
    "UNAVAILABLE": b"503 Service Unavailable",
    "DEADLINE_EXCEEDED": b"408 Request Timeout",
    "CANCELLED": b"499 Client Closed Request",
}
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout(value: str | None) -> float | None:
    """Seconds in a ``grpc-timeout`` header (``100m``, ``5S``...); None if absent
    or malformed (the router's default deadline applies)."""
    if not value or len(value) > 9 or value[-1] not in _TIMEOUT_UNITS:
        return None
    digits = value[:-1]
    # ASCII only: str.isdigit() also accepts e.g. "²", which int() refuses.
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) * _TIMEOUT_UNITS[value[-1]]


def protobuf_response(status: bytes, body: bytes, extra: bytes = b"", close: bool = False) -> bytes:
    """An answer in the ``application/x-protobuf`` framing: ``body`` with
    ``extra`` header lines (each ending in CRLF)."""
    return b"".join(
        (
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: application/x-protobuf\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n" if close else b"\r\n",
            extra,
            b"\r\n",
            body,
        )
    )


def _grpc_message(message: str) -> bytes:
    return urllib.parse.quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode()  # gRPC's encoding


def error_response(ws: WireStatus, close: bool = False, http_status: bytes | None = None) -> bytes:
    """An error in the ``application/x-protobuf`` framing (module docstring)."""
    extra = b"%s: %d\r\nx-inferline-grpc-message: %s\r\n" % (
        STATUS_HEADER.encode(),
        ws.number,
        _grpc_message(ws.message),
    )
    if ws.details is not None:
        extra += b"x-inferline-grpc-status-details-bin: %s\r\n" % base64.b64encode(
            ws.details
        ).rstrip(b"=")
    if ws.retry_after is not None:
        extra += b"retry-after: %d\r\n" % ws.retry_after
    if http_status is None:
        http_status = _HTTP_CODES.get(ws.code, b"500 Internal Server Error")
    return protobuf_response(http_status, b"", extra, close)


def error_answer(
    ws: WireStatus, grpc: bool, close: bool = False, http_status: bytes | None = None
) -> bytes:
    """An error in the request's framing: gRPC's (``grpc``) or the bare one's."""
    return grpc_error(ws, close) if grpc else error_response(ws, close, http_status)


def grpc_response(message: bytes) -> bytes:
    """A success in the ``application/grpc`` framing: one chunk holding the
    length-prefixed message, then ``grpc-status: 0`` as a trailer."""
    n = len(message)
    return b"".join(
        (
            _GRPC_HEAD,
            b"\r\n%x\r\n\x00" % (n + 5),
            n.to_bytes(4, "big"),
            message,
            b"\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )
    )


def grpc_error(ws: WireStatus, close: bool = False) -> bytes:
    """An error in the ``application/grpc`` framing: no message, the status in
    trailers (``retry-after`` stays a header: initial metadata for the caller)."""
    head = _GRPC_HEAD + (b"connection: close\r\n" if close else b"")
    if ws.retry_after is not None:
        head += b"retry-after: %d\r\n" % ws.retry_after
    trailers = b"grpc-status: %d\r\ngrpc-message: %s\r\n" % (
        ws.number,
        _grpc_message(ws.message),
    )
    if ws.details is not None:
        trailers += b"grpc-status-details-bin: %s\r\n" % base64.b64encode(ws.details).rstrip(b"=")
    return b"".join((head, b"\r\n0\r\n", trailers, b"\r\n"))


# gRPC message encodings the fast lane reads (as the gRPC port does); answers
# are never compressed. zlib's wbits: gzip framing, zlib framing.
_GRPC_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def grpc_unframe(data: bytes, encoding: str | None, limit: int) -> bytes:
    """The one message of a unary gRPC request body (5-byte prefix: compressed
    flag, big-endian length), decompressed when the flag says so, refused
    beyond ``limit`` bytes once decompressed."""
    if len(data) < 5 or len(data) != 5 + int.from_bytes(data[1:5], "big"):
        raise InvalidArgument("request body is not one length-prefixed gRPC message")
    if data[0] == 0:
        return data[5:]
    wbits = _GRPC_ENCODINGS.get(encoding or "")
    if data[0] != 1 or wbits is None:
        raise Unimplemented(f"message encoding {encoding!r} is not supported")
    inflate = zlib.decompressobj(wbits)
    try:
        message = inflate.decompress(data[5:], limit + 1)
    except zlib.error as e:
        raise InvalidArgument(f"request message is not valid {encoding}") from e
    if len(message) > limit or inflate.unconsumed_tail:
        raise InferlineError("request larger than the server accepts", code=Code.RESOURCE_EXHAUSTED)
    if not inflate.eof or inflate.unused_data:
        # Cut short (a request with candidates missing must not be scored) or
        # followed by bytes that belong to no stream.
        raise InvalidArgument(f"request message is not valid {encoding}")
    return message
