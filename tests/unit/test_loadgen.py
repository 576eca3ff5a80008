"""Benchmark arithmetic and wire formats: percentiles, summaries, framing, h2load parsing."""

from __future__ import annotations

import asyncio
import collections
import math
import struct
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from bench.h2load import (
    grpc_frame,
    h2load_command,
    parse_h2load,
    triton_batching,
    triton_counts,
)
from bench.loadgen import (
    ROUTER_METHOD,
    TRITON_METHOD,
    Samples,
    Target,
    arrival_offsets,
    block_order,
    check_response,
    closed_loop,
    median_summary,
    open_loop,
    overhead,
    percentiles_ms,
    router_request,
    summarize,
    triton_request,
)
from inferline.v1 import inference_pb2

# Captured from h2load 1.52.0 against the Python-backend test model (-n 2000 -c 2 -m 4).
H2LOAD_N = """\
starting benchmark...
spawning thread #0: 2 total client(s). 2000 total requests
Application protocol: h2c
progress: 100% done

finished in 175.81ms, 11375.85 req/s, 978.58KB/s
requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 172.04KB (176174) total, 6.01KB (6150) headers (space savings 96.20%), 85.94KB (88000) data
                     min         max         mean         sd        +/- sd
time for request:      453us      3.16ms       692us       234us    92.45%
time for connect:      176us       530us       353us       250us   100.00%
time to 1st byte:     1.97ms      2.82ms      2.40ms       603us   100.00%
req/s           :    5706.70     5712.99     5709.84        4.45   100.00%
"""

# Same, timing-based (-D 2 --warm-up-time 1 -c 1 -m 1).
H2LOAD_D = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 1s of warm-up time and 2s of main \
duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 3.00s, 3600.00 req/s, 309.40KB/s
requests: 7200 total, 7200 started, 7200 done, 7200 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 7200 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 618.80KB (633651) total, 32.18KB (32949) headers (space savings 96.29%), 470.85KB \
(482152) data
                     min         max         mean         sd        +/- sd
time for request:      152us      2.18ms       273us        78us    79.39%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    3599.62     3599.62     3599.62        0.00   100.00%
"""


def test_percentiles_from_raw_samples() -> None:
    s = [x / 1e3 for x in range(1, 101)]  # 1..100 ms
    p = percentiles_ms(s)
    assert p["p50"] == pytest.approx(50.5)
    assert p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert p["max"] == pytest.approx(100.0)
    assert p["mean"] == pytest.approx(50.5)
    assert all(math.isnan(v) for v in percentiles_ms([]).values())


def test_summary_counts_errors_throughput_and_cpu() -> None:
    s = Samples(
        latencies_s=[0.001] * 90,
        errors=collections.Counter({"UNAVAILABLE": 7, "DEADLINE_EXCEEDED": 3}),
        elapsed_s=2.0,
        client_cpu_s=0.05,
        server_cpu_s={"router": 0.03},
    )
    out = summarize(s)
    assert out["ok"] == 90 and out["error_count"] == 10
    assert out["errors"] == {"DEADLINE_EXCEEDED": 3, "UNAVAILABLE": 7}
    assert out["throughput_rps"] == pytest.approx(45.0)  # successes per second only
    assert out["client_cpu_ms_per_req"] == pytest.approx(0.5)  # over all 100 sent
    assert out["router_cpu_ms_per_req"] == pytest.approx(0.3)
    assert "late" not in out  # closed loop has no schedule


def test_merge_then_median_of_repeats() -> None:
    a, b = Samples([0.001], collections.Counter({"X": 1}), 1.0), Samples([0.003], elapsed_s=1.0)
    a.merge(b)
    assert a.latencies_s == [0.001, 0.003] and a.elapsed_s == 2.0 and a.errors["X"] == 1
    runs = [
        summarize(Samples([v / 1e3] * 10, collections.Counter({"E": 1}), 1.0)) for v in (1, 5, 2)
    ]
    med = median_summary(runs)
    assert med["latency_ms"]["p50"] == pytest.approx(2.0)
    assert med["throughput_rps"] == pytest.approx(10.0)
    assert med["errors"] == {"E": 3}  # counts add up, they are not averaged


def test_overhead_is_router_minus_direct() -> None:
    router = {"latency_ms": {"p50": 2.5, "p99": 6.0}, "throughput_rps": 400.0}
    direct = {"latency_ms": {"p50": 0.7, "p99": 1.5}, "throughput_rps": 1600.0}
    assert overhead(router, direct) == pytest.approx(
        {"p50_ms": 1.8, "p99_ms": 4.5, "throughput_ratio": 0.25}
    )


def test_arrivals_uniform_and_poisson() -> None:
    u = arrival_offsets(100, 2.0, poisson=False, rng=np.random.default_rng(0))
    assert len(u) == 200 and np.allclose(np.diff(u), 0.01)
    p = arrival_offsets(1000, 5.0, poisson=True, rng=np.random.default_rng(1))
    assert p[0] == 0 and np.all(np.diff(p) >= 0) and p[-1] < 5.0
    assert abs(len(p) - 5000) < 4 * math.sqrt(5000)
    gaps = np.diff(p)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05)  # exponential: cv 1


def test_blocks_alternate_so_each_target_leads_equally() -> None:
    assert list(block_order(["router", "direct"], 4)) == [
        ["router", "direct"],
        ["direct", "router"],
        ["router", "direct"],
        ["direct", "router"],
    ]


def test_grpc_frame_bytes() -> None:
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_frame(b"") == b"\x00\x00\x00\x00\x00"
    msg = router_request()
    framed = grpc_frame(msg)
    assert framed[0] == 0 and struct.unpack(">I", framed[1:5])[0] == len(msg)
    assert framed[5:] == msg


def test_prebuilt_requests_round_trip() -> None:
    r = inference_pb2.PredictRequest.FromString(router_request("fraud:prod", 42))
    assert r.alias == "fraud:prod" and len(r.candidates) == 1
    c = r.candidates[0]
    assert c.entities["account_id"].int64_value == 42
    assert c.features["amount"].double_value == 12.5
    row = np.arange(33, dtype=np.float32).reshape(1, 33)
    raw = triton_request("fraud", row, version="1", input_name="input__0", output_name="output__0")
    t = service_pb2.ModelInferRequest.FromString(raw)
    assert (t.model_name, t.model_version) == ("fraud", "1")
    assert t.inputs[0].name == "input__0" and list(t.inputs[0].shape) == [1, 33]
    assert t.outputs[0].name == "output__0"
    np.testing.assert_array_equal(np.frombuffer(t.raw_input_contents[0], np.float32), row[0])


def test_check_response_rejects_empty_outputs() -> None:
    direct = Target("direct", "x", TRITON_METHOD, b"")
    ok = service_pb2.ModelInferResponse(model_name="fraud", model_version="1")
    ok.outputs.add(name="output__0", datatype="FP32", shape=[1, 1])
    ok.raw_output_contents.append(np.float32(0.25).tobytes())
    assert "output__0=[0.25]" in check_response(direct, ok.SerializeToString())
    empty = service_pb2.ModelInferResponse(model_name="fraud")
    empty.outputs.add(name="output__0", datatype="FP32", shape=[1, 1])
    empty.raw_output_contents.append(b"")  # what a NumPy-2 stub sends back
    with pytest.raises(ValueError, match="no output data"):
        check_response(direct, empty.SerializeToString())
    router = Target("router", "x", ROUTER_METHOD, b"")
    with pytest.raises(ValueError, match="0 scores"):
        check_response(router, inference_pb2.PredictResponse().SerializeToString())


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "injected")


async def test_closed_loop_sends_exactly_the_requested_count() -> None:
    sent = 0

    async def call() -> bytes:
        nonlocal sent
        sent += 1
        n = sent
        await asyncio.sleep(0)  # let the other workers interleave
        if n % 5 == 0:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE)
        return b""

    s = await closed_loop(call, 3, requests=20)
    assert sent == 20 and len(s.latencies_s) == 16 and s.errors == {"UNAVAILABLE": 4}


async def test_open_loop_counts_late_and_capped_requests() -> None:
    gate = asyncio.Event()

    async def call() -> bytes:
        await gate.wait()
        return b""

    async def release() -> None:
        await asyncio.sleep(0.05)
        gate.set()

    offsets = np.zeros(10)  # all due at once: the later ones leave late
    task = asyncio.create_task(release())
    s = await open_loop(call, offsets, late_s=10.0, max_inflight=4)
    await task
    assert len(s.latencies_s) == 4 and s.errors == {"CLIENT_MAX_INFLIGHT": 6}
    assert s.late == 0 and len(s.from_schedule_s) == 4
    s = await open_loop(call, np.array([0.0, 0.0]), late_s=-1.0, max_inflight=4)
    assert s.late == 2  # a negative threshold makes every send late


def test_parse_h2load_count_based() -> None:
    r = parse_h2load(H2LOAD_N)
    assert (r.total, r.succeeded, r.failed, r.errored, r.timeout) == (2000, 2000, 0, 0, 0)
    assert r.status_2xx == 2000
    assert r.req_per_s == pytest.approx(11375.85)
    assert r.finished_ms == pytest.approx(175.81)
    assert r.latency_ms == pytest.approx({"min": 0.453, "max": 3.16, "mean": 0.692, "sd": 0.234})


def test_parse_h2load_duration_based() -> None:
    r = parse_h2load(H2LOAD_D)
    assert r.total == 7200 and r.req_per_s == pytest.approx(3600.0)
    assert r.finished_ms == pytest.approx(3000.0)
    assert r.latency_ms["max"] == pytest.approx(2.18)


def test_parse_h2load_rejects_truncated_output() -> None:
    with pytest.raises(ValueError, match="finished"):
        parse_h2load("starting benchmark...\n")


def test_h2load_command_carries_grpc_headers() -> None:
    t = Target("router", "127.0.0.1:5", ROUTER_METHOD, b"", (("x-inferline-tenant", "demo"),))
    cmd = h2load_command(
        t, Path("/tmp/b"), requests=None, duration_s=3, warmup_s=1, clients=2, streams=8
    )
    assert cmd[-1] == "http://127.0.0.1:5/inferline.v1.InferenceService/Predict"
    headers = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-H"]
    assert headers == ["content-type: application/grpc", "te: trailers", "x-inferline-tenant: demo"]
    assert "--duration=3" in cmd and "--warm-up-time=1" in cmd and "--data=/tmp/b" in cmd


def test_triton_counts_sums_versions_of_one_model() -> None:
    text = (
        'nv_inference_request_success{model="fraud",version="1"} 10\n'
        'nv_inference_request_success{model="fraud",version="2"} 5\n'
        'nv_inference_request_failure{model="fraud",version="1",reason="OTHER"} 2\n'
        'nv_inference_request_failure{model="fraud",version="2",reason="CANCELED"} 3\n'
        'nv_inference_request_success{model="ranker",version="1"} 99\n'
    )
    assert triton_counts(text, "fraud") == {"success": 15.0, "failure": 2.0, "canceled": 3.0}


def test_triton_batching_sums_executions_and_durations_of_one_model() -> None:
    text = (
        "# HELP nv_inference_exec_count Number of model executions performed\n"
        'nv_inference_exec_count{model="fraud",version="1"} 4\n'
        'nv_inference_exec_count{model="fraud",version="2"} 1\n'
        'nv_inference_exec_count{model="ranker",version="1"} 70\n'
        'nv_inference_queue_duration_us{model="fraud",version="1"} 1200\n'
        'nv_inference_compute_infer_duration_us{model="fraud",version="1"} 3000.5\n'
        'nv_inference_request_success{model="fraud",version="1"} 10\n'
    )
    assert triton_batching(text, "fraud") == {
        "exec_count": 5.0,
        "queue_duration_us": 1200.0,
        "compute_infer_duration_us": 3000.5,
    }
    assert triton_batching(text, "absent") == {
        "exec_count": 0.0,
        "queue_duration_us": 0.0,
        "compute_infer_duration_us": 0.0,
    }


def test_run_for_cpu_counts_the_servers_cpu_per_answered_request() -> None:
    """A real h2load against an HTTP/1.1 server in this process's group."""
    import http.server
    import os
    import threading

    from bench.h2load import run_for_cpu

    class Ok(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        run = run_for_cpu(os.getpgid(0), ["-n", "300", "-c", "1", "--h1", url])
    finally:
        server.shutdown()
        server.server_close()
    assert run.result.succeeded == 300 and run.result.failed == 0
    assert run.result.req_per_s > 0
    assert 0 < run.cpu_us_per_request < 1e6  # the handler thread's CPU, per request
