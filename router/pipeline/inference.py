"""Inference stage: hand the assembled tensor to the model server.

The router never batches: Triton's dynamic batcher owns batching, so each
request goes out as it arrives, bounded by the caller's remaining deadline.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
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


def infer(
    server: ModelServer, version: ModelVersion, batch: np.ndarray, timeout_s: float
) -> Awaitable[np.ndarray]:
    """The model server's raw output for ``batch``: its coroutine, not awaited,
    so the ladder awaits the backend directly (no layer of ours in between)."""
    return server.infer(
        version.model,
        version.version,
        version.input_name,
        version.output_name,
        batch,
        timeout_s,
    )


def checked(out: np.ndarray, rows: int) -> tuple[np.ndarray, list[float]]:
    """One score per input row, as the model's 1-D output array and as Python
    floats (what the answer, the score cache and the experiment stats read:
    converted once here, not by each of them)."""
    if out.ndim != 1:
        out = out.reshape(-1)
    values: list[float] = out.tolist()
    # all(map(isfinite)) over a few Python floats: cheaper than two numpy calls.
    if len(values) != rows or not all(map(math.isfinite, values)):
        # A model returning the wrong shape or NaN must never reach a caller as a score.
        raise Unavailable("model returned an invalid result")
    return out, values


async def score(
    server: ModelServer, version: ModelVersion, batch: np.ndarray, timeout_s: float
) -> tuple[np.ndarray, list[float]]:
    """``infer`` then ``checked``: scores for every row of ``batch``."""
    return checked(await infer(server, version, batch, timeout_s), batch.shape[0])
