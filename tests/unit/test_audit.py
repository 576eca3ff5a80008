"""Audit trail: chain sealing, tamper detection (edit, delete, reorder, insert,
truncate), keyed chains, several writers on one file, the bounded queue, the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.audit.chain import verify
from router.audit.log import AuditLog, prediction_event, score_bucket
from router.audit.store import JsonlAuditStore, checkpoint_path, segments
from router.errors import InvalidArgument
from router.observability.compliance import ComplianceMetrics
from router.pipeline.types import CandidateIn, FallbackLevel, PredictCommand, PredictResult
from router.security.keyset import KeysetFile, load_keyset, rotate_keyset
from scripts.stack import ROOT


def _event(i: int) -> dict[str, object]:
    return {"actor": "admin:alice", "action": "alias.move", "subject": f"fraud:prod->{i}"}


def _trail(path: Path, n: int = 6, keys: Path | None = None) -> Path:
    ks = KeysetFile(keys) if keys else None
    store = JsonlAuditStore(
        path, keys=(lambda: ks.current) if ks else lambda: None, checkpoint=checkpoint_path(path)
    )
    for i in range(n):
        store.append([_event(i)], now=1_700_000_000.0 + i)
    store.close()
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _verify(path: Path, *, checkpoint: bool = False, keys: Path | None = None):  # type: ignore[no-untyped-def]
    cp = json.loads(checkpoint_path(path).read_text()) if checkpoint else None
    ks = load_keyset(keys) if keys else None
    with path.open("rb") as f:
        return verify(f, keys=ks, checkpoint=cp)


def test_intact_chain_verifies(tmp_path: Path) -> None:
    path = _trail(tmp_path / "audit.jsonl")
    v = _verify(path, checkpoint=True)
    assert (v.ok, v.records, v.head_seq) == (True, 6, 6)
    recs = [json.loads(x) for x in _lines(path)]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(recs))


def test_edit_is_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path / "audit.jsonl")
    lines = _lines(path)
    rec = json.loads(lines[2])
    rec["subject"] = "fraud:prod->99"
    lines[2] = json.dumps(rec) + "\n"
    path.write_text("".join(lines))
    v = _verify(path)
    assert (v.ok, v.first_bad_seq) == (False, 3)
    assert "edited" in v.reason


def test_delete_is_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path / "audit.jsonl")
    lines = _lines(path)
    del lines[3]
    path.write_text("".join(lines))
    v = _verify(path)
    assert (v.ok, v.first_bad_seq, v.records) == (False, 4, 3)


def test_reorder_is_detected(tmp_path: Path) -> None:
    path = _trail(tmp_path / "audit.jsonl")
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines))
    v = _verify(path)
    assert (v.ok, v.first_bad_seq) == (False, 2)


def test_renumbered_rehashed_insert_caught_by_checkpoint(tmp_path: Path) -> None:
    """Without a key anyone can rebuild the chain; the anchored head still differs."""
    path = _trail(tmp_path / "audit.jsonl")
    forged = tmp_path / "forged.jsonl"
    store = JsonlAuditStore(forged)
    for i, line in enumerate(_lines(path)):
        rec = json.loads(line)
        store.append([rec], now=1_700_000_000.0 + i)
        if i == 2:
            store.append([{"actor": "mallory", "action": "quota.change"}], now=1.0)
    store.close()
    assert _verify(forged).ok  # a self-consistent rewrite...
    forged.replace(path)
    v = _verify(path, checkpoint=True)  # ...does not match the anchored head
    assert v.ok is False
    assert v.first_bad_seq == 6


def test_truncated_tail_caught_by_checkpoint(tmp_path: Path) -> None:
    path = _trail(tmp_path / "audit.jsonl")
    path.write_text("".join(_lines(path)[:4]))
    assert _verify(path).ok  # a prefix of a chain is a chain...
    v = _verify(path, checkpoint=True)
    assert (v.ok, v.first_bad_seq) == (False, 5)


def test_keyed_chain_cannot_be_recomputed_without_key(tmp_path: Path) -> None:
    keys = tmp_path / "audit-keys.json"
    rotate_keyset(keys)
    path = _trail(tmp_path / "audit.jsonl", keys=keys)
    assert _verify(path, keys=keys, checkpoint=True).ok
    # A rewriter recomputes with plain SHA-256 (the only thing it can do without the key).
    recs = [json.loads(x) for x in _lines(path)]
    recs[1]["subject"] = "forged"
    forged = tmp_path / "forged.jsonl"
    store = JsonlAuditStore(forged)
    store.append([{k: r[k] for k in ("actor", "action", "subject")} for r in recs], now=1.0)
    store.close()
    v = _verify(forged, keys=keys)
    assert (v.ok, v.first_bad_seq) == (False, 1)


def test_key_rotation_keeps_old_records_verifiable(tmp_path: Path) -> None:
    keys = tmp_path / "audit-keys.json"
    rotate_keyset(keys)
    ks = KeysetFile(keys)
    path = tmp_path / "audit.jsonl"
    store = JsonlAuditStore(path, keys=lambda: ks.current)
    store.append([_event(1)], now=1.0)
    rotate_keyset(keys)
    assert ks.reload() == ("k1", "k2")
    store.append([_event(2)], now=2.0)
    store.close()
    recs = [json.loads(x) for x in _lines(path)]
    assert [r["kid"] for r in recs] == ["k1", "k2"]
    assert _verify(path, keys=keys).ok


def test_two_writers_extend_one_chain(tmp_path: Path) -> None:
    """Router workers and the purge job append to the same file under flock."""
    path = tmp_path / "audit.jsonl"
    a, b = JsonlAuditStore(path), JsonlAuditStore(path)
    for i in range(5):
        a.append([_event(i)], now=1.0)
        b.append([_event(i), _event(i + 10)], now=2.0)
    a.close()
    b.close()
    v = _verify(path)
    assert (v.ok, v.records) == (True, 15)


def _cmd(tenant: str = "payments") -> PredictCommand:
    cand = CandidateIn("c1", {"account_id": 7, "email": "tok:k1:abc"}, {"amount": 12.5})
    return PredictCommand(request_id="r1", tenant=tenant, alias="fraud:prod", version=None,
                          candidates=(cand,))  # fmt: skip


def test_prediction_event_has_no_payload() -> None:
    result = PredictResult(
        model="fraud", version=2, alias="prod", candidate_ids=["c1"], scores=[0.93],
        freshness=[()], fallback_level=FallbackLevel.PRIMARY, degraded_reasons=[],
    )  # fmt: skip
    ev = prediction_event(_cmd(), result, None)
    assert ev["subject"] == "fraud@2"
    assert ev["details"]["score_buckets"] == [9]
    text = json.dumps(ev)
    for leaked in ("c1", "tok:k1:abc", "12.5", "account_id"):
        assert leaked not in text
    err = prediction_event(_cmd(), None, InvalidArgument("x").code.name)  # type: ignore[arg-type]
    assert err["details"]["code"] == "INVALID_ARGUMENT"
    assert [score_bucket(s) for s in (0.0, 0.05, 0.5, 1.0)] == [0, 0, 5, 9]


async def test_audit_log_writes_predictions_and_admin(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = ComplianceMetrics()
    log = AuditLog(JsonlAuditStore(path), queue_size=100, metrics=metrics)
    log.start()
    for _ in range(20):
        log.record_prediction(_cmd(), None, None)
    rec = await log.record_admin(actor="admin:alice", action="alias.move", subject="fraud:prod")
    assert rec["seq"] >= 1
    await log.stop()
    recs = [json.loads(x) for x in _lines(path)]
    assert sorted(r["action"] for r in recs).count("predict") == 20
    assert _verify(path).ok
    assert metrics.audit_records.labels("prediction")._value.get() == 20


async def test_full_queue_drops_predictions_never_admin(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    metrics = ComplianceMetrics()
    log = AuditLog(JsonlAuditStore(path), queue_size=5, metrics=metrics)  # writer not started
    for _ in range(8):
        log.record_prediction(_cmd(), None, None)
    assert log.dropped == 3
    assert metrics.audit_dropped.labels("queue_full")._value.get() == 3
    await log.record_admin(actor="admin:alice", action="quota.change", subject="payments")
    log.start()
    await asyncio.sleep(0)
    await log.stop()
    recs = [json.loads(x) for x in _lines(path)]
    assert [r["action"] for r in recs].count("predict") == 5
    assert recs[0]["action"] == "quota.change"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    path = _trail(tmp_path / "audit.jsonl")
    ok = _cli("audit", "verify", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "OK: 6 records" in ok.stdout
    lines = _lines(path)
    lines[4] = lines[4].replace("alias.move", "alias.mov3")
    path.write_text("".join(lines))
    bad = _cli("audit", "verify", str(path))
    assert bad.returncode == 1
    assert "first bad seq 5" in bad.stdout
    assert _cli("audit", "verify", str(tmp_path / "missing.jsonl")).returncode == 2


@pytest.mark.parametrize("content", ["null", "[]", '"x"'])
def test_a_checkpoint_that_is_no_object_is_malformed_not_absent(
    tmp_path: Path, content: str
) -> None:
    """`null` once read as "no checkpoint": a truncated trail then passed."""
    path = _trail(tmp_path / "audit.jsonl", n=3)
    path.write_text(_lines(path)[0])  # truncated to its first record
    checkpoint_path(path).write_text(content)
    out = _cli("audit", "verify", str(path), "--checkpoint", str(checkpoint_path(path)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "checkpoint file is malformed" in out.stdout


_LONG_KEY = "A" * 88  # 64 bytes: an AES-256 KEK refuses it at the first wrap, so at load here


@pytest.mark.parametrize(
    "raw",
    [
        "{}",
        '{"primary": "k1", "keys": {"k1": "c2hvcnQ="}}',
        json.dumps({"primary": "k1", "keys": {"k1": _LONG_KEY}}),
    ],
)
def test_bad_keyset_rejected(tmp_path: Path, raw: str) -> None:
    from router.errors import ConfigError

    p = tmp_path / "k.json"
    p.write_text(raw)
    with pytest.raises(ConfigError):
        load_keyset(p)


def test_prediction_actor_is_the_edge_verified_identity() -> None:
    from router.settings import AuthSettings
    from router.transport.identity import caller_identity

    edge = AuthSettings(mode="edge")
    uri = "spiffe://inferline/tenant/payments/svc/checkout"
    xfcc = f'By=spiffe://inferline/edge/envoy;Hash=abc;URI="{uri}"'
    identity = caller_identity(edge, {edge.xfcc_header: xfcc})
    assert identity == uri
    assert caller_identity(edge, {}) is None
    assert caller_identity(AuthSettings(mode="header"), {edge.xfcc_header: xfcc}) is None
    cmd = _cmd()
    assert prediction_event(cmd, None, "OK")["actor"] == "tenant:payments"
    cmd = PredictCommand(
        request_id="r1", tenant="payments", alias="fraud:prod", version=None,
        candidates=cmd.candidates, identity=identity,
    )  # fmt: skip
    assert prediction_event(cmd, None, "OK")["actor"] == uri


def test_rotated_segments_continue_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a = JsonlAuditStore(path, segment_bytes=600, checkpoint=checkpoint_path(path))
    b = JsonlAuditStore(path, segment_bytes=600, checkpoint=checkpoint_path(path))
    for i in range(10):  # two writers, each rotating when it finds the file full
        (a if i % 3 else b).append([_event(i), _event(i + 100)], now=1.0)
    a.close()
    b.close()
    files = segments(path)
    assert len(files) >= 4 and files[-1] == path
    seqs = [json.loads(x)["seq"] for f in files for x in f.read_text().splitlines()]
    assert seqs == list(range(1, 21))
    ok = _cli("audit", "verify", str(path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: 20 records" in ok.stdout
    missing_from = json.loads(files[1].read_text().splitlines()[0])["seq"]
    files[1].unlink()  # a whole segment goes missing
    bad = _cli("audit", "verify", str(path))
    assert bad.returncode == 1
    assert f"first bad seq {missing_from}:" in bad.stdout


def test_cli_keyed_trail_without_key_is_a_usage_error(tmp_path: Path) -> None:
    keys = tmp_path / "audit-keys.json"
    rotate_keyset(keys)
    path = _trail(tmp_path / "audit.jsonl", keys=keys)
    out = _cli("audit", "verify", str(path), "--no-checkpoint")
    assert out.returncode == 2
    assert "key file" in out.stderr
    assert _cli("audit", "verify", str(path), "--key-file", str(keys)).returncode == 0


async def test_prediction_records_keep_their_own_time(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    times = iter([1_700_000_000.0, 1_700_000_001.5])
    log = AuditLog(JsonlAuditStore(path), clock=lambda: next(times), linger_s=0)
    log.record_prediction(_cmd(), None, None)
    log.record_prediction(_cmd(), None, None)
    log.start()
    await log.stop()
    recs = [json.loads(x) for x in _lines(path)]
    assert [r["ts"] for r in recs] == ["2023-11-14T22:13:20.000000Z", "2023-11-14T22:13:21.500000Z"]
    assert "at" not in recs[0]


def test_a_torn_last_line_is_cut_off_kept_aside_and_the_chain_continues(tmp_path: Path) -> None:
    """A crash (or a full disk) stopped an append part-way: the torn bytes were
    never acknowledged. The next writer moves them aside and continues the
    chain from the last whole record, instead of failing every append after."""
    path = _trail(tmp_path / "audit.jsonl", n=3)
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"seq":4,"ha')
    store = JsonlAuditStore(path, checkpoint=checkpoint_path(path))
    store.append([_event(9)], now=1_700_000_100.0)
    store.close()
    assert path.read_bytes().startswith(whole)
    v = _verify(path, checkpoint=True)
    assert (v.ok, v.records, v.head_seq) == (True, 4, 4)
    assert (tmp_path / f"audit.jsonl.torn.{len(whole)}").read_bytes() == b'{"seq":4,"ha'
    assert segments(path) == [path]  # the torn bytes are not a segment of the chain


async def test_the_writer_survives_a_trail_it_cannot_extend(tmp_path: Path) -> None:
    """A whole but unreadable last record is not repaired (that is tampering or
    corruption, for `audit verify` to report): the batch is dropped and counted,
    and the writer task keeps running for the batches after it."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"not a record\n")
    metrics = ComplianceMetrics()
    log = AuditLog(JsonlAuditStore(path), queue_size=100, batch_max=1, metrics=metrics)
    log.start()
    log.record_prediction(_cmd(), None, None)
    await asyncio.sleep(0.2)
    assert metrics.audit_dropped.labels("write_error")._value.get() == 1
    path.write_bytes(b"")  # the operator moved the damaged trail away
    log.record_prediction(_cmd(), None, None)
    await log.stop()
    assert [json.loads(x)["action"] for x in _lines(path)] == ["predict"]
