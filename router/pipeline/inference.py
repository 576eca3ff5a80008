"""Inference stage: hand the assembled tensor to the model server.

The router never batches: Triton's dynamic batcher owns batching, so each
request goes out as it arrives, bounded by the caller's remaining deadline.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from router.errors import Unavailable
from router.pipeline.catalog import ModelVersion


class ModelServer(Protocol):
    """The model server as the pipeline sees it (see backends.triton)."""

    async def infer(
        self,
        model: str,
        version: int,
        input_name: str,
        output_name: str,
        batch: np.ndarray,
        timeout_s: float,
    ) -> np.ndarray: ...


async def score(
    server: ModelServer, version: ModelVersion, batch: np.ndarray, timeout_s: float
) -> tuple[np.ndarray, list[float]]:
    """Scores for every row of ``batch``, one per candidate: as the model's 1-D
    output array and as Python floats (what the answer, the score cache and the
    experiment stats read: converted once here, not by each of them)."""
    out = await server.infer(
        version.model,
        version.version,
        version.input_name,
        version.output_name,
        batch,
        timeout_s,
    )
    if out.ndim != 1:
        out = out.reshape(-1)
    values: list[float] = out.tolist()
    # all(map(isfinite)) over a few Python floats: cheaper than two numpy calls.
    if len(values) != batch.shape[0] or not all(map(math.isfinite, values)):
        # A model returning the wrong shape or NaN must never reach a caller as a score.
        raise Unavailable("model returned an invalid result")
    return out, values
