"""PII tokenization: deterministic per-tenant tokens, request scrubbing, id checks,
and the routing-table/settings checks that keep PII config consistent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from inferline.v1 import inference_pb2
from router.compliance import Compliance
from router.errors import ConfigError, InvalidArgument
from router.pipeline.routing import RoutingTable
from router.security.keyset import KeysetFile, load_keyset, rotate_keyset
from router.security.pii import PiiGuard, Tokenizer
from router.settings import PiiSettings, Settings
from router.transport.pii import protect_request
from scripts.stack import ROOT

EMAIL = "canary-5f1c@example.com"


def _table(**tenants: dict[str, object]) -> RoutingTable:
    return RoutingTable.model_validate(
        {
            "models": {"fraud": {"versions": [1]}},
            "tenants": {
                name: {"models": ["fraud"], "data": data} for name, data in tenants.items()
            },
        }
    )


@pytest.fixture
def keys(tmp_path: Path) -> KeysetFile:
    path = tmp_path / "pii-keys.json"
    rotate_keyset(path)
    return KeysetFile(path)


def _request() -> inference_pb2.PredictRequest:
    req = inference_pb2.PredictRequest(alias="fraud:prod", request_id="req-1")
    c = req.candidates.add(candidate_id="c-1")
    c.entities["account_id"].int64_value = 42
    c.entities["email"].string_value = EMAIL
    c.features["amount"].double_value = 12.5
    c.features["phone"].string_value = "+15550100"
    c.features["card_number"].int64_value = 4111111111111111
    return req


def test_tokens_are_deterministic_per_tenant(keys: KeysetFile) -> None:
    tok = Tokenizer(keys)
    a = tok.token("payments", EMAIL)
    assert a == tok.token("payments", EMAIL)
    assert a.startswith("tok_k1_") and len(a) == len("tok_k1_") + 22
    assert EMAIL not in a
    assert a != tok.token("feed", EMAIL)  # per tenant
    assert tok.token("payments", 7) == tok.token("payments", "7") == tok.token("payments", 7.0)
    assert tok.token("payments", "x") != tok.token("payments", "y")


def test_rotation_changes_key_id(keys: KeysetFile) -> None:
    tok = Tokenizer(keys)
    before = tok.token("payments", EMAIL)
    rotate_keyset(keys.path)
    assert keys.reload() == ("k1", "k2")
    after = tok.token("payments", EMAIL)
    assert after.startswith("tok_k2_") and after != before


def test_a_reused_key_id_with_new_bytes_is_a_rotation(keys: KeysetFile) -> None:
    """The keyset re-created from scratch names its key "k1" again: tokens must
    follow the new bytes (as a fresh process's would), and the reload must say
    the key rotated (its audit record), not that nothing changed."""
    import os

    tok = Tokenizer(keys)
    before = tok.token("payments", EMAIL)
    keys.path.unlink()
    assert rotate_keyset(keys.path) == "k1"
    os.utime(keys.path, (1, 1))  # a different mtime even on a coarse clock
    assert keys.reload() == ("k1", "k1")
    after = tok.token("payments", EMAIL)
    assert after.startswith("tok_k1_") and after != before
    assert after == Tokenizer(KeysetFile(keys.path)).token("payments", EMAIL)


def test_tenant_names_are_checked_whole_in_the_table() -> None:
    """A tenant named "idempotency/payments" would derive the PII key of
    payments' idempotency keys: names follow the model-name rule."""
    with pytest.raises(ValueError):
        _table(**{"idempotency/payments": {}})


def test_protect_request_replaces_only_pii_fields(keys: KeysetFile) -> None:
    table = _table(payments={"pii_fields": ["email", "phone", "card_number"]})
    guard = PiiGuard(Tokenizer(keys), lambda: table, opaque_ids=True)
    req = _request()
    assert protect_request(guard, "payments", req) == 3
    c = req.candidates[0]
    assert c.entities["email"].string_value == Tokenizer(keys).token("payments", EMAIL)
    assert c.features["card_number"].WhichOneof("kind") == "string_value"
    assert c.entities["account_id"].int64_value == 42
    assert c.features["amount"].double_value == 12.5
    wire = req.SerializeToString()
    for raw in (EMAIL.encode(), b"+15550100"):
        assert raw not in wire


def test_unknown_tenant_is_scrubbed_with_every_field(keys: KeysetFile) -> None:
    table = _table(payments={"pii_fields": ["email"]}, feed={"pii_fields": ["phone"]})
    guard = PiiGuard(Tokenizer(keys), lambda: table, opaque_ids=True)
    for tenant in (None, "stranger"):
        req = _request()
        assert protect_request(guard, tenant, req) == 2
        assert EMAIL.encode() not in req.SerializeToString()
    assert guard.fields("feed") == frozenset({"phone"})


@pytest.mark.parametrize("field", ["request_id", "idempotency_key", "candidate_id"])
def test_ids_carrying_pii_are_refused_without_echo(keys: KeysetFile, field: str) -> None:
    guard = PiiGuard(Tokenizer(keys), lambda: _table(p={}), opaque_ids=True)
    req = _request()
    target = req.candidates[0] if field == "candidate_id" else req
    setattr(target, field, EMAIL)
    with pytest.raises(InvalidArgument) as e:
        protect_request(guard, "p", req)
    assert EMAIL not in e.value.public_message
    PiiGuard(Tokenizer(keys), lambda: _table(p={}), opaque_ids=False).check_ids(EMAIL)


def test_idempotency_keys_are_stored_keyed(keys: KeysetFile) -> None:
    guard = PiiGuard(Tokenizer(keys), lambda: _table(p={}), opaque_ids=True)
    k = guard.idempotency_key("p", "order-123")
    assert k == guard.idempotency_key("p", "order-123") != guard.idempotency_key("q", "order-123")
    assert "order-123" not in k


@pytest.mark.parametrize("setup", ["not json", None])
def test_keys_rotate_refuses_bad_input_without_a_traceback(
    tmp_path: Path, setup: str | None
) -> None:
    path = tmp_path / "keys.json" if setup is not None else tmp_path / "no-such-dir" / "keys.json"
    if setup is not None:
        path.write_text(setup)
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "keys", "rotate", str(path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and out.stderr.startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_table_rejects_unknown_data_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        _table(p={"pii_field": ["email"]})


def test_compliance_checks_table_against_settings(keys: KeysetFile, tmp_path: Path) -> None:
    bare = Compliance(Settings(), CollectorRegistry())
    with pytest.raises(ConfigError, match=r"pii\.key_file"):
        bare.check_table(_table(p={"pii_fields": ["email"]}))
    with pytest.raises(ConfigError, match="retention class"):
        bare.check_table(_table(p={"capture_class": "forever", "capture_ratio": 0.5}))
    s = Settings(pii=PiiSettings(key_file=keys.path))
    c = Compliance(s, CollectorRegistry())
    c.check_table(_table(p={"pii_fields": ["email"], "capture_class": "debug"}))
    assert c.pii_guard(lambda: _table(p={})) is not None


def test_keys_cli_creates_then_rotates(tmp_path: Path) -> None:
    path = tmp_path / "secret" / "keys.json"
    path.parent.mkdir()
    for expected in ("k1", "k2"):
        out = subprocess.run(
            [sys.executable, "-m", "router.cli", "keys", "rotate", str(path)],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert load_keyset(path).primary == expected
    assert len(load_keyset(path).keys) == 2
    assert path.stat().st_mode & 0o777 == 0o600
