"""The GPU pool's model configs on the real tritonserver: with
``--model-config-name=gpu`` (what the chart gives GPU pools) Triton takes the
ranker's configs/gpu.pbtxt (KIND_GPU: refused on this GPU-less machine, which
shows it is the one read) and every model without one its config.pbtxt."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.stack import TritonServer


def test_a_gpu_pool_reads_gpu_configs_and_falls_back_to_config_pbtxt(
    demo_build: Path, tmp_path: Path
) -> None:
    repo = demo_build / "model_repository"
    with TritonServer(
        repo,
        tmp_path / "triton",
        model_control_mode="explicit",
        load_models=("fraud",),
        extra_args=("--model-config-name=gpu",),
    ) as triton:
        triton.http_get("/v2/models/fraud/ready")  # no configs/gpu.pbtxt: config.pbtxt
        config = json.loads(triton.http_get("/v2/models/fraud/config"))
        assert {g["kind"] for g in config["instance_group"]} == {"KIND_CPU"}
        status, body = triton.load_model("ranker")
    assert status == 400 and "GPU" in body, body  # KIND_GPU, and no GPU here
