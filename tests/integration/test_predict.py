"""End to end through the real router, Triton and Feast (SQLite online store)."""

from __future__ import annotations

import asyncio
import math
import pickle
from typing import Any

import grpc
import numpy as np
import pytest
import xgboost as xgb

from inferline.v1 import inference_pb2 as pb
from scripts.stack import Stack
from tests.integration.conftest import TENANT, OfflineData

FRESH = pb.FRESHNESS_STATUS_FRESH
rng = np.random.default_rng(20261128)


def v(x: float | int | str | bool) -> pb.Value:
    if isinstance(x, bool):
        return pb.Value(bool_value=x)
    if isinstance(x, int):
        return pb.Value(int64_value=x)
    if isinstance(x, str):
        return pb.Value(string_value=x)
    return pb.Value(double_value=x)


def fraud_candidate(account_id: int, amount: float = 42.5, hour: int = 13, intl: int = 0) -> Any:
    return pb.Candidate(
        candidate_id=f"acct-{account_id}",
        entities={"account_id": v(account_id)},
        features={
            "amount": v(amount),
            "hour_of_day": v(float(hour)),
            "is_international": v(float(intl)),
        },
    )


def ranker_candidate(user_id: int, item_id: int, position: int, hour: int = 9) -> Any:
    return pb.Candidate(
        candidate_id=f"item-{item_id}",
        entities={"user_id": v(user_id), "item_id": v(item_id)},
        features={"position": v(float(position)), "hour_of_day": v(float(hour))},
    )


def expected_rows(offline: OfflineData, meta: dict[str, Any], cands: list[Any]) -> np.ndarray:
    """Assemble feature rows from the offline source, in the version's schema order."""
    frames: dict[str, Any] = {}
    rows = []
    for c in cands:
        row = []
        for f in meta["features"]:
            if f["source"] == "request":
                row.append(c.features[f["name"]].double_value)
                continue
            view = f["view"]
            if view not in frames:
                frames[view] = offline.view_frame(view)
            keys = tuple(c.entities[k].int64_value for k in meta["entities"][view])
            key = keys[0] if len(keys) == 1 else keys
            row.append(frames[view].loc[key, f["name"]])
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def fresh_ids(n: int, hi: int, k: int) -> list[int]:
    """k random entity ids in 1..hi that are not planted stale (id % 50 == 7)."""
    ids = [i for i in range(1, hi + 1) if i % 50 != 7]
    return [int(x) for x in rng.choice(ids, size=k, replace=False)]


async def predict(stub: Any, deadline_s: float = 10, **kw: Any) -> Any:
    return await stub.Predict(pb.PredictRequest(**kw), metadata=TENANT, timeout=deadline_s)


@pytest.mark.parametrize("version", [1, 2])
async def test_fraud_parity_200_entities(stub: Any, offline: OfflineData, version: int) -> None:
    meta = offline.metadata("fraud", version)
    booster = xgb.Booster()
    booster.load_model(str(offline.build / "training" / f"fraud_v{version}.json"))
    ids = fresh_ids(200, 5000, 200)
    cands = [
        fraud_candidate(
            a,
            amount=float(rng.gamma(2.0, 40.0)),
            hour=int(rng.integers(0, 24)),
            intl=int(rng.integers(0, 2)),
        )
        for a in ids
    ]
    got: list[float] = []
    for i in range(0, len(cands), 50):  # several calls of up to 50 candidates
        resp = await predict(stub, version=f"fraud@{version}", candidates=cands[i : i + 50])
        assert resp.model.name == "fraud" and resp.model.version == version
        assert not resp.degraded, resp.degraded_reasons
        assert all(f.status == FRESH for s in resp.scores for f in s.freshness)
        got += [s.score for s in resp.scores]
    want = booster.inplace_predict(expected_rows(offline, meta, cands))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


async def test_ranker_parity_200_candidates(stub: Any, offline: OfflineData) -> None:
    meta = offline.metadata("ranker", 1)
    mlp = pickle.loads((offline.build / "training" / "ranker_v1.pkl").read_bytes())
    users = fresh_ids(10, 2000, 10)
    items = fresh_ids(200, 1000, 200)
    cands = [ranker_candidate(users[i // 20], it, position=i % 20) for i, it in enumerate(items)]
    got: list[float] = []
    for i in range(0, 200, 20):  # one user per call, 20 items each
        resp = await predict(stub, alias="ranker:prod", candidates=cands[i : i + 20])
        assert (resp.model.name, resp.model.version, resp.model.alias) == ("ranker", 1, "prod")
        assert not resp.degraded, resp.degraded_reasons
        assert [s.candidate_id for s in resp.scores] == [c.candidate_id for c in cands[i : i + 20]]
        got += [s.score for s in resp.scores]
    want = mlp.predict_proba(expected_rows(offline, meta, cands))[:, 1]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


async def test_alias_resolves_and_is_echoed(stub: Any) -> None:
    resp = await predict(
        stub,
        alias="fraud:canary",
        candidates=[fraud_candidate(11)],
        request_id="req-123",
        options=pb.PredictOptions(return_timings=True),
    )
    assert (resp.model.name, resp.model.version, resp.model.alias) == ("fraud", 2, "canary")
    pinned = await predict(stub, version="fraud@2", candidates=[fraud_candidate(11)])
    assert pinned.model.alias == "" and pinned.scores[0].score == resp.scores[0].score
    assert resp.request_id == "req-123"
    assert len(resp.trace_id) == 32 and int(resp.trace_id, 16) > 0
    stages = {t.stage for t in resp.timings}
    assert {"routing", "features", "inference", "total"} <= stages
    assert pinned.timings == []  # only on request


async def test_traceparent_trace_id_is_echoed(stub: Any) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    resp = await stub.Predict(
        pb.PredictRequest(alias="fraud:prod", candidates=[fraud_candidate(12)]),
        metadata=(*TENANT, ("traceparent", f"00-{trace}-00f067aa0ba902b7-01")),
        timeout=10,
    )
    assert resp.trace_id == trace


async def test_missing_and_stale_entities_are_degraded_not_fresh(
    stub: Any, offline: OfflineData
) -> None:
    stale, missing, fresh = 57, 999_999, 58  # 57 % 50 == 7: planted stale
    resp = await predict(
        stub, alias="fraud:prod", candidates=[fraud_candidate(x) for x in (stale, missing, fresh)]
    )
    assert resp.degraded
    assert set(resp.degraded_reasons) >= {"features_stale", "features_missing"}
    statuses = [s.freshness[0].status for s in resp.scores]
    assert statuses == [pb.FRESHNESS_STATUS_STALE, pb.FRESHNESS_STATUS_MISSING, FRESH]
    assert resp.scores[0].freshness[0].age_ms > 86_400_000  # older than the 1-day TTL
    # Stale and missing rows are scored on the training defaults, not on the stale values.
    meta = offline.metadata("fraud", 1)
    booster = xgb.Booster()
    booster.load_model(str(offline.build / "training" / "fraud_v1.json"))
    defaults = np.asarray([[f["default"] for f in meta["features"]]], dtype=np.float32)
    cand = fraud_candidate(stale)
    for j, f in enumerate(meta["features"]):
        if f["source"] == "request":
            defaults[0, j] = cand.features[f["name"]].double_value
    want = float(booster.inplace_predict(defaults)[0])
    assert resp.scores[0].score == pytest.approx(want, abs=1e-5)
    assert resp.scores[1].score == pytest.approx(want, abs=1e-5)


async def _status(stub: Any, metadata: Any = TENANT, **kw: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Predict(pb.PredictRequest(**kw), metadata=metadata, timeout=10)
    details = exc.value.details() or ""
    assert "Traceback" not in details and 'File "' not in details
    return exc.value.code(), details


BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"alias": "nosuch:prod"}, grpc.StatusCode.NOT_FOUND),
        ({"alias": "fraud:staging"}, grpc.StatusCode.NOT_FOUND),
        ({"version": "fraud@9"}, grpc.StatusCode.NOT_FOUND),
        ({"alias": "fraud"}, BAD),
        ({"alias": "fraud:prod:x"}, BAD),
        ({"version": "fraud@one"}, BAD),
        ({"version": "fraud"}, BAD),
        ({}, BAD),
    ],
)
async def test_bad_model_reference(stub: Any, kw: dict[str, str], code: grpc.StatusCode) -> None:
    got, _ = await _status(stub, candidates=[fraud_candidate(1)], **kw)
    assert got == code


@pytest.mark.parametrize(
    "cands",
    [
        [],
        [fraud_candidate(i + 1) for i in range(65)],
        [fraud_candidate(1, amount=math.nan)],
        [fraud_candidate(1, amount=math.inf)],
        [fraud_candidate(1, amount=-math.inf)],
        [
            pb.Candidate(
                entities={"account_id": v(1)},
                features={"amount": v("12.5"), "hour_of_day": v(1.0), "is_international": v(0.0)},
            )
        ],
        [
            pb.Candidate(
                entities={"account_id": v("1")},
                features={"amount": v(1.0), "hour_of_day": v(1.0), "is_international": v(0.0)},
            )
        ],
        [pb.Candidate(entities={"account_id": v(1)}, features={"amount": v(1.0)})],
        [
            pb.Candidate(
                features={"amount": v(1.0), "hour_of_day": v(1.0), "is_international": v(0.0)}
            )
        ],
        [
            pb.Candidate(
                entities={"account_id": pb.Value()},
                features={"amount": v(1.0), "hour_of_day": v(1.0), "is_international": v(0.0)},
            )
        ],
    ],
    ids=[
        "empty",
        "65",
        "nan",
        "inf",
        "-inf",
        "string-feature",
        "string-key",
        "missing-feature",
        "missing-entity-key",
        "unset-value",
    ],
)
async def test_bad_candidates_are_invalid_argument(stub: Any, cands: list[Any]) -> None:
    code, _ = await _status(stub, alias="fraud:prod", candidates=cands)
    assert code == BAD


async def test_identity_and_authorization(stub: Any) -> None:
    code, _ = await _status(stub, metadata=(), alias="fraud:prod", candidates=[fraud_candidate(1)])
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _status(
        stub,
        metadata=(("x-inferline-tenant", "nobody"),),
        alias="fraud:prod",
        candidates=[fraud_candidate(1)],
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = await _status(
        stub,
        metadata=(("x-inferline-tenant", "payments"),),
        alias="ranker:prod",
        candidates=[ranker_candidate(1, 1, 0)],
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("body", [b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256))])
async def test_garbage_body_does_not_crash_or_wedge(stack: Stack, stub: Any, body: bytes) -> None:
    assert stack.router is not None
    async with grpc.aio.insecure_channel(stack.router.address) as ch:
        raw = ch.unary_unary("/inferline.v1.InferenceService/Predict")
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await raw(body, metadata=TENANT, timeout=5)
        assert exc.value.code() in (BAD, grpc.StatusCode.UNAUTHENTICATED)
        assert exc.value.code() != grpc.StatusCode.INTERNAL
    resp = await predict(stub, alias="fraud:prod", candidates=[fraud_candidate(3)])
    assert len(resp.scores) == 1
    stack.check_alive()


async def test_tiny_deadline_answers_in_time_or_deadline_exceeded(stub: Any) -> None:
    """A deadline too short for the work: a degraded answer or DEADLINE_EXCEEDED, never a hang."""
    import time

    for _ in range(5):
        t0 = time.monotonic()
        try:
            resp = await predict(
                stub, deadline_s=0.002, alias="fraud:prod", candidates=[fraud_candidate(4)]
            )
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            assert len(resp.scores) == 1 and math.isfinite(resp.scores[0].score)
        assert time.monotonic() - t0 < 0.5
    resp = await predict(stub, alias="fraud:prod", candidates=[fraud_candidate(4)])
    assert len(resp.scores) == 1


async def test_health_and_reflection(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert stack.router is not None
    async with grpc.aio.insecure_channel(stack.router.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "inferline.v1.InferenceService"):
            r = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        async for r in refl.ServerReflectionInfo(iter([req]), timeout=5):
            names = {s.name for s in r.list_services_response.service}
            assert "inferline.v1.InferenceService" in names
            break


async def test_idempotent_retry_returns_identical_response_scored_once(
    stack: Stack, stub: Any
) -> None:
    import uuid

    assert stack.triton is not None

    def successes() -> float:
        text = stack.triton.http_get("/metrics", metrics=True).decode()  # type: ignore[union-attr]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("nv_inference_request_success{")
            and 'model="fraud"' in line
            and 'version="1"' in line
        )

    key = f"order-{uuid.uuid4()}"
    req = pb.PredictRequest(
        alias="fraud:prod",
        idempotency_key=key,
        request_id="first",
        candidates=[fraud_candidate(101, amount=77.0)],
    )
    before = successes()
    first = await stub.Predict(req, metadata=TENANT, timeout=10)
    req.request_id = "retry"  # a retry may carry a new request id
    second = await stub.Predict(req, metadata=TENANT, timeout=10)
    assert second.SerializeToString() == first.SerializeToString()
    assert second.request_id == "first"
    # Triton publishes its counters with a lag: wait for the first, then make
    # sure no second one shows up.
    import time

    deadline = time.monotonic() + 6
    while successes() - before < 1 and time.monotonic() < deadline:  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.5)
    assert successes() - before == 1  # scored once
    # Same key, different request: refused rather than answered with the wrong scores.
    other = pb.PredictRequest(
        alias="fraud:prod", idempotency_key=key, candidates=[fraud_candidate(102)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Predict(other, metadata=TENANT, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
