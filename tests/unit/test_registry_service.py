"""The registry service's release logic (aliases, lkg, rollback, promote,
canary, kill switch, shadow) and its audit events, on a real SQLite store.

Nothing here loads a model: the Triton adapter is built but never called
(registration with Triton is covered by tests/integration/test_release.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.backends.registry_sqlite import SqliteRegistryStore
from router.backends.triton_repository import TritonRepository, read_serving_config
from router.pipeline.arms import ArmStats
from router.pipeline.experiment import Arm, Experiment
from router.registry.audit import MemoryAuditSink
from router.registry.canary import CanaryController, CanaryPolicy
from router.registry.errors import RegistrationError
from router.registry.models import AliasKey
from router.registry.service import RegistryService
from tests.unit.test_registry import VIEWS, record


class Views:
    def view_schemas(self) -> dict[str, dict[str, str]]:
        return {k: dict(v) for k, v in VIEWS.items()}


def _service(store: SqliteRegistryStore, tmp_path: Path, **kw: Any) -> RegistryService:
    """A router's registry service on ``store`` (Triton never called here)."""
    return RegistryService(
        store=store,
        repository=tmp_path / "repo",
        control=TritonRepository("127.0.0.1:1", tmp_path / "repo"),
        views=Views(),
        read_config=read_serving_config,
        **kw,
    )


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[RegistryService, MemoryAuditSink, list[int]]]:
    store = SqliteRegistryStore(tmp_path / "registry.db")
    for v in (1, 2, 3):
        store.insert_version(record(v))
    audit = MemoryAuditSink()
    changes: list[int] = []

    async def on_change() -> None:
        changes.append(store.revision())

    service = _service(store, tmp_path, audit=audit, on_change=on_change)
    yield service, audit, changes
    store.close()


def aliases(service: RegistryService) -> dict[str, int]:
    return {str(k): v for k, v in service.store.state().aliases.items()}


async def test_prod_moves_keep_lkg_and_rollback_flips_back(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]],
) -> None:
    service, audit, changes = parts
    await service.set_alias("m", "prod", 1, "ops")
    await service.set_alias("m", "prod", 2, "ops")
    assert aliases(service) == {"m:prod": 2, "m:lkg": 1}
    await service.rollback("m", "ops", reason="bad")
    assert aliases(service)["m:prod"] == 1
    assert changes == [1, 2, 3]  # every commit swapped the snapshot
    assert [(e.action, e.outcome) for e in audit.events] == [
        ("alias", "ok"),
        ("alias", "ok"),
        ("rollback", "ok"),
    ]
    with pytest.raises(RegistrationError) as exc:  # lkg == prod now: nowhere to go
        await service.rollback("m", "ops")
    assert exc.value.reason == "release_conflict"
    assert audit.events[-1].outcome == "failed"


async def test_canary_promote_and_rollback(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]],
) -> None:
    service, _, _ = parts
    with pytest.raises(RegistrationError) as exc:
        await service.start_canary("m", 2, 0.1, "ops")  # no prod yet
    assert exc.value.reason == "release_conflict"
    await service.set_alias("m", "prod", 1, "ops")
    await service.start_canary("m", 2, 0.1, "ops")
    exp = service.store.state().experiments["m"]
    assert [(a.name, a.version, a.weight) for a in exp.arms] == [
        ("control", 1, pytest.approx(0.9)),
        ("canary", 2, 0.1),
    ]
    with pytest.raises(RegistrationError):
        await service.start_canary("m", 3, 0.1, "ops")  # one experiment at a time
    await service.rollback("m", "canary-controller", reason="p99")
    state = service.store.state()
    assert "m" not in state.experiments and aliases(service) == {"m:prod": 1}
    await service.start_canary("m", 3, 0.2, "ops")
    await service.promote("m", "canary-controller")
    assert aliases(service) == {"m:prod": 3, "m:lkg": 1}
    assert service.store.state().experiments == {}
    events = service.status("m")["models"]["m"]["events"]
    assert [e["action"] for e in events][:2] == ["promote", "canary"]


async def test_kill_switch_shadow_and_refusals(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]],
) -> None:
    service, audit, _ = parts
    arms = (Arm(name="a", version=1, weight=1), Arm(name="b", version=9, weight=1))
    with pytest.raises(RegistrationError) as exc:  # arm on an unregistered version
        await service.set_experiment(Experiment(model="m", name="ab", salt="s", arms=arms), "ops")
    assert exc.value.reason == "alias_target"
    ok = (Arm(name="a", version=1, weight=1), Arm(name="b", version=2, weight=1))
    await service.set_experiment(Experiment(model="m", name="ab", salt="s", arms=ok), "ops")
    await service.kill_experiment("m", "ops")
    assert service.store.state().experiments["m"].enabled is False
    await service.set_shadow("m", 3, 0.05, "ops")
    assert service.store.state().shadows["m"].version == 3
    await service.set_shadow("m", 3, 0.0, "ops")
    assert service.store.state().shadows == {}
    for bad in (
        service.set_alias("m", "Bad Alias", 1, "ops"),
        service.set_alias("m", "prod", 1, "ops", tenant="../x"),
        service.set_shadow("m", 3, 1.5, "ops"),
        service.set_shadow("m", 3, float("nan"), "ops"),
        service.start_canary("m", 2, float("nan"), "ops"),
        service.start_canary("m", 2, 1.0, "ops"),
    ):
        with pytest.raises(RegistrationError) as exc:
            await bad
        assert exc.value.reason == "invalid_argument"
    with pytest.raises(RegistrationError) as exc:
        await service.register("m", 1, "ops")  # no such directory: refused before Triton
    assert exc.value.reason == "not_found"
    assert audit.events[-1].action == "register" and audit.events[-1].outcome == "failed"
    await service.set_alias("m", "prod", 2, "ops", tenant="acme")
    assert service.store.state().aliases[AliasKey("m", "prod", "acme")] == 2


def fill(stats: ArmStats, arm: str, n: int, latency_s: float) -> None:
    for i in range(n):
        stats.observe(f"{arm}-{i}", "m", arm, 1, latency_s, True, [0.2 + 0.001 * (i % 50)])


async def test_controller_ramps_then_promotes_a_healthy_canary(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]],
) -> None:
    service, _, _ = parts
    now = [0.0]
    stats = ArmStats(window=500, join_entries=10)
    policy = CanaryPolicy(min_samples=100, hold_s=10, ramp=(0.25, 0.5))
    ctl = CanaryController(
        service=service, arms=stats, policy=policy, interval_s=1, clock=lambda: now[0]
    )
    await service.set_alias("m", "prod", 1, "ops")
    await service.start_canary("m", 2, 0.05, "ops")
    await ctl.tick()  # first sight of this canary: fresh windows
    await ctl.tick()
    assert ctl.last["m"].action == "wait"
    for expected in (0.25, 0.5):
        fill(stats, "control", 200, 0.005)
        fill(stats, "canary", 200, 0.005)
        await ctl.tick()  # healthy: the hold starts
        now[0] += 11
        await ctl.tick()  # held: next ramp step, not promotion
        canary = service.store.state().experiments["m"].arm("canary")
        assert canary is not None and canary.weight == expected
    now[0] += 1
    await ctl.tick()
    now[0] += 11
    await ctl.tick()
    assert aliases(service) == {"m:prod": 2, "m:lkg": 1}
    assert service.store.state().experiments == {}


async def test_controller_rolls_back_a_slow_canary(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]],
) -> None:
    service, _, _ = parts
    stats = ArmStats(window=500, join_entries=10)
    ctl = CanaryController(
        service=service, arms=stats, policy=CanaryPolicy(min_samples=100), interval_s=1
    )
    await service.set_alias("m", "prod", 1, "ops")
    await service.start_canary("m", 2, 0.1, "ops")
    await ctl.tick()
    fill(stats, "control", 200, 0.005)
    fill(stats, "canary", 200, 0.040)
    await ctl.tick()
    assert ctl.last["m"].action == "rollback"
    assert service.store.state().experiments == {}
    event = service.store.events("m", limit=1)[0]
    assert (event.actor, event.action) == ("canary-controller", "rollback")
    assert str(event.detail["reason"]).startswith("p99")


async def test_an_action_decided_before_another_routers_commit_is_refused(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]], tmp_path: Path
) -> None:
    """Two routers share the registry database. Router A's promote was decided
    on the state before router B's rollback of the same canary landed: it must
    be refused, not undo the rollback."""
    service_a, audit, _ = parts
    await service_a.set_alias("m", "prod", 1, "ops")
    await service_a.start_canary("m", 2, 0.1, "ops")
    store_b = SqliteRegistryStore(tmp_path / "registry.db")  # the second router
    service_b = _service(store_b, tmp_path)
    try:
        decided_on = service_a.store.state()
        read = service_a.store.state
        service_a.store.state = lambda: decided_on  # type: ignore[method-assign]
        await service_b.rollback("m", "operator", reason="bad canary")
        with pytest.raises(RegistrationError) as exc:
            await service_a.promote("m", "canary-controller")
        assert exc.value.reason == "release_conflict"
        service_a.store.state = read  # type: ignore[method-assign]
        assert aliases(service_a) == {"m:prod": 1}  # the rollback stands
        assert audit.events[-1].action == "promote" and audit.events[-1].outcome == "failed"
    finally:
        store_b.close()


@pytest.mark.parametrize("alias", ["prod\n", "Prod", "", "a" * 64])
async def test_alias_names_follow_the_routing_tables_rule_exactly(
    parts: tuple[RegistryService, MemoryAuditSink, list[int]], alias: str
) -> None:
    """ "prod\\n" passed a `^...$` match ($ matches before a final newline) but not
    the table's fullmatch: stored, it made every later snapshot invalid."""
    service, _, _ = parts
    with pytest.raises(RegistrationError) as exc:
        await service.set_alias("m", alias, 1, "ops")
    assert exc.value.reason == "invalid_argument"
    assert aliases(service) == {}
