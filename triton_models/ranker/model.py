"""Triton Python-backend model: MLP ranker in ONNX, run by onnxruntime on the
instance's device (CPU, or its GPU for a KIND_GPU instance).

The pytriton Triton build has no ONNX Runtime backend, so the ONNX artifact is
served from the Python backend; clusters with the onnxruntime or TensorRT
backend serve the same ``model.onnx`` natively. All requests of one ``execute``
call (Triton's dynamic batch) run as one session call.
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


def providers(model: BatchedModel) -> list[str | tuple[str, dict[str, int]]]:
    """CPU for a KIND_CPU instance; its GPU for a KIND_GPU one, or a load error:
    a GPU pod quietly scoring on its CPUs is the failure this guards against."""
    if model.instance_kind != "GPU":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(
            "KIND_GPU instance, but this onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu in the Triton image)"
        )
    return [("CUDAExecutionProvider", {"device_id": model.device_id}), "CPUExecutionProvider"]


class TritonPythonModel(BatchedModel):
    def load(self, version_dir: str) -> None:
        opts = ort.SessionOptions()
        # Single-threaded and sequential: on small hosts spinning intra-op
        # threads double CPU per request and starve the gRPC threads.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), opts, providers=providers(self)
        )
        self.onnx_input = self.session.get_inputs()[0].name

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.onnx_input: x})[0])
