"""Triton Python-backend model: the ranker MLP in PyTorch on a CUDA device.

Weights come from ``weights.npz`` (the scaler's mean/scale and each layer's
W/b, exported from the FP32 ONNX by bench/gpu_bench.py). The ``precision``
config parameter picks FP32 or FP16; in FP16 the feature scaling and the
Sigmoid stay FP32 (raw features lose digits in half precision), the layers
run in half. Tensors cross the stub by DLPack, not NumPy: the pytriton stub is
built against NumPy 1.x and misreads NumPy 2 arrays. All requests of one
``execute`` call (Triton's dynamic batch) run as one forward pass.

Without CUDA it refuses to load with a message saying what is missing, rather
than silently serving from the CPU: the CPU tier is the ``ranker`` model.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_paths = os.environ.get("INFERLINE_EXTRA_SITE_PACKAGES", "").split(os.pathsep)
for _p in [os.path.dirname(os.path.abspath(__file__)), *reversed(_paths)]:
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

PRECISIONS = ("fp32", "fp16")


def _error(message: str, code: str = "INVALID_ARG") -> Any:
    kind = getattr(pb_utils.TritonError, code, None)
    err = pb_utils.TritonError(message) if kind is None else pb_utils.TritonError(message, kind)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.precision = params.get("precision", "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.n_features = int(config["input"][0]["dims"][0])
        try:
            import torch
        except ImportError as e:
            raise RuntimeError(
                f"{config['name']} needs PyTorch with CUDA in the model process "
                f"(add its site-packages to INFERLINE_EXTRA_SITE_PACKAGES): {e}. "
                "On CPU-only hosts serve the 'ranker' model instead."
            ) from e
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{config['name']}: torch {torch.__version__} sees no CUDA device "
                "(torch.cuda.is_available() is False). On CPU-only hosts serve 'ranker'."
            )
        self.torch = torch
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        self.device = torch.device("cuda", device_id)
        torch.cuda.set_device(self.device)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self._load(os.path.join(version_dir, "weights.npz"))
        with torch.inference_mode():  # warm up: kernels and the caching allocator
            for rows in (1, 64):
                self._forward(torch.zeros((rows, self.n_features), device=self.device))
        torch.cuda.synchronize(self.device)

    def _load(self, path: str) -> None:
        torch = self.torch
        w = np.load(path)
        n_layers = sum(1 for k in w.files if k.startswith("w"))
        half = torch.float16 if self.precision == "fp16" else torch.float32

        def dev(a: np.ndarray, dtype: Any) -> Any:
            # Through a list, not torch's NumPy bridge: the stub may run NumPy 1.x
            # under a torch built against NumPy 2 (weights are small; load time only).
            return torch.tensor(np.asarray(a, np.float32).tolist(), device=self.device).to(dtype)

        self.mean = dev(w["mean"], torch.float32)
        self.scale = dev(w["scale"], torch.float32)
        self.layers = [(dev(w[f"w{i}"], half), dev(w[f"b{i}"], half)) for i in range(n_layers)]
        if self.mean.shape[0] != self.n_features:
            raise ValueError(
                f"weights have {self.mean.shape[0]} features, config {self.n_features}"
            )

    def _forward(self, x: Any) -> Any:
        h = ((x - self.mean) / self.scale).to(self.layers[0][0].dtype)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = self.torch.addmm(b, h, w)
            if i < last:
                h = self.torch.relu(h)
        return self.torch.sigmoid(h.float())

    def _input(self, request: Any) -> Any:
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is None:
            return f"missing input tensor {self.input_name!r}"
        try:
            x = self.torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        except (RuntimeError, TypeError, AttributeError):  # older stubs: NumPy path
            x = self.torch.from_numpy(np.array(tensor.as_numpy()))
        if x.dtype != self.torch.float32:
            return f"expected FP32 input, got {x.dtype}"
        if x.ndim != 2 or x.shape[1] != self.n_features or x.shape[0] == 0:
            return f"expected a [N, {self.n_features}] input, got {list(x.shape)}"
        if not bool(self.torch.isfinite(x).all()):
            return "input contains NaN or Inf"
        return x

    def execute(self, requests: list[Any]) -> list[Any]:
        torch = self.torch
        responses: list[Any] = [None] * len(requests)
        xs, owners = [], []
        for i, request in enumerate(requests):
            x = self._input(request)
            if isinstance(x, str):
                responses[i] = _error(x)
            else:
                xs.append(x)
                owners.append(i)
        if not xs:
            return responses
        try:
            with torch.inference_mode():
                batch = xs[0] if len(xs) == 1 else torch.cat(xs)
                scores = self._forward(batch.to(self.device, non_blocking=True)).cpu()
        except Exception as e:  # noqa: BLE001 - every request must still get a response
            for i in owners:
                responses[i] = _error(f"scoring failed: {type(e).__name__}: {e}", "INTERNAL")
            return responses
        offset = 0
        for i, x in zip(owners, xs, strict=True):
            out = scores[offset : offset + x.shape[0]].contiguous()
            offset += x.shape[0]
            tensor = pb_utils.Tensor.from_dlpack(
                self.output_name, torch.utils.dlpack.to_dlpack(out)
            )
            responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses
