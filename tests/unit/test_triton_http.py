"""The router's HTTP/1.1 Triton client against a scripted loopback server.

Real Triton is exercised by the integration tests and the fault drills; this
server exists to produce, on demand, the answers Triton rarely gives: slowness,
a dropped connection, garbage, error codes, a response split across packets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest

from router.backends.triton_http import TritonHttpClient, decode_scores
from router.errors import Code, DeadlineExceeded, InferlineError, Unavailable


def _ok(scores: list[float]) -> bytes:
    header = json.dumps({"outputs": [{"name": "y", "datatype": "FP32"}]}).encode()
    body = header + np.asarray(scores, dtype=np.float32).tobytes()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
        % (len(header), len(body), body)
    )


class Script:
    """What the server does with each request, in order; records connections."""

    def __init__(self) -> None:
        self.actions: list[str] = []
        self.connections = 0
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.requests += 1
                action = self.actions.pop(0) if self.actions else "ok"
                if action == "ok":
                    writer.write(_ok([0.25]))
                elif action == "split":
                    data = _ok([0.5])
                    for i in range(0, len(data), 7):
                        writer.write(data[i : i + 7])
                        await writer.drain()
                        await asyncio.sleep(0.001)
                elif action == "slow":
                    await asyncio.sleep(0.3)
                    writer.write(_ok([0.25]))
                elif action == "hang":
                    await asyncio.sleep(3600)
                elif action == "drop":
                    writer.close()
                    return
                elif action == "garbage":
                    writer.write(b"SPDY/9 what\r\n\r\n")
                elif action.isdigit():
                    writer.write(b"HTTP/1.1 %s X\r\nContent-Length: 0\r\n\r\n" % action.encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Script, TritonHttpClient]]:
    script = Script()
    srv = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = TritonHttpClient("127.0.0.1", port)
    yield script, client
    await client.close()
    srv.close()


ROW = np.zeros((1, 3), dtype=np.float32)


async def _infer(client: TritonHttpClient, timeout_s: float = 2.0) -> np.ndarray:
    return await client.infer("m", 1, "x", "y", ROW, timeout_s)


async def test_scores_and_keep_alive(server: tuple[Script, TritonHttpClient]) -> None:
    script, client = server
    for _ in range(5):
        assert (await _infer(client)).tolist() == [0.25]
    assert (script.requests, script.connections) == (5, 1)


async def test_a_connection_past_its_age_is_replaced() -> None:
    """Behind one Service address, a connection stays on the pod it first
    reached: replacing old ones lets pods added later get their share."""
    script = Script()
    srv = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    client = TritonHttpClient("127.0.0.1", srv.sockets[0].getsockname()[1], max_age_s=0.05)
    try:
        for _ in range(3):
            assert (await _infer(client)).tolist() == [0.25]
        assert script.connections == 1  # young: kept alive
        await asyncio.sleep(0.06)
        assert (await _infer(client)).tolist() == [0.25]  # served, then not parked
        assert (await _infer(client)).tolist() == [0.25]
        assert (script.requests, script.connections) == (5, 2)
    finally:
        await client.close()
        srv.close()


async def test_response_split_across_packets(server: tuple[Script, TritonHttpClient]) -> None:
    script, client = server
    script.actions = ["split"]
    assert (await _infer(client)).tolist() == [0.5]


async def test_slow_answer_is_deadline_and_its_connection_comes_back(
    server: tuple[Script, TritonHttpClient],
) -> None:
    """The late answer is read off the connection, which then goes back to the
    pool: no reconnect per timeout, no stray answer for the next caller."""
    script, client = server
    script.actions = ["slow"]
    with pytest.raises(DeadlineExceeded):
        await _infer(client, timeout_s=0.05)
    assert (await _infer(client)).tolist() == [0.25]  # meanwhile, a fresh connection
    assert script.connections == 2 and len(client.pool.draining) == 1
    await asyncio.sleep(0.3)
    assert not client.pool.draining and len(client.pool.idle) == 2
    for _ in range(3):
        assert (await _infer(client)).tolist() == [0.25]
    assert script.connections == 2


async def test_silent_connection_is_closed_after_the_drain_limit(
    server: tuple[Script, TritonHttpClient],
) -> None:
    script, client = server
    client.pool.drain_s = 0.1
    script.actions = ["hang"]
    with pytest.raises(DeadlineExceeded):
        await _infer(client, timeout_s=0.02)
    await asyncio.sleep(0.15)
    assert not client.pool.draining and not client.pool.idle  # closed, not kept
    assert (await _infer(client)).tolist() == [0.25]
    assert script.connections == 2


@pytest.mark.parametrize("action", ["drop", "garbage"])
async def test_broken_exchange_is_unavailable_then_recovers(
    server: tuple[Script, TritonHttpClient], action: str
) -> None:
    script, client = server
    script.actions = [action]
    with pytest.raises(Unavailable):
        await _infer(client)
    assert (await _infer(client)).tolist() == [0.25]


@pytest.mark.parametrize(
    ("status", "code"),
    [("400", Code.INTERNAL), ("503", Code.UNAVAILABLE), ("404", Code.UNAVAILABLE)],
)
async def test_status_codes_map_by_code(
    server: tuple[Script, TritonHttpClient], status: str, code: Code
) -> None:
    script, client = server
    script.actions = [status]
    with pytest.raises(InferlineError) as exc:
        await _infer(client)
    assert exc.value.code == code
    assert (await _infer(client)).tolist() == [0.25]
    assert script.connections == 1  # an HTTP error leaves the connection usable


async def test_cancelled_call_leaves_its_connection_to_drain(
    server: tuple[Script, TritonHttpClient],
) -> None:
    script, client = server
    script.actions = ["slow"]
    task = asyncio.create_task(_infer(client))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await _infer(client)).tolist() == [0.25]
    assert script.connections == 2
    await asyncio.sleep(0.3)
    assert len(client.pool.idle) == 2  # the cancelled call's connection is back


async def test_unreachable_is_unavailable() -> None:
    client = TritonHttpClient("127.0.0.1", 1)
    with pytest.raises(Unavailable):
        await _infer(client)


def _answer(datatype: str, values: np.ndarray, compact: bool) -> tuple[dict[bytes, bytes], bytes]:
    seps = (",", ":") if compact else (", ", ": ")
    header = json.dumps(
        {"outputs": [{"name": "y", "datatype": datatype}]}, separators=seps
    ).encode()
    return {b"inference-header-content-length": b"%d" % len(header)}, header + values.tobytes()


def _truncated(answer: tuple[dict[bytes, bytes], bytes]) -> tuple[dict[bytes, bytes], bytes]:
    return answer[0], answer[1][:-1]


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("FP32", np.float32), ("FP16", np.float16), ("FP64", np.float64), ("INT32", np.int32)],
)
def test_output_is_read_as_the_datatype_triton_declares(
    datatype: str, dtype: type, compact: bool
) -> None:
    """An INT32 output read as FP32 would be a tiny denormal served as a score;
    an FP16 output of an odd number of rows would not even fit FP32's width."""
    values: np.ndarray = np.asarray([1, 0, 3], dtype=dtype)
    out = decode_scores(*_answer(datatype, values, compact), 3)
    assert out.dtype == np.float32 and out.tolist() == [1.0, 0.0, 3.0]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({b"inference-header-content-length": b"999"}, b"{}"),  # header past the body
        ({b"inference-header-content-length": b"x"}, b"{}"),
        ({b"inference-header-content-length": b"2"}, b"{}" + b"\0" * 12),  # no outputs
        _answer("BYTES", np.zeros(3, dtype=np.float32), True),
        _truncated(_answer("FP16", np.zeros(3, dtype=np.float16), True)),  # half an FP16
        _answer("FP32", np.zeros(2, dtype=np.float32), True),  # 2 scores for 3 rows
    ],
)
def test_an_unreadable_output_is_unavailable(headers: dict[bytes, bytes], body: bytes) -> None:
    with pytest.raises(Unavailable):
        decode_scores(headers, body, 3)
