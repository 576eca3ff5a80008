"""Shared execute() plumbing for the Python-backend models.

Copied next to each model.py by the repository builder. Triton hands
``execute`` every request of one dynamic batch: validate each, score all valid
rows in one call, and split the scores back. A malformed request (missing
tensor, wrong shape or dtype, NaN/Inf, which Triton passes through unchecked)
gets its own INVALID_ARG error instead of failing its batch-mates; a scoring
failure answers every request of the batch with INTERNAL rather than raising,
which would leave Triton without responses.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

Score = Callable[[np.ndarray], Any]


def error_response(message: str, code: str = "INVALID_ARG") -> Any:
    """An InferenceResponse carrying only an error (``code`` names a TritonError code)."""
    kind = getattr(pb_utils.TritonError, code, None)
    err = pb_utils.TritonError(message) if kind is None else pb_utils.TritonError(message, kind)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def validate(x: np.ndarray, n_features: int) -> str | None:
    """Why ``x`` is not a usable [N, n_features] FP32 batch, or None."""
    if x.dtype != np.float32:
        return f"expected FP32 input, got {x.dtype}"
    if x.ndim != 2 or x.shape[1] != n_features or x.shape[0] == 0:
        return f"expected a [N, {n_features}] input, got {list(x.shape)}"
    if not np.isfinite(x).all():
        return "input contains NaN or Inf"
    return None


class BatchedModel(abc.ABC):
    """Base for the Python-backend models: reads the I/O spec from the model
    config; subclasses load their artifact in ``load`` and implement ``score``."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name: str = config["input"][0]["name"]
        self.output_name: str = config["output"][0]["name"]
        self.n_features = int(config["input"][0]["dims"][0])
        self.parameters: dict[str, dict[str, str]] = config.get("parameters", {})
        # Where Triton placed this instance ("CPU" or "GPU", and which device).
        self.instance_kind = args.get("model_instance_kind", "CPU")
        self.device_id = int(args.get("model_instance_device_id", "0") or 0)
        self.load(os.path.join(args["model_repository"], args["model_version"]))
        # Warm up: the first real request should not pay for lazy initialisation.
        self.score(np.zeros((1, self.n_features), dtype=np.float32))

    @abc.abstractmethod
    def load(self, version_dir: str) -> None:
        """Load the version's artifact from ``version_dir``."""

    @abc.abstractmethod
    def score(self, x: np.ndarray) -> Any:
        """float32 [N, n_features] -> N scores."""

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return execute_batched(
            requests, self.input_name, self.output_name, self.n_features, self.score
        )


def execute_batched(
    requests: Sequence[Any], input_name: str, output_name: str, n_features: int, score: Score
) -> list[Any]:
    """``score(x: float32[N, n_features]) -> float32[N]`` over all valid requests."""
    responses: list[Any] = [None] * len(requests)
    arrays: list[np.ndarray] = []
    owners: list[int] = []
    for i, request in enumerate(requests):
        tensor = pb_utils.get_input_tensor_by_name(request, input_name)
        if tensor is None:
            responses[i] = error_response(f"missing input tensor {input_name!r}")
            continue
        x = tensor.as_numpy()
        problem = validate(x, n_features)
        if problem is not None:
            responses[i] = error_response(problem)
            continue
        arrays.append(x)
        owners.append(i)
    if not arrays:
        return responses
    batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    try:
        scores = np.asarray(score(np.ascontiguousarray(batch)), dtype=np.float32).reshape(-1)
        if scores.shape[0] != batch.shape[0]:
            raise ValueError(f"{scores.shape[0]} scores for {batch.shape[0]} rows")
    except Exception as e:  # noqa: BLE001 - every request must still get a response
        for i in owners:
            responses[i] = error_response(f"scoring failed: {type(e).__name__}: {e}", "INTERNAL")
        return responses
    offset = 0
    for i, x in zip(owners, arrays, strict=True):
        out = scores[offset : offset + len(x)].reshape(-1, 1)
        offset += len(x)
        responses[i] = pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(output_name, out)]
        )
    return responses
