"""Triton Python-backend model: an ONNX MLP (FP32 or INT8 QDQ) run by onnxruntime on CPU.

Serves ``ranker_int8`` (and the benchmark's ``ranker_wide*``). onnxruntime
fuses the QDQ pairs around each MatMul into integer kernels
(MatMulIntegerToFloat / QLinearMatMul, VNNI where the CPU has it) at session
creation; the feature scaling and Sigmoid stay float. All requests of one
``execute`` call (Triton's dynamic batch) run as one session call.
"""

from __future__ import annotations

import os
import sys

# The stub embeds the system Python in isolated mode and ignores PYTHONPATH:
# put the launcher's site-packages (NumPy 1.x stub site first) on sys.path.
_paths = os.environ.get("INFERLINE_EXTRA_SITE_PACKAGES", "").split(os.pathsep)
for _p in [os.path.dirname(os.path.abspath(__file__)), *reversed(_paths)]:
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from batched import BatchedModel  # type: ignore[import-not-found]  # noqa: E402


class TritonPythonModel(BatchedModel):
    def load(self, version_dir: str) -> None:
        opts = ort.SessionOptions()
        # One thread, sequential: spinning intra-op threads double CPU per
        # request on small hosts, and int8 gains are per-core gains.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.onnx_input = self.session.get_inputs()[0].name

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.onnx_input: x})[0])
