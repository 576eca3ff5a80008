"""The HTTP/1.1 fast lane on a real asyncio server, spoken to over raw sockets.

The servicer behind it is a stand-in (the pipeline has its own tests; the full
chain through Envoy is in tests/integration/test_fastlane.py):
this checks both framings (bare protobuf with status headers, and gRPC framing
with status trailers), limits and ordering."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from inferline.v1 import inference_pb2
from router.errors import NotFound, ResourceExhausted
from router.logging import bind_request, request_fields
from router.settings import ServerSettings, TlsSettings
from router.transport.fastlane import FastLane
from router.transport.h1_framing import grpc_timeout

PREDICT = "/inferline.v1.InferenceService/Predict"
_T = TypeVar("_T")


class _Servicer:
    """Answers by request_id; records the deadline and peers it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float | None]] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.contexts: list[dict[str, Any]] = []

    async def handle(
        self,
        request: inference_pb2.PredictRequest,
        metadata: Mapping[str, str],
        peers: Callable[[], frozenset[str]],
        time_remaining: float | None,
    ) -> inference_pb2.PredictResponse:
        self.seen.append((request.request_id, time_remaining))
        match request.request_id:
            case "not-found":
                raise NotFound("unknown model 'x'")
            case "quota":
                raise ResourceExhausted("over quota", retry_after_s=2.0, quota_subject="tenant:a")
            case "bug":
                raise KeyError("secret internal detail /etc/passwd")
            case "slow":
                await asyncio.sleep(0.2)
            case "bind":
                bind_request(leak="from an earlier request")
        self.tasks.append(asyncio.current_task())
        self.contexts.append(dict(request_fields()))
        return inference_pb2.PredictResponse(
            request_id=request.request_id, trace_id=metadata.get("x-echo", "")
        )


@pytest.fixture
async def lane() -> AsyncIterator[tuple[FastLane, _Servicer]]:
    servicer = _Servicer()
    settings = ServerSettings(port=0, bridge_port=0, max_receive_message_bytes=1024)
    lane = FastLane(settings, TlsSettings(), servicer, None, None)  # type: ignore[arg-type]
    await lane.start(0)
    lane.serving = True
    yield lane, servicer
    await lane.stop(0.5)


def _post(body: bytes, *, headers: dict[str, str] | None = None, path: str = PREDICT) -> bytes:
    h = {"content-type": "application/x-protobuf", "content-length": str(len(body))}
    h.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return f"POST {path} HTTP/1.1\r\nhost: router\r\n{head}\r\n".encode() + body


def _predict(request_id: str, **headers: str) -> bytes:
    body = inference_pb2.PredictRequest(request_id=request_id).SerializeToString()
    return _post(body, headers=headers)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def _exchange(lane: FastLane, *payloads: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    return await _exchange_with(_read_response, lane, payloads)


async def _exchange_with(
    read: Callable[[asyncio.StreamReader], Awaitable[_T]],
    lane: FastLane,
    payloads: tuple[bytes, ...],
) -> list[_T]:
    """Send ``payloads`` on one connection (pipelined), read one answer each with ``read``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lane.port)
    try:
        writer.write(b"".join(payloads))
        return [await read(reader) for _ in payloads]
    finally:
        writer.close()


async def test_predict_answers_protobuf(lane: Any) -> None:
    server, servicer = lane
    [(status, headers, body)] = await _exchange(server, _predict("r1", **{"x-echo": "hi"}))
    assert status == 200
    assert headers["content-type"] == "application/x-protobuf"
    resp = inference_pb2.PredictResponse.FromString(body)
    assert (resp.request_id, resp.trace_id) == ("r1", "hi")
    assert servicer.seen == [("r1", None)]


async def test_a_half_closed_connection_still_gets_its_answers(lane: Any) -> None:
    """A client that sends its requests and then shuts its sending side (a
    half-close) gets every complete request answered, in order, then the close;
    one cut short by the half-close is dropped without an answer."""
    server, servicer = lane
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        cut_short = _predict("r-cut")[:-3]
        writer.write(_predict("r-slow-1") + _predict("slow") + cut_short)
        writer.write_eof()
        answers = [await _read_response(reader) for _ in range(2)]
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
    finally:
        writer.close()
    assert [a[0] for a in answers] == [200, 200]
    ids = [inference_pb2.PredictResponse.FromString(a[2]).request_id for a in answers]
    assert ids == ["r-slow-1", "slow"]
    assert [rid for rid, _ in servicer.seen] == ["r-slow-1", "slow"]


async def test_a_half_close_with_nothing_to_answer_closes(lane: Any) -> None:
    server, _ = lane
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_predict("r-cut")[:-3])
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_grpc_timeout_header_is_the_deadline(lane: Any) -> None:
    server, servicer = lane
    await _exchange(server, _predict("r2", **{"grpc-timeout": "250m"}))
    assert servicer.seen == [("r2", pytest.approx(0.25))]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250m", 0.25), ("5S", 5.0), ("1M", 60.0), ("100u", 1e-4), ("7n", 7e-9), ("2H", 7200.0)],
)
def test_grpc_timeout_units(value: str, seconds: float) -> None:
    assert grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [None, "", "m", "12", "1.5S", "-1S", "1234567890S", "5x", " 5S", "\xb2S", "\u0661\u0662S"],
)
def test_grpc_timeout_malformed_means_default(value: str | None) -> None:
    assert grpc_timeout(value) is None


async def test_a_non_ascii_grpc_timeout_is_ignored_not_an_internal_error(lane: Any) -> None:
    """Header bytes are read as latin-1: b"\xb2" is "²", a digit to str.isdigit()."""
    server, servicer = lane
    raw = _predict("r3", **{"grpc-timeout": "XS"}).replace(b": XS\r\n", b": \xb2S\r\n")
    [(status, _, body)] = await _exchange(server, raw)
    assert status == 200
    assert inference_pb2.PredictResponse.FromString(body).request_id == "r3"
    assert servicer.seen == [("r3", None)]  # the router's default deadline


def _status(headers: dict[str, str]) -> tuple[int, str]:
    return (
        int(headers["x-inferline-grpc-status"]),
        urllib.parse.unquote(headers["x-inferline-grpc-message"]),
    )


async def test_pipeline_error_keeps_code_and_public_message(lane: Any) -> None:
    [(status, headers, body)] = await _exchange(lane[0], _predict("not-found"))
    assert status == 404 and body == b""
    assert headers["content-type"] == "application/x-protobuf"
    assert _status(headers) == (code_pb2.NOT_FOUND, "unknown model 'x'")


async def test_quota_error_carries_details_and_retry_after(lane: Any) -> None:
    [(status, headers, _)] = await _exchange(lane[0], _predict("quota"))
    assert status == 429 and headers["retry-after"] == "2"
    assert _status(headers) == (code_pb2.RESOURCE_EXHAUSTED, "over quota")
    raw = headers["x-inferline-grpc-status-details-bin"]
    st = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    quota = error_details_pb2.QuotaFailure()
    retry = error_details_pb2.RetryInfo()
    assert st.details[0].Unpack(retry) and retry.retry_delay.seconds == 2
    assert st.details[1].Unpack(quota) and quota.violations[0].subject == "tenant:a"


async def test_unexpected_error_is_internal_and_generic(lane: Any) -> None:
    [(status, headers, _)] = await _exchange(lane[0], _predict("bug"))
    assert status == 500
    assert _status(headers) == (code_pb2.INTERNAL, "internal error")
    assert "passwd" not in str(headers)


async def test_bad_bodies_are_invalid_argument(lane: Any) -> None:
    garbage = _post(b"\xff\xff\xff")
    wrong_type = _post(b"", headers={"content-type": "application/json"})
    results = await _exchange(lane[0], garbage, wrong_type)
    for status, headers, _ in results:
        assert status == 400
        assert _status(headers)[0] == code_pb2.INVALID_ARGUMENT


async def test_pipelined_requests_answered_in_order(lane: Any) -> None:
    server, _ = lane
    results = await _exchange(server, _predict("slow"), _predict("fast"), _predict("not-found"))
    ids = [
        inference_pb2.PredictResponse.FromString(b).request_id if s == 200 else s
        for s, _, b in results
    ]
    assert ids == ["slow", "fast", 404]


async def test_oversized_body_is_refused_and_connection_closed(lane: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lane[0].port)
    writer.write(_post(b"x" * 4096))
    status, headers, _ = await _read_response(reader)
    assert status == 413 and headers["connection"] == "close"
    assert _status(headers)[0] == code_pb2.RESOURCE_EXHAUSTED
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    writer.close()


async def test_malformed_http_is_refused(lane: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lane[0].port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, _ = await _read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    writer.close()


async def test_unknown_path_is_unimplemented(lane: Any) -> None:
    [(status, headers, _)] = await _exchange(lane[0], _post(b"", path="/x.Y/Z"))
    assert status == 404 and _status(headers)[0] == code_pb2.UNIMPLEMENTED


async def test_health_follows_serving(lane: Any) -> None:
    server, _ = lane
    get = b"GET /healthz HTTP/1.1\r\nhost: router\r\n\r\n"
    assert (await _exchange(server, get))[0][0] == 200
    server.serving = False
    assert (await _exchange(server, get))[0][0] == 503


async def test_stop_lets_in_flight_finish(lane: Any) -> None:
    server, _ = lane
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(_predict("slow"))
    await asyncio.sleep(0.05)  # in flight
    stopping = asyncio.create_task(server.stop(2.0))
    status, headers, body = await _read_response(reader)
    await stopping
    assert status == 200 and headers.get("connection") == "close"
    assert inference_pb2.PredictResponse.FromString(body).request_id == "slow"
    writer.close()


async def test_every_answer_is_recorded_after_it_is_written() -> None:
    """The request's metrics (and log line) are recorded once its answer is on
    the wire, pipelined requests included, errors with their gRPC code."""
    from router.observability.metrics import Metrics

    metrics = Metrics(lambda: (frozenset(), frozenset()))
    settings = ServerSettings(port=0, bridge_port=0)
    lane = FastLane(settings, TlsSettings(), _Servicer(), metrics, None)  # type: ignore[arg-type]
    await lane.start(0)
    lane.serving = True
    try:
        got = await _exchange(lane, _predict("a"), _predict("not-found"), _predict("b"))
        assert [status for status, _, _ in got] == [200, 404, 200]
        assert [h.get("x-inferline-grpc-status") for _, h, _ in got] == [None, "5", None]
        await asyncio.sleep(0)
        text = metrics.render().decode()
        ok = [ln for ln in text.splitlines() if ln.startswith("inferline_requests_total")]
        assert any('code="OK"' in ln and ln.endswith(" 2.0") for ln in ok), ok
        assert any('code="NOT_FOUND"' in ln and ln.endswith(" 1.0") for ln in ok), ok
    finally:
        await lane.stop(0.5)


async def test_kept_alive_connection_is_served_by_one_parked_task(lane: Any) -> None:
    """A connection's requests, one after another with idle gaps, health checks
    between, are answered by one task that parks in between, and no request
    sees the log context of the one before it."""
    server, servicer = lane
    get = b"GET /healthz HTTP/1.1\r\nhost: router\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for payload, want in (
            (_predict("bind"), "bind"),
            (get, None),
            (_predict("r2"), "r2"),
            (_predict("r3"), "r3"),
        ):
            writer.write(payload)
            status, _, body = await _read_response(reader)
            assert status == 200
            if want is not None:
                assert inference_pb2.PredictResponse.FromString(body).request_id == want
            await asyncio.sleep(0.02)  # idle: the task parks
    finally:
        writer.close()
    assert len(servicer.tasks) == 3 and len(set(map(id, servicer.tasks))) == 1
    assert [("leak" in ctx) for ctx in servicer.contexts] == [True, False, False]
    [task] = {id(t): t for t in servicer.tasks}.values()
    assert task is not None
    for _ in range(100):  # the peer closed: the parked task ends with its connection
        if task.done() and not server.connections:
            break
        await asyncio.sleep(0.01)
    assert task.done() and not server.connections


async def test_each_connection_has_its_own_task(lane: Any) -> None:
    server, servicer = lane
    await asyncio.gather(*(_exchange(server, _predict(f"c{i}")) for i in range(3)))
    assert len({id(t) for t in servicer.tasks}) == 3


async def test_stop_answers_a_request_still_arriving_and_closes_idle_ones(lane: Any) -> None:
    """Stopping closes idle kept-alive connections at once, but one whose request
    has begun to arrive is answered (``connection: close``) before it closes:
    closing it would lose a request the peer has already sent."""
    server, _ = lane
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    raw = _predict("late")
    writer.write(raw[:-3])  # the head and part of the body
    await writer.drain()
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(server.stop(2.0))
    assert await asyncio.wait_for(idle_reader.read(), 1.0) == b""  # closed at once
    writer.write(raw[-3:])
    status, headers, body = await _read_response(reader)
    await stopping
    assert status == 200 and headers.get("connection") == "close"
    assert inference_pb2.PredictResponse.FromString(body).request_id == "late"
    assert await asyncio.wait_for(reader.read(), 1.0) == b""
    for w in (writer, idle_writer):
        w.close()


# gRPC's own framing over HTTP/1.1 (what the edge sends): the request body is one
# length-prefixed message, sent chunked as Envoy does; the answer is chunked
# with the status in trailers.


def _grpc_post(message: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    n = len(message) if length is None else length
    body = bytes([flag]) + n.to_bytes(4, "big") + message
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nhost: router\r\ncontent-type: application/grpc\r\n"
        "te: trailers\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head.encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def _grpc_predict(request_id: str) -> bytes:
    return _grpc_post(inference_pb2.PredictRequest(request_id=request_id).SerializeToString())


async def _read_grpc(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes | None, dict[str, str]]:
    """(HTTP status, headers, the one message or None, trailers) of a chunked answer."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(
        (k.strip().lower(), v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
    )
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    body = b""
    while (size := int((await reader.readline()).strip(), 16)) > 0:
        body += await reader.readexactly(size)
        assert await reader.readexactly(2) == b"\r\n"
    trailers = {}
    while (line := await reader.readline()) != b"\r\n":
        k, v = line.decode("latin-1").split(":", 1)
        trailers[k.strip().lower()] = v.strip()
    message = None
    if body:
        assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
        message = body[5:]
    return int(lines[0].split()[1]), headers, message, trailers


async def _grpc_exchange(
    lane: FastLane, *payloads: bytes
) -> list[tuple[int, dict[str, str], bytes | None, dict[str, str]]]:
    return await _exchange_with(_read_grpc, lane, payloads)


def _trailer_status(trailers: dict[str, str]) -> tuple[int, str]:
    return int(trailers["grpc-status"]), urllib.parse.unquote(trailers["grpc-message"])


async def test_grpc_framed_predict_answers_with_status_trailer(lane: Any) -> None:
    server, servicer = lane
    got = await _grpc_exchange(server, _grpc_predict("g1"), _grpc_predict("g2"))
    for (status, headers, message, trailers), want in zip(got, ("g1", "g2"), strict=True):
        assert status == 200 and headers["content-type"] == "application/grpc"
        assert message is not None
        assert inference_pb2.PredictResponse.FromString(message).request_id == want
        assert trailers == {"grpc-status": "0"}
    assert [rid for rid, _ in servicer.seen] == ["g1", "g2"]


async def test_grpc_framed_errors_carry_status_in_trailers(lane: Any) -> None:
    server, _ = lane
    missing, quota, bug = await _grpc_exchange(
        server, _grpc_predict("not-found"), _grpc_predict("quota"), _grpc_predict("bug")
    )
    for status, headers, message, _ in (missing, quota, bug):
        # gRPC callers read the trailer, not the HTTP code, and no message is sent.
        assert status == 200 and headers["content-type"] == "application/grpc"
        assert message is None
    assert _trailer_status(missing[3]) == (code_pb2.NOT_FOUND, "unknown model 'x'")
    assert _trailer_status(quota[3]) == (code_pb2.RESOURCE_EXHAUSTED, "over quota")
    assert quota[1]["retry-after"] == "2"
    raw = quota[3]["grpc-status-details-bin"]
    st = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
    retry = error_details_pb2.RetryInfo()
    assert st.details[0].Unpack(retry) and retry.retry_delay.seconds == 2
    assert _trailer_status(bug[3]) == (code_pb2.INTERNAL, "internal error")
    assert "passwd" not in str(bug)


async def test_bad_grpc_frames_are_refused_with_a_status(lane: Any) -> None:
    server, servicer = lane
    message = inference_pb2.PredictRequest(request_id="x").SerializeToString()
    short, long, compressed, garbage, empty = await _grpc_exchange(
        server,
        _grpc_post(message, length=len(message) - 1),
        _grpc_post(message, length=len(message) + 1),
        _grpc_post(message, flag=1),
        _grpc_post(b"\xff\xff\xff"),
        b"POST %s HTTP/1.1\r\nhost: r\r\ncontent-type: application/grpc\r\n"
        b"content-length: 0\r\n\r\n" % PREDICT.encode(),
    )
    for _, _, _, trailers in (short, long, garbage, empty):
        assert int(trailers["grpc-status"]) == code_pb2.INVALID_ARGUMENT
    assert int(compressed[3]["grpc-status"]) == code_pb2.UNIMPLEMENTED
    assert servicer.seen == []  # none reached the pipeline


async def test_oversized_grpc_body_is_refused_in_trailers_and_closed(lane: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lane[0].port)
    writer.write(_grpc_post(b"x" * 4096))
    status, headers, message, trailers = await _read_grpc(reader)
    assert status == 200 and headers["connection"] == "close" and message is None
    assert int(trailers["grpc-status"]) == code_pb2.RESOURCE_EXHAUSTED
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    writer.close()


async def test_stop_closes_a_grpc_framed_answer_cleanly(lane: Any) -> None:
    server, _ = lane
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(_grpc_post(inference_pb2.PredictRequest(request_id="slow").SerializeToString()))
    await asyncio.sleep(0.05)  # in flight
    stopping = asyncio.create_task(server.stop(2.0))
    status, headers, message, trailers = await _read_grpc(reader)
    await stopping
    assert status == 200 and headers.get("connection") == "close"
    assert message is not None and trailers == {"grpc-status": "0"}
    assert inference_pb2.PredictResponse.FromString(message).request_id == "slow"
    writer.close()


def _grpc_compressed(request_id: str, encoding: str, data: bytes | None = None) -> bytes:
    """A compressed gRPC request (flag 1) with its ``grpc-encoding`` header."""
    import gzip
    import zlib

    message = inference_pb2.PredictRequest(request_id=request_id).SerializeToString()
    if data is None:
        data = gzip.compress(message) if encoding == "gzip" else zlib.compress(message)
    raw = _grpc_post(data, flag=1)
    return raw.replace(b"te: trailers\r\n", f"grpc-encoding: {encoding}\r\n".encode(), 1)


async def test_compressed_grpc_requests_are_read_as_the_grpc_port_reads_them(lane: Any) -> None:
    """gzip and deflate messages are decompressed (answers stay uncompressed); an
    encoding the lane does not speak is UNIMPLEMENTED, a corrupt one
    INVALID_ARGUMENT, and one that inflates past the size limit (1 KiB here)
    RESOURCE_EXHAUSTED without being inflated whole."""
    import gzip

    server, servicer = lane
    bomb = gzip.compress(b"\x00" * 10_000_000)  # ~10 KB on the wire
    got = await _grpc_exchange(
        server,
        _grpc_compressed("gz", "gzip"),
        _grpc_compressed("df", "deflate"),
        _grpc_compressed("br", "br", b"\x01\x02"),
        _grpc_compressed("bad", "gzip", b"not gzip at all"),
        _grpc_compressed("bomb", "gzip", bomb[:900]),  # truncated: under the body limit
    )
    (gz, df, br, bad, big) = got
    for (status, headers, message, trailers), want in ((gz, "gz"), (df, "df")):
        assert status == 200 and trailers == {"grpc-status": "0"}
        assert "grpc-encoding" not in headers
        assert message is not None
        assert inference_pb2.PredictResponse.FromString(message).request_id == want
    assert int(br[3]["grpc-status"]) == code_pb2.UNIMPLEMENTED
    assert int(bad[3]["grpc-status"]) == code_pb2.INVALID_ARGUMENT
    assert int(big[3]["grpc-status"]) == code_pb2.RESOURCE_EXHAUSTED
    assert [rid for rid, _ in servicer.seen] == ["gz", "df"]


async def test_a_cut_short_or_padded_compressed_message_is_refused(lane: Any) -> None:
    """A gzip stream missing its end would otherwise decode as a shorter, valid
    request (candidates dropped, the rest scored); bytes after the end of the
    stream belong to no message either."""
    import gzip

    server, servicer = lane
    request = inference_pb2.PredictRequest(request_id="cut")
    for i in range(3):
        request.candidates.add(candidate_id=f"c{i}")
    whole = gzip.compress(request.SerializeToString())
    got = await _grpc_exchange(
        server,
        _grpc_compressed("cut", "gzip", whole[:-11]),  # the deflate stream, no gzip trailer
        _grpc_compressed("padded", "gzip", whole + b"\x00\x00"),
    )
    for _, _, _, trailers in got:
        assert int(trailers["grpc-status"]) == code_pb2.INVALID_ARGUMENT
    assert servicer.seen == []


async def test_a_header_line_that_never_ends_is_refused_at_the_head_limit(lane: Any) -> None:
    """httptools holds a header line until its CRLF: the lane counts the raw
    bytes of the head itself, so an endless line is refused, not buffered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", lane[0].port)
    try:
        writer.write(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nx-endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # 4 MiB if nothing stopped it
                writer.write(b"a" * 65536)
                await writer.drain()
        status, headers, _ = await _read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert _status(headers)[0] == code_pb2.INVALID_ARGUMENT
    finally:
        writer.close()


async def test_a_large_body_after_a_small_head_is_not_mistaken_for_a_long_head() -> None:
    servicer = _Servicer()
    settings = ServerSettings(port=0, bridge_port=0, max_receive_message_bytes=1 << 20)
    server = FastLane(settings, TlsSettings(), servicer, None, None)  # type: ignore[arg-type]
    await server.start(0)
    try:
        request = inference_pb2.PredictRequest(request_id="big", alias="x" * 200_000)
        [(status, _, body)] = await _exchange(server, _post(request.SerializeToString()))
        assert status == 200
        assert inference_pb2.PredictResponse.FromString(body).request_id == "big"
    finally:
        await server.stop(0.5)


@pytest.mark.parametrize(
    "upgrade",
    [
        b"GET /healthz HTTP/1.1\r\nhost: r\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n",
    ],
)
async def test_upgrade_and_connect_are_answered_not_performed(lane: Any, upgrade: bytes) -> None:
    """The request before it and the request itself are answered in order, then
    the connection closes (what follows an upgrade is not HTTP/1.1)."""
    server, servicer = lane
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_predict("before") + upgrade + b"\x16\x03\x01 tunnel bytes")
        first, second = await _read_response(reader), await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert first[0] == 200
    assert inference_pb2.PredictResponse.FromString(first[2]).request_id == "before"
    if upgrade.startswith(b"GET"):
        assert second[0] == 200  # /healthz, answered over HTTP/1.1
    else:
        assert second[0] == 404 and _status(second[1])[0] == code_pb2.UNIMPLEMENTED
    assert [rid for rid, _ in servicer.seen] == ["before"]


async def test_a_refusal_waits_for_the_answers_before_it(lane: Any) -> None:
    """Pipelined: a valid request, then an unreadable one. The valid one is
    answered first; the refusal follows in its turn, then the close."""
    server, servicer = lane
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_predict("slow") + b"NOT HTTP AT ALL\r\n\r\n")
        first, second = await _read_response(reader), await _read_response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert first[0] == 200
    assert inference_pb2.PredictResponse.FromString(first[2]).request_id == "slow"
    assert second[0] == 400 and second[1]["connection"] == "close"
    assert [rid for rid, _ in servicer.seen] == ["slow"]


async def test_a_stalled_request_is_refused_and_a_long_idle_connection_closed(
    lane: Any,
) -> None:
    server, _ = lane
    server.sweep_s = 0.05
    server._sweeper.cancel()
    server._sweeper = asyncio.get_running_loop().create_task(server._sweep())
    stalled_r, stalled_w = await asyncio.open_connection("127.0.0.1", server.port)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        stalled_w.write(_predict("never-finished")[:-2])
        idle_w.write(_predict("done"))
        assert (await _read_response(idle_r))[0] == 200
        status, headers, _ = await _read_response(stalled_r)  # after one to two sweeps
        assert status == 408 and _status(headers)[0] == code_pb2.DEADLINE_EXCEEDED
        assert await asyncio.wait_for(stalled_r.read(), 5) == b""
        # Idle for 40 sweeps (600 s in production, 2 s here): closed.
        assert await asyncio.wait_for(idle_r.read(), 10) == b""
    finally:
        stalled_w.close()
        idle_w.close()
