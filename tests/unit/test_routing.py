from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from router.errors import Code, ConfigError, InferlineError
from router.pipeline.auth import authenticate
from router.pipeline.routing import RoutingTable, parse_model_ref, resolve

TABLE = {
    "version": "t1",
    "models": {
        "fraud": {"versions": [1, 2], "aliases": {"prod": 1, "canary": 2}},
        "ranker": {"versions": [1], "aliases": {"prod": 1}},
    },
    "tenants": {
        "a": {"models": ["fraud"]},
        "b": {"models": ["ranker"], "scopes": ["admin"]},
    },
}


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable.model_validate(TABLE)


def _code(exc: pytest.ExceptionInfo[InferlineError]) -> Code:
    return exc.value.code


@pytest.mark.parametrize(
    ("alias", "version", "expected"),
    [
        ("fraud:prod", None, ("fraud", "prod", None)),
        (None, "fraud@2", ("fraud", None, 2)),
    ],
)
def test_parse_model_ref(
    alias: str | None, version: str | None, expected: tuple[object, ...]
) -> None:
    ref = parse_model_ref(alias, version)
    assert (ref.model, ref.alias, ref.version) == expected


@pytest.mark.parametrize(
    ("alias", "version"),
    [
        (None, None),
        ("fraud", None),
        ("fraud:", None),
        ("Fraud:prod", None),
        (None, "fraud@0"),
        (None, "fraud@x"),
        (None, "fraud:prod"),
        ("fraud@1", None),
        ("a" * 100 + ":prod", None),
    ],
)
def test_malformed_model_ref_is_invalid_argument(alias: str | None, version: str | None) -> None:
    with pytest.raises(InferlineError) as exc:
        parse_model_ref(alias, version)
    assert _code(exc) is Code.INVALID_ARGUMENT


def test_resolve_alias_and_version(table: RoutingTable) -> None:
    a = authenticate(table, "a")
    route = resolve(table, a.policy, parse_model_ref("fraud:canary", None))
    assert (route.model, route.version, route.alias) == ("fraud", 2, "canary")
    route = resolve(table, a.policy, parse_model_ref(None, "fraud@1"))
    assert (route.model, route.version, route.alias) == ("fraud", 1, None)


@pytest.mark.parametrize(
    ("tenant", "alias", "version", "code"),
    [
        ("a", "ranker:prod", None, Code.PERMISSION_DENIED),  # exists, not granted
        ("a", "nope:prod", None, Code.NOT_FOUND),
        ("a", "fraud:staging", None, Code.NOT_FOUND),
        ("a", None, "fraud@9", Code.NOT_FOUND),
        ("b", "ranker:prod", None, Code.PERMISSION_DENIED),  # no predict scope
    ],
)
def test_resolve_errors(
    table: RoutingTable, tenant: str, alias: str | None, version: str | None, code: Code
) -> None:
    p = authenticate(table, tenant)
    with pytest.raises(InferlineError) as exc:
        resolve(table, p.policy, parse_model_ref(alias, version))
    assert _code(exc) is code


@pytest.mark.parametrize("tenant", [None, "", "zzz"])
def test_unknown_or_missing_tenant_is_unauthenticated(
    table: RoutingTable, tenant: str | None
) -> None:
    with pytest.raises(InferlineError) as exc:
        authenticate(table, tenant)
    assert _code(exc) is Code.UNAUTHENTICATED


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t["models"]["fraud"]["aliases"].update({"prod": 7}),  # alias -> unlisted version
        lambda t: t["tenants"]["a"]["models"].append("ghost"),  # unknown model
        lambda t: t.update({"surprise": 1}),  # extra key
        lambda t: t["models"]["fraud"].update({"versions": []}),
        # NaN or infinity anywhere: a NaN static default would be served as a score.
        lambda t: t["models"]["fraud"].update({"fallback": {"default_score": float("nan")}}),
        lambda t: t["models"]["fraud"].update({"feature_cache_ttl_s": float("inf")}),
    ],
)
def test_invalid_tables_rejected(mutate, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import copy

    import yaml

    raw = copy.deepcopy(TABLE)
    mutate(raw)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError):
        RoutingTable.from_yaml(path)


def test_table_is_immutable(table: RoutingTable) -> None:
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        table.version = "x"  # type: ignore[misc]


def test_demo_table_is_valid() -> None:
    table = RoutingTable.from_yaml(Path("scripts/demo_routing.yaml"))
    assert table.models["fraud"].aliases["prod"] == 1


def test_tenant_alias_overrides_and_private_alias() -> None:
    raw = {
        "models": {"fraud": {"versions": [1, 2, 3], "aliases": {"prod": 1}}},
        "pools": {"payments": {"grpc": "127.0.0.1:1"}},
        "tenants": {
            "a": {"models": ["fraud"]},
            "p": {
                "models": ["fraud"],
                "aliases": {"fraud:prod": 2, "fraud:ft": 3},
                "isolation": "dedicated",
                "pool": "payments",
            },
        },
    }
    table = RoutingTable.model_validate(raw)
    a, p = authenticate(table, "a"), authenticate(table, "p")
    assert resolve(table, a.policy, parse_model_ref("fraud:prod", None)).version == 1
    route = resolve(table, p.policy, parse_model_ref("fraud:prod", None))
    assert (route.version, route.pool) == (2, "payments")
    assert resolve(table, p.policy, parse_model_ref("fraud:ft", None)).version == 3
    with pytest.raises(InferlineError) as exc:  # private alias invisible to others
        resolve(table, a.policy, parse_model_ref("fraud:ft", None))
    assert exc.value.code is Code.NOT_FOUND


@pytest.mark.parametrize(
    "tenant",
    [
        {"models": ["fraud"], "pool": "nowhere"},
        {"models": ["fraud"], "isolation": "dedicated"},
        {"models": ["fraud"], "aliases": {"fraud:x": 9}},
        {"models": [], "aliases": {"fraud:x": 1}},
        {"models": ["fraud"], "max_priority": "urgent"},
    ],
)
def test_invalid_tenant_policies(tenant: dict[str, object]) -> None:
    from pydantic import ValidationError

    raw = {"models": {"fraud": {"versions": [1]}}, "tenants": {"t": tenant}}
    with pytest.raises(ValidationError):
        RoutingTable.model_validate(raw)


def _with_cheap_tier(**tier: object) -> dict[str, object]:
    models: dict[str, Any] = dict(cast(dict[str, Any], TABLE["models"]))
    models["ranker"] = {**models["ranker"], "cheap_tier": tier}
    models["ranker_int8"] = {"versions": [1]}
    return {**TABLE, "models": models}


def test_cheap_tier_must_be_another_listed_model_version() -> None:
    RoutingTable.model_validate(_with_cheap_tier(model="ranker_int8", version=1))
    for bad in (
        {"model": "ranker", "version": 1},  # itself
        {"model": "nope", "version": 1},  # unknown
        {"model": "ranker_int8", "version": 2},  # unlisted version
        {"model": "ranker_int8", "version": 1, "load_above": 1.5},
        {"model": "ranker_int8", "version": 1, "priorities": ["bulk"]},
    ):
        with pytest.raises(ValueError):
            RoutingTable.model_validate(_with_cheap_tier(**bad))


@pytest.mark.parametrize(
    ("priority", "in_flight", "expected"),
    [
        ("batch", 0, True),  # low-value traffic: always
        ("standard", 8, False),
        ("standard", 9, True),  # busy: above 0.8 x 10
        ("critical", 10, False),  # never
    ],
)
def test_cheap_tier_applies(priority: str, in_flight: int, expected: bool) -> None:
    table = RoutingTable.model_validate(_with_cheap_tier(model="ranker_int8", version=1))
    tier = table.models["ranker"].cheap_tier
    assert tier is not None
    assert tier.applies(priority, in_flight, max_in_flight=10) is expected
    no_load = tier.model_copy(update={"load_above": None})
    assert no_load.applies(priority, in_flight, max_in_flight=10) is (priority == "batch")
