"""Shared execute() plumbing for the Python-backend models.

Copied next to each model.py by the repository builder. Triton hands
``execute`` every request of one dynamic batch: validate each, score all valid
rows in one call, and split the scores back, answering a malformed request
with its own error instead of failing its batch-mates.
"""

import abc
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class BatchedModel(abc.ABC):
    """Base for the Python-backend models: reads the I/O spec from the model
    config; subclasses load their artifact in ``load`` and implement ``score``."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.n_features = int(config["input"][0]["dims"][0])
        self.load(os.path.join(args["model_repository"], args["model_version"]))

    @abc.abstractmethod
    def load(self, version_dir):
        """Load the version's artifact from ``version_dir``."""

    @abc.abstractmethod
    def score(self, x):
        """float32 [N, n_features] -> N scores."""

    def execute(self, requests):
        return execute_batched(
            requests, self.input_name, self.output_name, self.n_features, self.score
        )


def execute_batched(requests, input_name, output_name, n_features, score):
    """``score(x: float32[N, n_features]) -> float32[N]`` over all valid requests."""
    arrays = []
    for request in requests:
        x = pb_utils.get_input_tensor_by_name(request, input_name).as_numpy()
        ok = x.ndim == 2 and x.shape[1] == n_features
        arrays.append(np.asarray(x, dtype=np.float32) if ok else None)
    good = [a for a in arrays if a is not None]
    scores = (
        np.asarray(score(np.concatenate(good)), dtype=np.float32).reshape(-1)
        if good
        else np.empty(0, np.float32)
    )
    responses, offset = [], 0
    for a in arrays:
        if a is None:
            err = pb_utils.TritonError(f"expected a [N, {n_features}] FP32 input")
            responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
            continue
        out = scores[offset : offset + len(a)].reshape(-1, 1)
        offset += len(a)
        tensor = pb_utils.Tensor(output_name, out)
        responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
    return responses
