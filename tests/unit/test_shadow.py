"""Shadow mirroring decisions: which candidates may consume the primary's tensor.

The model server here only records calls (the real-Triton shadow run is
tests/integration/test_release.py); what is under test is the mirror's choice.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np

from router.pipeline.catalog import ModelCatalog, ModelVersion
from router.pipeline.experiment import ShadowSpec
from router.pipeline.shadow import ShadowMirror

PRIMARY = ModelVersion(
    model="m",
    version=1,
    input_name="i",
    output_name="o",
    n_features=2,
    schema_hash="h",
    default_score=0.1,
    views=(),
    request_features=(),
    defaults=(0.0, 0.0),
    assembled_hash="h",
)
X = np.asarray([[1.0, 2.0]], dtype=np.float32)


class Recording:
    def __init__(self) -> None:
        self.calls: list[int] = []

    async def infer(
        self,
        model: str,
        version: int,
        input_name: str,
        output_name: str,
        batch: np.ndarray,
        timeout_s: float,
    ) -> np.ndarray:
        self.calls.append(version)
        return batch.sum(axis=1)


async def _mirror(candidate: ModelVersion) -> tuple[list[int], list[tuple[str, float]]]:
    server = Recording()
    results: list[tuple[str, float]] = []
    mirror = ShadowMirror(
        servers=lambda pool: server,
        max_in_flight=4,
        timeout_s=1.0,
        on_result=lambda m, v, result, latency, diff: results.append((result, diff)),
    )
    catalog = ModelCatalog([PRIMARY, candidate])
    spec = ShadowSpec(model="m", version=candidate.version, fraction=1.0)
    mirror.submit(spec, "default", catalog, "req-1", PRIMARY.assembled_hash, X, np.asarray([2.0]))
    await mirror.drain()
    await asyncio.sleep(0)
    return server.calls, results


async def test_a_candidate_on_the_same_schema_is_mirrored() -> None:
    calls, results = await _mirror(dataclasses.replace(PRIMARY, version=2))
    assert calls == [2] and results == [("ok", 1.0)]


async def test_a_candidate_with_as_many_features_in_another_schema_is_not() -> None:
    """Two columns either way, but in another order (another schema hash):
    scoring the primary's tensor would compare misaligned features."""
    other = dataclasses.replace(PRIMARY, version=2, schema_hash="g", assembled_hash="g")
    assert await _mirror(other) == ([], [])
