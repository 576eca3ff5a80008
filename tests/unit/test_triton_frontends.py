"""bench.triton_frontends: the two requests it replays, Triton's counters, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

from bench.triton_cpu import fraud_request
from bench.triton_frontends import executions, h2load_args, http_request, markdown

METRICS = """\
# HELP nv_inference_count Number of inferences performed
nv_inference_count{model="fraud",version="1"} 120
nv_inference_count{model="fraud",version="2"} 30
nv_inference_count{model="ranker",version="1"} 999
nv_inference_exec_count{model="fraud",version="1"} 40
nv_inference_exec_count{model="fraud",version="2"} 10
nv_inference_exec_count{model="ranker",version="1"} 1
"""


def test_http_request_carries_the_grpc_requests_row() -> None:
    head, body = http_request()
    header = json.loads(head)
    assert header["inputs"][0]["shape"] == [1, 33]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 33 * 4
    assert header["outputs"] == [{"name": "output__0", "parameters": {"binary_data": True}}]
    assert body.startswith(head) and len(body) == len(head) + 33 * 4
    grpc_row = service_pb2.ModelInferRequest.FromString(fraud_request()).raw_input_contents[0]
    assert np.array_equal(
        np.frombuffer(body[len(head) :], dtype=np.float32), np.frombuffer(grpc_row, np.float32)
    )


def test_executions_sum_one_models_versions() -> None:
    assert executions(METRICS, "fraud") == (150.0, 50.0)
    assert executions(METRICS, "absent") == (0.0, 0.0)


def test_h2load_args_per_protocol() -> None:
    grpc = h2load_args("grpc", "127.0.0.1:1", Path("g"), 10, 32, 5.0)
    assert grpc[:6] == ["-D", "5", "-c", "4", "-m", "8"]
    assert grpc[-1] == "http://127.0.0.1:1/inference.GRPCInferenceService/ModelInfer"
    http = h2load_args("http", "127.0.0.1:2", Path("h"), 10, 2, 5.0)
    assert "--h1" in http and http[http.index("-c") + 1] == "2"
    assert "inference-header-content-length: 10" in http
    assert http[-1] == "http://127.0.0.1:2/v2/models/fraud/versions/1/infer"


def test_markdown_table_has_one_row_per_concurrency_with_the_ratio() -> None:
    row = {"cpu_us": 100.0, "rps": 1000.0, "per_execution": 2.0}
    result = {
        "machine": {
            "label": "box",
            "cpus": 2,
            "mem_gib": 24,
            "os": "Linux",
            "versions": {},
            "date": "today",
            "loadavg_start": ["0", "0", "0"],
        },
        "median": {1: {"grpc": row, "http": {**row, "cpu_us": 80.0}}},
    }
    text = markdown(result, "python -m bench.triton_frontends")
    assert "| 1 | 100 us | 80 us | 0.80 | 1,000 | 1,000 | 2.0 / 2.0 |" in text
