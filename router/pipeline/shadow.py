"""Shadow traffic: mirror a fraction of live requests to a candidate version.

Off the caller's path by construction: the mirror is an asyncio task created
after the primary answer exists, it reuses the already-assembled feature
tensor (no second feature read), and it never touches the caller's response.
Bounded: at most ``max_in_flight`` mirrors at once; beyond that a mirror is
dropped and counted, never queued, so a slow candidate cannot build a backlog
that competes with live traffic. The sample is deterministic per request id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from router.errors import InferlineError
from router.pipeline.catalog import ModelCatalog
from router.pipeline.experiment import ShadowSpec, bucket
from router.pipeline.inference import ModelServer, score

ShadowResult = Callable[[str, int, str, float, float], None]
"""(model, version, result "ok"|"error"|"dropped", latency_s, mean |score diff|)."""


class ShadowMirror:
    def __init__(
        self,
        *,
        servers: Callable[[str], ModelServer],
        max_in_flight: int,
        timeout_s: float,
        on_result: ShadowResult,
    ) -> None:
        self._servers = servers
        self._max = max_in_flight
        self._timeout_s = timeout_s
        self._on_result = on_result
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0

    def submit(
        self,
        spec: ShadowSpec,
        pool: str,
        catalog: ModelCatalog,
        request_id: str,
        assembled_hash: str,
        matrix: np.ndarray,
        primary: np.ndarray,
    ) -> None:
        """Mirror this request if it is in the sampled fraction (never raises).

        ``assembled_hash`` is the schema ``matrix`` was assembled for: only a
        candidate trained on that very schema can consume it (the same number
        of columns in another order would be scored on misaligned features).
        """
        if bucket(f"shadow:{spec.model}", request_id) >= spec.fraction:
            return
        if (spec.model, spec.version) not in catalog:
            return
        version = catalog.get(spec.model, spec.version)
        if not version.schema_ok or version.schema_hash != assembled_hash:
            return
        if self.in_flight >= self._max:
            self._on_result(spec.model, spec.version, "dropped", 0.0, 0.0)
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._run(pool, version.model, version.version, catalog, matrix, primary)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        pool: str,
        model: str,
        v: int,
        catalog: ModelCatalog,
        matrix: np.ndarray,
        primary: np.ndarray,
    ) -> None:
        t0 = time.monotonic()
        try:
            out, _ = await score(
                self._servers(pool), catalog.get(model, v), matrix, self._timeout_s
            )
        except InferlineError:
            self._on_result(model, v, "error", time.monotonic() - t0, 0.0)
            return
        finally:
            self.in_flight -= 1
        diff = float(np.mean(np.abs(out - primary)))
        self._on_result(model, v, "ok", time.monotonic() - t0, diff)

    async def drain(self) -> None:
        """Wait for running mirrors (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
