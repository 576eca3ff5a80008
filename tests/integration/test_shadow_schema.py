"""Which shadow candidates may consume the primary's tensor, on a real Triton:
one trained on the same schema is mirrored and scored; one with as many
columns in another schema (another order) is not, since its score difference
against the primary would compare misaligned features."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from router.backends.triton import TritonModelServer
from router.pipeline.catalog import ModelCatalog, ModelVersion, load_version
from router.pipeline.experiment import ShadowSpec
from router.pipeline.inference import score
from router.pipeline.shadow import ShadowMirror
from scripts.stack import TritonServer


@pytest_asyncio.fixture(scope="module")
async def fraud_server(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TritonModelServer]:
    logs = tmp_path_factory.mktemp("shadow-triton")
    with TritonServer(demo_build / "model_repository", logs) as triton:
        server = TritonModelServer(triton.grpc_url, triton.http_url)
        await server.start(30)
        try:
            yield server
        finally:
            await server.close()


async def _mirror(
    server: TritonModelServer, primary: ModelVersion, candidate: ModelVersion
) -> list[tuple[str, int, str]]:
    results: list[tuple[str, int, str]] = []
    mirror = ShadowMirror(
        servers=lambda pool: server,
        max_in_flight=4,
        timeout_s=5.0,
        on_result=lambda model, version, result, latency, diff: results.append(
            (model, version, result)
        ),
    )
    row = np.asarray([primary.defaults], dtype=np.float32)
    primary_scores, _ = await score(server, primary, row, 5.0)
    spec = ShadowSpec(model=primary.model, version=candidate.version, fraction=1.0)
    catalog = ModelCatalog([primary, candidate])
    mirror.submit(spec, "default", catalog, "req-1", primary.assembled_hash, row, primary_scores)
    await mirror.drain()
    return results


async def test_a_candidate_on_the_same_schema_is_mirrored_and_scored(
    demo_build: Path, fraud_server: TritonModelServer
) -> None:
    repo = demo_build / "model_repository"
    primary, candidate = load_version(repo, "fraud", 2), load_version(repo, "fraud", 1)
    assert candidate.schema_hash == primary.assembled_hash
    assert await _mirror(fraud_server, primary, candidate) == [("fraud", 1, "ok")]


async def test_a_candidate_with_as_many_columns_in_another_schema_is_not(
    demo_build: Path, fraud_server: TritonModelServer
) -> None:
    repo = demo_build / "model_repository"
    primary = load_version(repo, "fraud", 2)
    other = dataclasses.replace(load_version(repo, "fraud", 1), schema_hash="g", assembled_hash="g")
    assert other.n_features == primary.n_features
    assert await _mirror(fraud_server, primary, other) == []
