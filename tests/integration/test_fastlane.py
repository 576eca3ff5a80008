"""Predict through Envoy into the router's HTTP/1.1 fast lane (gRPC's framing
over HTTP/1.1, the status in trailers that Envoy passes on).

The whole chain is real (Triton, router in edge mode, Envoy + xDS + rate-limit
service): the caller speaks gRPC and must not be able to tell which lane served
it, in answers or in statuses, including statuses Envoy itself generates."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.rpc import code_pb2, status_pb2

from inferline.v1 import inference_pb2 as pb
from inferline.v1 import inference_pb2_grpc
from inferline_edge.certs import EDGE_DNS, ROUTER_DNS, DevPKI
from scripts.demo import fraud_request, ranker_request
from scripts.edge_stack import FullStack

pytestmark = pytest.mark.slow

WHO = [("demo", "cli"), ("payments", "checkout"), ("feed", "web")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FullStack]:
    logs = tmp_path_factory.mktemp("fastlane-logs")
    pki = DevPKI.create(logs / "pki", tenants=WHO, days=1)
    full = FullStack(demo_build, logs, pki, router_env={"INFERLINE_FEATURES__TIMEOUT_MS": "1000"})
    try:
        await asyncio.to_thread(full.start)  # worker thread: no fork after this process used gRPC
        yield full
    finally:
        await asyncio.to_thread(full.stop)


def _channel(full: FullStack, who: tuple[str, str], *, direct: bool = False) -> grpc.aio.Channel:
    pki = full.pki
    pair = pki.edge_client if direct else pki.client(*who)
    creds = grpc.ssl_channel_credentials(
        pki.ca.cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes()
    )
    assert full.edge is not None and full.router is not None
    address = full.router.address if direct else full.edge.mtls_address
    name = ROUTER_DNS if direct else EDGE_DNS
    return grpc.aio.secure_channel(address, creds, [("grpc.ssl_target_name_override", name)])


async def _code(
    stub: inference_pb2_grpc.InferenceServiceStub, req: pb.PredictRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Predict(req, timeout=10)
    return exc.value


async def test_same_answer_as_the_grpc_port(stack: FullStack) -> None:
    """Through the fast lane vs straight to the router's gRPC port (as the edge
    would call it): same model, version, scores, freshness."""
    req = fraud_request([1, 2, 3])
    async with _channel(stack, ("demo", "cli")) as ch:
        laned = await inference_pb2_grpc.InferenceServiceStub(ch).Predict(req, timeout=10)
    xfcc = (("x-forwarded-client-cert", "URI=spiffe://inferline/tenant/demo/svc/cli"),)
    async with _channel(stack, ("demo", "cli"), direct=True) as ch:
        direct = await inference_pb2_grpc.InferenceServiceStub(ch).Predict(
            req, metadata=xfcc, timeout=10
        )
    assert stack.edge is not None and stack.edge.envoy is not None
    served = stack.edge.envoy.stats("cluster.router_fast.upstream_rq_")
    assert served.get("cluster.router_fast.upstream_rq_200", 0) >= 1  # the fast lane, not gRPC
    assert laned.model == direct.model and laned.model.name == "fraud"
    assert [s.score for s in laned.scores] == [s.score for s in direct.scores]
    assert [s.candidate_id for s in laned.scores] == ["acct-1", "acct-2", "acct-3"]
    fresh = [[(f.feature_view, f.status) for f in s.freshness] for s in laned.scores]
    assert fresh == [[(f.feature_view, f.status) for f in s.freshness] for s in direct.scores]
    assert not laned.degraded


async def test_router_errors_keep_their_status(stack: FullStack) -> None:
    async with _channel(stack, ("demo", "cli")) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        unknown = await _code(
            stub, pb.PredictRequest(alias="nope:prod", candidates=fraud_request([1]).candidates)
        )
        empty = await _code(stub, pb.PredictRequest(alias="fraud:prod"))
    async with _channel(stack, ("payments", "checkout")) as ch:
        denied = await _code(inference_pb2_grpc.InferenceServiceStub(ch), ranker_request(1, [1, 2]))
    assert (unknown.code(), unknown.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'",
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert empty.details() == "at least one candidate is required"
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    # The router's status arrives as gRPC trailers, with nothing of the HTTP/1.1
    # hop (no x-inferline-grpc-* headers, no content-length) in the metadata.
    for err in (unknown, empty, denied):
        keys = {k for k, _ in (err.trailing_metadata() or ())} | {
            k for k, _ in (err.initial_metadata() or ())
        }
        assert not {k for k in keys if k.startswith("x-inferline-grpc")}, keys
        assert "content-length" not in keys


def _fuzzed(rng: random.Random) -> bytes:
    """A valid fraud request with 0-2 random defects, as bytes; one in ten is then
    corrupted on the wire (a flipped bit, a cut, inserted bytes)."""
    v = pb.Value
    aliases = ["", "fraud", "nope:prod", "fraud:nope", "x" * 500, "fräud:prod"]
    versions = ["fraud@1", "fraud@999", "fraud@-1", "fraud@²", "@", "ranker@1"]
    odd_values = [
        v(double_value=float("nan")), v(double_value=float("inf")), v(double_value=1e300),
        v(int64_value=-(2**63)), v(string_value="x" * 300), v(bool_value=True), v(),
    ]  # fmt: skip
    req = fraud_request([rng.choice([1, 2, 3, 42, 10**12]) for _ in range(rng.choice([1, 1, 2]))])
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        kind = rng.randrange(8)
        cand = rng.choice(req.candidates) if req.candidates else None
        if kind == 0:
            req.alias = rng.choice(aliases)
        elif kind == 1:
            req.version = rng.choice(versions)
        elif kind == 2:
            req.request_id = rng.choice(["r", "r" * 129, "\u00e4\n"])
        elif kind == 3 and cand is not None:
            name = rng.choice(["amount", "hour_of_day", "is_international", "unknown"])
            cand.features[name].CopyFrom(rng.choice(odd_values))
        elif kind == 4 and cand is not None:
            cand.entities[rng.choice(["account_id", "user_id"])].CopyFrom(rng.choice(odd_values))
        elif kind == 5:
            del req.candidates[:]
            req.candidates.extend(fraud_request(list(range(1, rng.choice([0, 65]) + 1))).candidates)
        elif kind == 6:
            req.idempotency_key = "k" * 129
        elif kind == 7 and cand is not None and "amount" in cand.features:
            del cand.features["amount"]
    body = bytearray(req.SerializeToString())
    if rng.random() < 0.1 and body:
        at = rng.randrange(len(body))
        cut = rng.randrange(3)
        if cut == 0:
            body[at] ^= 1 << rng.randrange(8)
        elif cut == 1:
            del body[at:]
        else:
            body[at:at] = bytes(rng.randrange(256) for _ in range(4))
    return bytes(body)


async def _outcome(
    call: grpc.aio.UnaryUnaryMultiCallable, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> tuple[object, ...]:
    """(status, message) of a refusal, or (OK, model served, scores, degradations) of an answer."""
    try:
        raw = await call(body, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as e:
        return (e.code(), e.details())
    resp = pb.PredictResponse.FromString(raw)
    scores = [(s.candidate_id, s.score) for s in resp.scores]
    return (grpc.StatusCode.OK, resp.model.SerializeToString(), scores, list(resp.degraded_reasons))


async def test_fuzzed_requests_get_the_same_status_on_either_lane(stack: FullStack) -> None:
    """120 seeded requests, valid or with random defects (bad references, odd
    values, missing features, too many candidates, corrupt protobuf): through
    Envoy into the fast lane and straight to the router's gRPC port, each gets
    the same status and message, or the same scores; none is INTERNAL or UNKNOWN."""
    rng = random.Random(7)
    bodies = [_fuzzed(rng) for _ in range(120)]
    xfcc = (("x-forwarded-client-cert", "URI=spiffe://inferline/tenant/demo/svc/cli"),)
    outcomes: dict[str, list[tuple[object, ...]]] = {}
    for lane, direct, metadata in (("edge", False, ()), ("grpc port", True, xfcc)):
        async with _channel(stack, ("demo", "cli"), direct=direct) as ch:
            call = ch.unary_unary("/inferline.v1.InferenceService/Predict")
            outcomes[lane] = [await _outcome(call, b, metadata) for b in bodies]
    for body, laned, straight in zip(bodies, outcomes["edge"], outcomes["grpc port"], strict=True):
        assert laned == straight, body
    codes = Counter(o[0] for o in outcomes["edge"])
    assert not {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN} & set(codes), codes
    # The seed covers both answers and refusals.
    assert codes[grpc.StatusCode.OK] >= 30 and codes[grpc.StatusCode.INVALID_ARGUMENT] >= 10, codes
    assert stack.router is not None
    stack.router.check_alive()


async def test_compressed_calls_are_answered(stack: FullStack) -> None:
    """A caller that compresses its messages (gzip, deflate) gets the same answer
    through the fast lane as uncompressed (Envoy forwards the message as sent)."""
    req = fraud_request([4])
    answers = []
    for compression in (
        grpc.Compression.NoCompression,
        grpc.Compression.Gzip,
        grpc.Compression.Deflate,
    ):
        async with _channel(stack, ("demo", "cli")) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            answers.append(await stub.Predict(req, timeout=10, compression=compression))
    assert [[s.score for s in a.scores] for a in answers[1:]] == [[answers[0].scores[0].score]] * 2
    assert all(a.scores[0].candidate_id == "acct-4" for a in answers)


async def test_concurrent_calls_all_answered(stack: FullStack) -> None:
    async with _channel(stack, ("demo", "cli")) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        replies = await asyncio.gather(
            *(stub.Predict(fraud_request([i % 7 + 1]), timeout=20) for i in range(64))
        )
    assert [r.scores[0].candidate_id for r in replies] == [f"acct-{i % 7 + 1}" for i in range(64)]


async def test_edge_refusals_still_reach_the_caller(stack: FullStack) -> None:
    """A burst over feed's bucket (50/s, burst 50): the edge refuses the excess
    RESOURCE_EXHAUSTED with details (Envoy's own gRPC reply); what passes
    reaches the router, which refuses fraud to feed PERMISSION_DENIED."""
    async with _channel(stack, ("feed", "web")) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        calls = [stub.Predict(fraud_request([1]), timeout=10) for _ in range(120)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    codes = Counter(e.code() for e in errors)
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED}
    refused = next(e for e in errors if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    details = dict(refused.trailing_metadata() or ())["grpc-status-details-bin"]
    assert status_pb2.Status.FromString(details).code == code_pb2.RESOURCE_EXHAUSTED


async def test_deadlines_end_as_deadline_exceeded(stack: FullStack) -> None:
    """Deadlines too short to meet fail DEADLINE_EXCEEDED, never UNKNOWN, whether
    the client, Envoy or the router notices first."""
    async with _channel(stack, ("demo", "cli")) as ch:
        stub = inference_pb2_grpc.InferenceServiceStub(ch)
        codes: Counter[grpc.StatusCode] = Counter()
        for i in range(60):
            try:
                await stub.Predict(fraud_request([1]), timeout=(0.0003, 0.001, 0.002)[i % 3])
                codes[grpc.StatusCode.OK] += 1
            except grpc.aio.AioRpcError as e:
                codes[e.code()] += 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert codes[grpc.StatusCode.DEADLINE_EXCEEDED] > 0


def _client_ssl(full: FullStack, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(full.pki.ca.cert))
    if cert:
        ctx.load_cert_chain(full.pki.edge_client.cert, full.pki.edge_client.key)
    return ctx


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, pieces: int
) -> tuple[bytes, bytes]:
    """One HTTP/1.1 Predict on an open connection, the request written in
    ``pieces`` separate writes: (status line, body)."""
    head = (
        b"POST /inferline.v1.InferenceService/Predict HTTP/1.1\r\nhost: router\r\n"
        b"content-type: application/x-protobuf\r\n"
        b"x-forwarded-client-cert: URI=spiffe://inferline/tenant/demo/svc/cli\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    raw = head + body
    step = -(-len(raw) // pieces)
    for i in range(0, len(raw), step):
        writer.write(raw[i : i + step])
        await writer.drain()
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, await reader.readexactly(length)


async def test_fast_lane_tls_serves_the_edge_and_refuses_the_rest(stack: FullStack) -> None:
    """The fast lane terminates TLS itself (router/transport/tls_bio.py): the
    edge's certificate gets answers, kept alive and however the bytes are split;
    plaintext and a client without a certificate are cut off; the router keeps
    serving throughout."""
    assert stack.router is not None
    host, port = stack.router.bridge_address.rsplit(":", 1)
    body = fraud_request([1]).SerializeToString()
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=_client_ssl(stack, cert=True), server_hostname=ROUTER_DNS
    )
    try:
        answers = [await _post(reader, writer, body, pieces) for pieces in (1, 3, 40)]
    finally:
        writer.close()
    for status, raw in answers:
        assert status.startswith(b"HTTP/1.1 200")
        resp = pb.PredictResponse.FromString(raw)
        assert resp.model.name == "fraud" and [s.candidate_id for s in resp.scores] == ["acct-1"]
    assert len({pb.PredictResponse.FromString(raw).scores[0].score for _, raw in answers}) == 1

    # Plaintext on the TLS port: the handshake fails, the connection closes.
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nhost: router\r\n\r\n")
    got = await asyncio.wait_for(reader.read(), 5)
    assert not got.startswith(b"HTTP/")
    writer.close()
    # TLS without a client certificate: refused (TLS 1.3 reports it on first read).
    with contextlib.suppress(ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=_client_ssl(stack, cert=False), server_hostname=ROUTER_DNS
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: router\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 5)
        assert not got.startswith(b"HTTP/")
        writer.close()
    async with _channel(stack, ("demo", "cli")) as ch:
        resp = await inference_pb2_grpc.InferenceServiceStub(ch).Predict(
            fraud_request([2]), timeout=10
        )
    assert [s.candidate_id for s in resp.scores] == ["acct-2"]


async def test_no_router_is_unavailable(stack: FullStack) -> None:
    """Envoy's own reply (no healthy upstream) is a gRPC UNAVAILABLE. Runs last in
    this module: it stops the router."""
    assert stack.router is not None
    await asyncio.to_thread(stack.router.stop)
    await asyncio.sleep(1.2)  # two health-check intervals
    async with _channel(stack, ("demo", "cli")) as ch:
        err = await _code(inference_pb2_grpc.InferenceServiceStub(ch), fraud_request([1]))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
