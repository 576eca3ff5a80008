"""The built model repository served by the real tritonserver matches the
in-process reference models (train/serve parity at the Triton boundary).

Triton runs from the pytriton wheel via the shared launcher (scripts.stack),
with the Python-backend stub, OMP_NUM_THREADS=1 and the venv's site-packages
passed to model.py. Rows are real feature rows from the generated tables plus
request features drawn within the training ranges.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from tritonclient.grpc import InferenceServerClient, InferInput
from tritonclient.grpc import aio as triton_aio
from tritonclient.utils import InferenceServerException

from feast_repo.data import VIEWS_BY_NAME, feature_values
from scripts.stack import TritonServer
from triton_models.build import MAX_QUEUE_DELAY_US

ROWS = 200
ATOL = 1e-5
MODELS = [("fraud", 1), ("fraud", 2), ("ranker", 1)]


@pytest.fixture(scope="module")
def triton(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = TritonServer(demo_build / "model_repository", tmp_path_factory.mktemp("triton"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _metadata(build: Path, model: str, version: int) -> dict[str, Any]:
    path = build / "model_repository" / model / str(version) / "metadata.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def sample_rows(meta: dict[str, Any], n: int, seed: int) -> np.ndarray:
    """``n`` input rows in tensor order: feature rows of random entities, request
    features uniform in their training range (integers where training had them)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, len(meta["features"])), dtype=np.float32)
    views: dict[str, Any] = {}
    picks: dict[str, np.ndarray] = {}
    for j, f in enumerate(meta["features"]):
        if f["source"] == "feast":
            view = f["view"]
            if view not in views:
                spec = VIEWS_BY_NAME[view]
                views[view] = feature_values(spec).set_index(spec.join_key)
                picks[view] = rng.integers(1, spec.n_entities + 1, n)
            x[:, j] = views[view].loc[picks[view], f["name"]].to_numpy(np.float32)
        else:
            lo, hi = f["min"], f["max"]
            integral = float(lo).is_integer() and float(hi).is_integer() and hi - lo <= 64
            x[:, j] = rng.integers(int(lo), int(hi) + 1, n) if integral else rng.uniform(lo, hi, n)
    return x


def reference_scores(build: Path, model: str, version: int, x: np.ndarray) -> np.ndarray:
    if model == "fraud":
        booster = xgb.Booster(model_file=str(build / "training" / f"fraud_v{version}.json"))
        return np.asarray(booster.inplace_predict(x, predict_type="value"))
    pipeline = pickle.loads((build / "training" / f"ranker_v{version}.pkl").read_bytes())
    return np.asarray(pipeline.predict_proba(x)[:, 1])


def _input(x: np.ndarray) -> InferInput:
    inp = InferInput("input__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def infer(client: InferenceServerClient, model: str, version: int, x: np.ndarray) -> np.ndarray:
    result = client.infer(model, [_input(x)], model_version=str(version))
    out = result.as_numpy("output__0")
    assert out is not None and out.shape == (len(x), 1) and out.dtype == np.float32
    return np.asarray(out[:, 0])


def test_served_configs(triton: TritonServer) -> None:
    client = InferenceServerClient(triton.grpc_url)
    try:
        for model, version in MODELS:
            assert client.is_model_ready(model, str(version)), (model, version)
        for model in ("fraud", "ranker"):
            cfg = client.get_model_config(model).config
            assert cfg.max_batch_size == 64
            # The sweep's pick (docs/benchmarks-batching.md): Triton batches what
            # queued behind a busy instance without holding requests back.
            assert cfg.HasField("dynamic_batching")
            assert cfg.dynamic_batching.max_queue_delay_microseconds == MAX_QUEUE_DELAY_US == 0
            # preferred_batch_size is left unset in the file (Triton reports [64] then).
            assert (
                "preferred_batch_size"
                not in (triton.model_repository / model / "config.pbtxt").read_text()
            )
            assert [g.count for g in cfg.instance_group] == [1]
    finally:
        client.close()


@pytest.mark.parametrize(("model", "version"), MODELS)
def test_parity_with_reference(
    triton: TritonServer, demo_build: Path, model: str, version: int
) -> None:
    meta = _metadata(demo_build, model, version)
    x = sample_rows(meta, ROWS, seed=version * 1000 + len(model))
    want = reference_scores(demo_build, model, version, x)
    client = InferenceServerClient(triton.grpc_url)
    try:
        # Mixed request sizes, up to max_batch_size (64) rows each.
        cuts = [0, 1, 9, 41, 105, 140, ROWS]
        got = np.concatenate(
            [infer(client, model, version, x[a:b]) for a, b in itertools.pairwise(cuts)]
        )
    finally:
        client.close()
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert got.min() > 0.0 and got.max() < 1.0


async def test_concurrent_requests_share_batches_and_bad_ones_fail_alone(
    triton: TritonServer, demo_build: Path
) -> None:
    """Concurrent requests coalesce in one execute(); a NaN request there gets its own
    INVALID_ARG while its batch-mates are scored correctly."""
    meta = _metadata(demo_build, "fraud", 1)
    x = sample_rows(meta, 60, seed=7)
    want = reference_scores(demo_build, "fraud", 1, x)
    bad = x[:2].copy()
    bad[1, 3] = np.nan
    client = triton_aio.InferenceServerClient(triton.grpc_url)
    try:
        before = await _executions(client)
        chunks = [x[i : i + 3] for i in range(0, 60, 3)]
        calls = [client.infer("fraud", [_input(c)], model_version="1") for c in chunks]
        calls.insert(7, client.infer("fraud", [_input(bad)], model_version="1"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        executions = await _executions(client) - before
    finally:
        await client.close()
    # While one execute() runs, the rest queue and are handed over together.
    assert 1 <= executions < len(calls), executions
    failed = results.pop(7)
    assert isinstance(failed, InferenceServerException)
    assert "NaN" in str(failed.message()), failed
    assert failed.status() == "StatusCode.INVALID_ARGUMENT"
    got = np.concatenate([r.as_numpy("output__0")[:, 0] for r in results])  # type: ignore[union-attr]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


async def _executions(client: triton_aio.InferenceServerClient) -> int:
    stats = await client.get_inference_statistics("fraud", "1")
    return int(stats.model_stats[0].execution_count)


def test_wrong_width_is_rejected_by_triton(triton: TritonServer) -> None:
    client = InferenceServerClient(triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="input__0"):
            client.infer("ranker", [_input(np.zeros((2, 25), np.float32))])
        # The model keeps serving after a rejected request.
        assert infer(client, "ranker", 1, np.zeros((1, 26), np.float32)).shape == (1,)
    finally:
        client.close()


async def test_model_server_answers_alike_over_http_and_grpc(
    triton: TritonServer, demo_build: Path
) -> None:
    """The router's ``TritonModelServer`` on its two transports (HTTP/1.1 binary
    tensors when an HTTP endpoint is configured, gRPC otherwise): the same scores
    for the same rows, and the same statuses for a version Triton does not serve
    and for a tensor it rejects."""
    from router.backends.triton import TritonModelServer
    from router.errors import Code, InferlineError

    meta = _metadata(demo_build, "fraud", 1)
    x = sample_rows(meta, 5, seed=7)
    servers = {
        "http": TritonModelServer(triton.grpc_url, triton.http_url),
        "grpc": TritonModelServer(triton.grpc_url, None),
    }
    scores: dict[str, np.ndarray] = {}
    codes: dict[str, tuple[Code, Code]] = {}
    for name, server in servers.items():
        await server.start(ready_timeout_s=10)
        try:
            scores[name] = (
                await server.infer("fraud", 1, "input__0", "output__0", x, 5.0)
            ).reshape(-1)
            errors = []
            for version, batch in ((99, x), (1, x[:, :5])):
                with pytest.raises(InferlineError) as e:
                    await server.infer("fraud", version, "input__0", "output__0", batch, 5.0)
                errors.append(e.value.code)
            codes[name] = (errors[0], errors[1])
        finally:
            await server.close()
    assert scores["http"].shape == (5,) and np.isfinite(scores["http"]).all()
    np.testing.assert_allclose(scores["grpc"], scores["http"], rtol=1e-6)
    # Not served: the model server cannot answer; rejected tensor: the router's bug.
    assert codes["http"] == codes["grpc"] == (Code.UNAVAILABLE, Code.INTERNAL)


def test_fraud_versions_are_served_by_the_onnx_forest(triton: TritonServer) -> None:
    """The shipped default path: each fraud version logs which path serves it,
    and the parity tests above are what it serves."""
    log = triton.log_path.read_text(errors="replace")
    for version in (1, 2):
        line = f"fraud/{version} scores with the ONNX forest (ONNX forest agrees with XGBoost"
        assert line in log, log[-2000:]
    assert "unusable" not in log and "differs from XGBoost" not in log


def test_every_scoring_path_gives_the_same_scores(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``xgboost_predict`` = onnx, direct and inplace on one real Triton (the
    repository ``bench.xgb_ab`` builds): the same rows, the same scores within the
    serving tolerance, each path logged as chosen."""
    from bench.xgb_ab import PATHS, build_repository

    tmp = tmp_path_factory.mktemp("xgb-paths")
    repo = build_repository(demo_build, tuple(PATHS), tmp / "model_repository")
    x = sample_rows(_metadata(demo_build, "fraud", 1), 64, seed=11)
    want = reference_scores(demo_build, "fraud", 1, x)
    with TritonServer(repo, tmp / "logs") as server:
        client = InferenceServerClient(server.grpc_url)
        try:
            got = {
                p: np.concatenate(
                    [infer(client, f"fraud_{p}", 1, x[:1]), infer(client, f"fraud_{p}", 1, x[1:])]
                )
                for p in PATHS
            }
        finally:
            client.close()
        log = server.log_path.read_text(errors="replace")
    named = {
        "onnx": "the ONNX forest",
        "direct": "XGBoost's C entry point",
        "inplace": "inplace_predict",
    }
    for p in PATHS:
        np.testing.assert_allclose(got[p], want, atol=ATOL, rtol=0)
        assert f"fraud_{p}/1 scores with {named[p]}" in log, log[-2000:]
    # XGBoost's two entry points are one computation: bit for bit equal.
    assert np.array_equal(got["direct"], got["inplace"])
