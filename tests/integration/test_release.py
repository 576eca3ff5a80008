"""Release safety on a real stack: Triton in explicit model-control mode, the
router with the registry on, the admin API and CLI.

Covers registration (and its refusals), rollback under load, canaries that
roll back (a really slow version) or promote, A/B arms with the kill switch,
outcome ingestion and shadow traffic. The drills are bench/release_drill.py's.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench import release_drill as drill
from inferline.v1 import admin_pb2, admin_pb2_grpc, inference_pb2_grpc
from router import cli
from scripts.stack import Stack

pytestmark = pytest.mark.slow
ADMIN, CALLER = drill.ADMIN, drill.CALLER
POLICY = {**drill.DRILL_POLICY, "min_samples": 200}


@pytest.fixture(scope="module")
def rstack(demo_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("release")
    stack = drill.release_stack(demo_build, work, work / "logs", policy=POLICY, env=drill.DRILL_ENV)
    with stack:
        yield stack


@pytest.fixture(scope="module")
def repo(rstack: Stack) -> Path:
    return rstack.build_dir / "model_repository"


@pytest.fixture
async def chan(rstack: Stack) -> Any:
    assert rstack.router is not None
    async with grpc.aio.insecure_channel(rstack.router.address) as ch:
        yield ch


@pytest.fixture
async def admin(chan: grpc.aio.Channel) -> Any:
    return admin_pb2_grpc.AdminServiceStub(chan)


@pytest.fixture
async def registered(admin: Any) -> None:
    """fraud@1 and fraud@2 registered (idempotent), prod=2 with lkg=1."""
    await drill.register(admin, 1, 2)
    await drill.set_prod(admin, 1, 2)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as page:
        return str(page.read().decode())


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


async def test_register_records_an_immutable_version(admin: Any, repo: Path) -> None:
    resp = await admin.RegisterVersion(
        admin_pb2.RegisterVersionRequest(model="fraud", version=1), metadata=ADMIN, timeout=180
    )
    meta = json.loads((repo / "fraud" / "1" / "metadata.json").read_text())
    assert resp.artifact_sha256 == meta["artifact"]["sha256"]
    assert resp.schema_hash == meta["schema_hash"]
    assert resp.offline_metrics["auc"] == pytest.approx(meta["training"]["metrics"]["auc"])
    # The same content again is idempotent ...
    again = await admin.RegisterVersion(
        admin_pb2.RegisterVersionRequest(model="fraud", version=1), metadata=ADMIN, timeout=180
    )
    assert again.artifact_sha256 == resp.artifact_sha256
    # ... a different artifact under a registered version is refused.
    drill.copy_version(repo, "fraud", 2, 6)
    await drill.register(admin, 6)
    v6 = repo / "fraud" / "6"
    (v6 / "xgboost.json").write_bytes((repo / "fraud" / "1" / "xgboost.json").read_bytes())
    meta6 = json.loads((v6 / "metadata.json").read_text())
    meta6["artifact"]["sha256"] = meta["artifact"]["sha256"]
    (v6 / "metadata.json").write_text(json.dumps(meta6))
    err = await _refused(drill.register(admin, 6))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("version_immutable:")


async def test_schema_hash_mismatch_vs_feature_view_is_refused(
    admin: Any, repo: Path, rstack: Stack
) -> None:
    drill.copy_version(repo, "fraud", 2, 5, schema_hash="0" * 64)
    err = await _refused(drill.register(admin, 5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith("schema_hash_mismatch:")
    assert "does not match the Feast feature views" in err.details()
    # Refused before Triton was asked: not loaded, not registered.
    assert rstack.triton is not None
    with pytest.raises(OSError):
        rstack.triton.http_get("/v2/models/fraud/versions/5/ready")
    status = await drill.status(admin)
    assert 5 not in [v["version"] for v in status["versions"]]


async def test_registration_refusals_are_clear(admin: Any, chan: grpc.aio.Channel) -> None:
    err = await _refused(drill.register(admin, 99))
    assert (err.code(), err.details().split(":")[0]) == (grpc.StatusCode.NOT_FOUND, "not_found")
    # Predict-only tenants may not administer.
    err = await _refused(
        admin.RegisterVersion(
            admin_pb2.RegisterVersionRequest(model="fraud", version=1), metadata=CALLER, timeout=30
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await _refused(
        admin.SetAlias(
            admin_pb2.SetAliasRequest(model="fraud", alias="prod", version=42),
            metadata=ADMIN,
            timeout=30,
        )
    )
    assert err.details().startswith("alias_target:")
    err = await _refused(
        admin.SetAlias(
            admin_pb2.SetAliasRequest(model="fraud", alias="Not An Alias", version=1),
            metadata=ADMIN,
            timeout=30,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.usefixtures("registered")
async def test_rollback_under_load_has_no_failures(rstack: Stack) -> None:
    assert rstack.router is not None
    result = await drill.rollback_drill(
        rstack.router.address, concurrency=8, before_s=2.0, after_s=2.0
    )
    assert result["requests"] > 100
    assert result["failed"] == 0
    assert result["fallback"] == 0
    # Every request sent after the Rollback RPC returned was served by the LKG.
    assert result["served_after_ack"] == [1]


@pytest.mark.usefixtures("registered")
async def test_slow_canary_rolls_back(admin: Any, repo: Path, rstack: Stack) -> None:
    assert rstack.router is not None
    drill.copy_version(repo, "fraud", 2, 3, slow_ms=30)
    await drill.register(admin, 3)
    result = await drill.canary_drill(rstack.router.address, 3, weight=0.3, concurrency=4)
    assert result["action"] == "rollback", result
    assert result["failed"] == 0
    assert result["prod_after"] == 2
    status = await drill.status(admin)
    assert status["experiment"] is None and "fraud:canary" not in status["aliases"]


@pytest.mark.usefixtures("registered")
async def test_healthy_canary_promotes(
    admin: Any, chan: grpc.aio.Channel, repo: Path, rstack: Stack
) -> None:
    assert rstack.router is not None
    drill.copy_version(repo, "fraud", 2, 4)
    await drill.register(admin, 4)
    result = await drill.canary_drill(rstack.router.address, 4, weight=0.3, concurrency=4)
    assert result["action"] == "promote", result
    assert result["prod_after"] == 4
    status = await drill.status(admin)
    assert status["aliases"]["fraud:lkg"] == 2
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    resp = await stub.Predict(drill.predict_request(7, "after-promote"), metadata=CALLER, timeout=5)
    assert (resp.model.version, resp.model.arm) == (4, "")


@pytest.mark.usefixtures("registered")
async def test_ab_arms_outcomes_and_kill_switch(
    admin: Any, chan: grpc.aio.Channel, rstack: Stack
) -> None:
    await admin.SetExperiment(
        admin_pb2.SetExperimentRequest(
            model="fraud",
            name="ab-test",
            salt="s1",
            arms=[
                admin_pb2.ExperimentArm(name="a", version=1, weight=0.5),
                admin_pb2.ExperimentArm(name="b", version=2, weight=0.5),
            ],
        ),
        metadata=ADMIN,
        timeout=30,
    )
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    seen: dict[int, tuple[str, int]] = {}
    for i in range(60):
        acct = 1 + i % 20
        resp = await stub.Predict(
            drill.predict_request(acct, f"ab-{i}"), metadata=CALLER, timeout=5
        )
        arm = (resp.model.arm, resp.model.version)
        assert arm in {("a", 1), ("b", 2)}
        assert seen.setdefault(acct, arm) == arm  # sticky per account
    assert {a for a, _ in seen.values()} == {"a", "b"}
    # A tenant pinning the alias is never enrolled.
    await admin.SetAlias(
        admin_pb2.SetAliasRequest(model="fraud", alias="prod", version=1, tenant="payments"),
        metadata=ADMIN,
        timeout=30,
    )
    pinned = (("x-inferline-tenant", "payments"),)
    for i in range(5):
        resp = await stub.Predict(
            drill.predict_request(1 + i, f"pin-{i}"), metadata=pinned, timeout=5
        )
        assert (resp.model.arm, resp.model.version) == ("", 1)
    outcomes = [admin_pb2.Outcome(request_id=f"ab-{i}", value=float(i % 2)) for i in range(60)]
    outcomes.append(admin_pb2.Outcome(request_id="never-served", value=1.0))
    # An operator granted only the ranker neither moves fraud's arms nor sees fraud.
    ranker_ops = (("x-inferline-tenant", "ranker-ops"),)
    resp = await admin.IngestOutcomes(
        admin_pb2.IngestOutcomesRequest(outcomes=outcomes), metadata=ranker_ops, timeout=30
    )
    assert (resp.joined, resp.unknown) == (0, 61)
    everything = await admin.GetStatus(admin_pb2.ModelRequest(), metadata=ranker_ops, timeout=30)
    assert set(json.loads(everything.status_json)["models"]) <= {"ranker"}
    err = await _refused(
        admin.GetStatus(admin_pb2.ModelRequest(model="fraud"), metadata=ranker_ops, timeout=30)
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    resp = await admin.IngestOutcomes(
        admin_pb2.IngestOutcomesRequest(outcomes=outcomes), metadata=ADMIN, timeout=30
    )
    assert (resp.joined, resp.unknown) == (60, 1)
    status = await drill.status(admin)
    assert sum(a["outcomes"] for a in status["arms"].values()) == 60
    # Per-arm series: the request counter's arm label and the window gauges.
    assert rstack.router is not None
    text = await asyncio.to_thread(scrape, rstack.router.metrics_url)
    assert 'inferline_arm_window_requests{arm="a",model="fraud"}' in text
    assert 'arm="b"' in text and "inferline_arm_outcome_mean" in text
    # Kill switch: everyone back on prod, no arm.
    await admin.KillExperiment(admin_pb2.ModelRequest(model="fraud"), metadata=ADMIN, timeout=30)
    for i in range(10):
        resp = await stub.Predict(
            drill.predict_request(1 + i, f"k-{i}"), metadata=CALLER, timeout=5
        )
        assert (resp.model.arm, resp.model.version) == ("", 2)


@pytest.mark.usefixtures("registered")
async def test_non_finite_numbers_and_bad_experiments_are_clear_refusals(admin: Any) -> None:
    """NaN and infinity never reach release state or the arms' outcome sums, and
    an invalid experiment is named field by field, without pydantic's internals."""
    nan, inf = float("nan"), float("inf")
    before = await drill.status(admin)

    def experiment(weight: float, salt: str = "s") -> Any:
        arms = [
            admin_pb2.ExperimentArm(name="a", version=1, weight=weight),
            admin_pb2.ExperimentArm(name="b", version=2, weight=1.0),
        ]
        req = admin_pb2.SetExperimentRequest(model="fraud", name="ab", salt=salt, arms=arms)
        return admin.SetExperiment(req, metadata=ADMIN, timeout=30)

    refused = [
        await _refused(experiment(nan, salt="")),
        await _refused(experiment(inf)),
        await _refused(
            admin.SetShadow(
                admin_pb2.SetShadowRequest(model="fraud", version=2, fraction=nan),
                metadata=ADMIN,
                timeout=30,
            )
        ),
        await _refused(
            admin.IngestOutcomes(
                admin_pb2.IngestOutcomesRequest(
                    outcomes=[admin_pb2.Outcome(request_id="r", value=v) for v in (1.0, nan)]
                ),
                metadata=ADMIN,
                timeout=30,
            )
        ),
    ]
    assert {e.code() for e in refused} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert [e.details() for e in refused] == [
        "invalid experiment: salt: String should have at least 1 character; "
        "arms.0.weight: Input should be a finite number",
        "invalid experiment: arms.0.weight: Input should be a finite number",
        "invalid_argument: shadow fraction must be in (0, 1]",
        "outcome 1 has a non-finite value",
    ]
    after = await drill.status(admin)
    assert (after["experiment"], after["shadow"]) == (before["experiment"], before["shadow"])


@pytest.mark.usefixtures("registered")
async def test_shadow_mirrors_without_changing_answers(
    admin: Any, chan: grpc.aio.Channel, rstack: Stack
) -> None:
    assert rstack.router is not None
    await admin.SetShadow(
        admin_pb2.SetShadowRequest(model="fraud", version=1, fraction=1.0),
        metadata=ADMIN,
        timeout=30,
    )
    stub = inference_pb2_grpc.InferenceServiceStub(chan)
    for i in range(40):
        resp = await stub.Predict(
            drill.predict_request(i + 1, f"sh-{i}"), metadata=CALLER, timeout=5
        )
        assert (resp.model.version, resp.fallback_level) == (2, 1)  # prod, PRIMARY
    await admin.SetShadow(
        admin_pb2.SetShadowRequest(model="fraud", version=1, fraction=0.0),
        metadata=ADMIN,
        timeout=30,
    )
    text = await asyncio.to_thread(scrape, rstack.router.metrics_url)
    counts = drill.shadow_counts(text)
    assert counts.get("ok", 0) + counts.get("dropped", 0) + counts.get("error", 0) >= 40
    assert counts.get("ok", 0) > 0
    assert 'inferline_shadow_score_abs_diff_count{model="fraud",version="1"}' in text


@pytest.mark.usefixtures("registered")
def test_models_cli(rstack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert rstack.router is not None
    base = ["models", "--router", rstack.router.address]
    assert cli.main([*base, "status", "fraud"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["models"]["fraud"]["aliases"]["fraud:prod"] == 2
    assert cli.main([*base, "register", "fraud", "77"]) == 1
    assert "NOT_FOUND: not_found:" in capsys.readouterr().err
    assert cli.main([*base, "--tenant", "demo", "status"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
