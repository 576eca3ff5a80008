"""Triton's response cache, switched on per model, answers repeats from memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tritonclient.grpc as tgrpc

from scripts.stack import TritonServer
from triton_models.build import render_config


def test_response_cache_hits_for_a_model_that_enables_it(demo_build: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(demo_build / "model_repository", repo)
    config = render_config("fraud", "python", 33, response_cache=True)
    assert "response_cache { enable: true }" in config
    (repo / "fraud" / "config.pbtxt").write_text(config)
    with TritonServer(repo, tmp_path / "logs") as triton:
        client = tgrpc.InferenceServerClient(triton.grpc_url)
        x = np.zeros((1, 33), np.float32)
        x[0, 31] = 3.0
        outs = []
        for _ in range(3):
            inp = tgrpc.InferInput("input__0", [1, 33], "FP32")
            inp.set_data_from_numpy(x)
            outs.append(client.infer("fraud", [inp], model_version="1").as_numpy("output__0"))
        assert outs[0] == outs[1] == outs[2]
        metrics = triton.http_get("/metrics", metrics=True).decode()
        hits = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('nv_cache_num_hits_per_model{model="fraud",version="1"}')
        ]
        assert hits == [2.0]
