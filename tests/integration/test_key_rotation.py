"""Keys rotate without a restart: a running router picks up new primary keys for
PII tokens, capture KEKs and the audit HMAC, records each rotation in the audit
trail, and everything written before and after still verifies and decrypts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc

from bench.pii_canary import Planted, make_request, prepare
from inferline.v1 import inference_pb2_grpc
from router.audit.chain import verify
from router.capture.envelope import open_fields
from router.capture.store import CaptureStore
from router.security.keyset import KeysetFile, load_keyset, rotate_keyset
from router.security.kms import LocalKeysetKms
from router.security.pii import Tokenizer
from scripts.stack import Stack


def _rotations(audit: Path) -> list[dict[str, object]]:
    if not audit.exists():
        return []
    recs = [json.loads(x) for x in audit.read_text().splitlines()]
    return [r for r in recs if r["action"] == "key.rotate"]


def test_keys_rotate_without_restart(demo_build: Path, tmp_path: Path) -> None:
    setup = prepare(tmp_path / "rot")
    env = {**setup.env, "INFERLINE_PII__KEY_RELOAD_INTERVAL_S": "0.2"}
    planted = Planted()
    sent = []
    with Stack(demo_build, tmp_path / "logs", routing_table=setup.table, router_env=env) as s:
        assert s.router is not None
        with grpc.insecure_channel(s.router.address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)

            def call(i: int) -> None:
                tenant, req, _ = make_request(i, planted)
                sent.append((tenant, req.candidates[0].entities["email"].string_value))
                stub.Predict(req, metadata=(("x-inferline-tenant", tenant),), timeout=10)

            call(4)
            for path in setup.keys.values():
                rotate_keyset(path)
            deadline = time.monotonic() + 30
            while len(_rotations(setup.audit)) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            call(6)

    rotations = {r["subject"]: r["details"] for r in _rotations(setup.audit)}
    assert rotations == {
        name: {"old_kid": "k1", "new_kid": "k2"} for name in ("pii", "capture_kek", "audit")
    }
    recs = [json.loads(x) for x in setup.audit.read_text().splitlines()]
    assert {r["kid"] for r in recs} == {"k1", "k2"}
    with setup.audit.open("rb") as f:
        assert verify(f, keys=load_keyset(setup.keys["audit"])).ok

    kms = LocalKeysetKms(KeysetFile(setup.keys["kek"]))
    records = sorted(CaptureStore(setup.captures, 3600).records(), key=lambda r: r["ts"])
    assert [r["kek"] for r in records] == ["k1", "k2"]
    tokens = [open_fields(kms, r)["candidates"][0]["entities"]["email"] for r in records]
    pii = KeysetFile(setup.keys["pii"])
    assert tokens[0].startswith("tok_k1_") and tokens[1].startswith("tok_k2_")
    assert tokens[1] == Tokenizer(pii).token(sent[1][0], sent[1][1])
