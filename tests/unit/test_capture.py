"""Encrypted payload capture: envelope encryption, sampling, retention purge with
an injected clock, and the purge job's proof (audit record, metric)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from prometheus_client import CollectorRegistry

from router.audit.chain import verify
from router.capture.envelope import open_fields, seal
from router.capture.store import CaptureStore
from router.capture.writer import CaptureWriter
from router.compliance import Compliance
from router.observability.compliance import ComplianceMetrics
from router.pipeline.routing import DataPolicy, RoutingTable
from router.pipeline.types import CandidateIn, PredictCommand, PredictResult
from router.security.keyset import KeysetFile, rotate_keyset
from router.security.kms import LocalKeysetKms, UnwrapError
from router.settings import AuditSettings, CaptureSettings, PiiSettings, Settings
from scripts.stack import ROOT

HOUR, DAY = 3600.0, 86400.0
T0 = 1_800_000_000.0  # a segment boundary (divisible by 3600)


@pytest.fixture
def kms(tmp_path: Path) -> LocalKeysetKms:
    path = tmp_path / "kek.json"
    rotate_keyset(path)
    return LocalKeysetKms(KeysetFile(path))


def _cmd(tenant: str = "payments") -> PredictCommand:
    cand = CandidateIn("c1", {"account_id": 7, "email": "tok_k1_abc"}, {"amount": 12.5})
    return PredictCommand(request_id="r1", tenant=tenant, alias="fraud:prod", version=None,
                          candidates=(cand,))  # fmt: skip


def _result() -> PredictResult:
    return PredictResult(model="fraud", version=1, alias="prod", candidate_ids=["c1"],
                         scores=[0.25], freshness=[()])  # fmt: skip


def test_fields_are_encrypted_and_bound_to_their_record(kms: LocalKeysetKms) -> None:
    fields = {"request_id": "r1", "scores": [0.25], "candidates": [{"email": "tok_k1_abc"}]}
    a = seal(kms, {"id": "a", "tenant": "payments"}, fields)
    b = seal(kms, {"id": "b", "tenant": "payments"}, fields)
    text = json.dumps(a)
    assert "tok_k1_abc" not in text and "0.25" not in text
    assert a["enc"]["scores"] != b["enc"]["scores"]  # fresh data key and nonce per record
    assert open_fields(kms, a) == fields
    swapped = {**a, "enc": {**a["enc"], "scores": b["enc"]["scores"]}}
    with pytest.raises(InvalidTag):
        open_fields(kms, swapped)
    with pytest.raises(UnwrapError):
        open_fields(kms, {**a, "tenant": "feed"})  # the wrapped key is bound to the tenant


def test_kek_rotation_keeps_old_records_readable(kms: LocalKeysetKms, tmp_path: Path) -> None:
    old = seal(kms, {"id": "a", "tenant": "t"}, {"x": 1})
    keys = KeysetFile(tmp_path / "kek.json")
    rotate_keyset(keys.path)
    keys.reload()
    kms2 = LocalKeysetKms(keys)
    new = seal(kms2, {"id": "b", "tenant": "t"}, {"x": 2})
    assert (old["kek"], new["kek"]) == ("k1", "k2")
    assert open_fields(kms2, old) == {"x": 1}


async def test_writer_samples_and_seals(kms: LocalKeysetKms, tmp_path: Path) -> None:
    draws = iter([0.05, 0.5, 0.05, 0.9])
    metrics = ComplianceMetrics()
    w = CaptureWriter(CaptureStore(tmp_path / "cap", HOUR), kms, clock=lambda: T0,
                      rng=lambda: next(draws), metrics=metrics)  # fmt: skip
    w.start()
    policy = DataPolicy(capture_class="debug", capture_ratio=0.1)
    for _ in range(4):
        w.offer(_cmd(), _result(), policy)
    w.offer(_cmd(), _result(), DataPolicy())  # no class: never captured, no draw
    await w.stop()
    recs = list(w.store.records())
    assert len(recs) == 2
    assert (recs[0]["tenant"], recs[0]["class"], recs[0]["model"]) == ("payments", "debug", "fraud")
    assert open_fields(kms, recs[0])["candidates"][0]["entities"]["email"] == "tok_k1_abc"
    assert metrics.capture_records.labels("debug")._value.get() == 2


def test_full_queue_drops_and_counts(kms: LocalKeysetKms, tmp_path: Path) -> None:
    w = CaptureWriter(CaptureStore(tmp_path, HOUR), kms, queue_size=2, rng=lambda: 0.0)
    for _ in range(5):
        w.offer(_cmd(), _result(), DataPolicy(capture_class="debug", capture_ratio=1.0))
    assert w.dropped == 3


def _fill(store: CaptureStore, kms: LocalKeysetKms, cls: str, ts: float, n: int = 2) -> None:
    store.append(
        [seal(kms, {"id": f"{cls}{ts}{i}", "tenant": "payments", "class": cls, "ts": ts + i},
              {"x": i}) for i in range(n)]
    )  # fmt: skip


def test_purge_deletes_only_expired_segments(kms: LocalKeysetKms, tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "cap", HOUR)
    _fill(store, kms, "debug", T0)  # expires 7d + 1h after T0 (segment granularity)
    _fill(store, kms, "debug", T0 + 2 * DAY)
    _fill(store, kms, "drift", T0)  # 30 days
    _fill(store, kms, "legal", T0)  # no retention configured: kept, reported
    retention = {"debug": 7 * DAY, "drift": 30 * DAY}
    just_before = store.purge(retention, now=T0 + 7 * DAY + HOUR - 1)
    assert (just_before.deleted_files, just_before.remaining_records) == (0, 8)
    r = store.purge(retention, now=T0 + 7 * DAY + HOUR)
    assert r.deleted_records == {"debug": 2}
    assert (r.deleted_files, r.remaining_records) == (1, 6)
    assert r.oldest_remaining_ts == T0
    assert r.unmanaged_classes == ["legal"]
    r = store.purge({**retention, "legal": DAY}, now=T0 + 31 * DAY + HOUR)
    assert r.deleted_records == {"debug": 2, "drift": 2, "legal": 2}
    assert (r.remaining_records, r.oldest_remaining_ts) == (0, None)
    assert list(store.records()) == []


def test_a_torn_line_stops_neither_reading_nor_the_purge(
    kms: LocalKeysetKms, tmp_path: Path
) -> None:
    """A crash mid-append leaves part of a line: it holds no record, and must not
    keep this segment, or every segment sorted after it, past retention."""
    store = CaptureStore(tmp_path / "cap", HOUR)
    _fill(store, kms, "debug", T0)
    (torn,) = [p for _, _, _, p in store.segments()]
    with torn.open("ab") as f:
        f.write(b'{"ts":1.0,"cl')
    store.append([seal(kms, {"id": "z", "tenant": "zeta", "class": "debug", "ts": T0}, {"x": 1})])
    assert len(list(store.records())) == 3
    r = store.purge({"debug": 7 * DAY}, now=T0 + 8 * DAY)
    assert (r.deleted_files, r.deleted_records, r.remaining_records) == (2, {"debug": 3}, 0)
    assert list(store.segments()) == []


async def test_router_purge_is_audited(tmp_path: Path) -> None:
    rotate_keyset(tmp_path / "kek.json")
    s = Settings(
        capture=CaptureSettings(
            dir=tmp_path / "cap",
            kms_keyset_file=tmp_path / "kek.json",
            purge_interval_s=0,
            retention={"debug": "1h"},
        ),
        audit=AuditSettings(path=tmp_path / "audit.jsonl"),
        pii=PiiSettings(key_reload_interval_s=0),
    )
    c = Compliance(s, CollectorRegistry())
    assert c.capture is not None
    _fill(c.capture.store, LocalKeysetKms(c.keysets["capture_kek"]), "debug", 1000.0)
    table = RoutingTable(models={}, tenants={})
    await c.start(lambda: table)
    report = await c.purge_once()
    await c.stop()
    assert report is not None and report.deleted_records == {"debug": 2}
    assert c.metrics.purge_last_success._value.get() == report.now
    recs = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    purge = [r for r in recs if r["action"] == "capture.purge"]
    assert purge[0]["details"]["deleted_records"] == {"debug": 2}
    with (tmp_path / "audit.jsonl").open("rb") as f:
        assert verify(f).ok


def test_cli_purge_deletes_nothing_when_its_proof_cannot_be_written(
    kms: LocalKeysetKms, tmp_path: Path
) -> None:
    """A bad audit key file: the purge refuses before deleting (its counts
    could never be recorded afterwards)."""
    store = CaptureStore(tmp_path / "cap", HOUR)
    _fill(store, kms, "debug", T0)
    bad_key = tmp_path / "audit-keys.json"
    bad_key.write_text("not a keyset")
    out = subprocess.run(
        [sys.executable, "-m", "router.cli", "capture", "purge", "--dir", str(store.root),
         "--retention", "debug=7d", "--audit", str(tmp_path / "audit.jsonl"),
         "--audit-key-file", str(bad_key), "--now", str(T0 + 8 * DAY)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert len(list(store.records())) == 2  # nothing deleted


def test_cli_purge_and_show(kms: LocalKeysetKms, tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "cap", HOUR)
    _fill(store, kms, "debug", T0)
    _fill(store, kms, "debug", T0 + 8 * DAY)
    audit = tmp_path / "audit.jsonl"
    run = [sys.executable, "-m", "router.cli", "capture"]
    out = subprocess.run(
        [*run, "purge", "--dir", str(store.root), "--retention", "debug=7d", "--audit",
         str(audit), "--now", str(T0 + 8 * DAY), "--prom-file", str(tmp_path / "purge.prom")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["deleted_records"] == {"debug": 2}
    assert report["oldest_remaining_ts"] == T0 + 8 * DAY
    assert (
        "inferline_capture_purge_last_success_timestamp_seconds"
        in (tmp_path / "purge.prom").read_text()
    )
    ok = subprocess.run([sys.executable, "-m", "router.cli", "audit", "verify", str(audit)],
                        cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stdout
    shown = subprocess.run(
        [*run, "show", "--dir", str(store.root), "--kms-keyset", str(tmp_path / "kek.json")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(x) for x in shown.stdout.splitlines()]
    assert [r["fields"]["x"] for r in rows] == [0, 1]
    # A tampered record is named and skipped, the others still shown; exit 1.
    (segment,) = [p for _, _, _, p in store.segments()]
    lines = segment.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["enc"] = {k: v[:-4] + ("AAAA" if v[-4:] != "AAAA" else "BBBB")
                    for k, v in first["enc"].items()}  # fmt: skip
    segment.write_text(json.dumps(first) + "\n" + "".join(lines[1:]))
    shown = subprocess.run(
        [*run, "show", "--dir", str(store.root), "--kms-keyset", str(tmp_path / "kek.json")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert shown.returncode == 1 and "cannot be opened" in shown.stderr
    assert "Traceback" not in shown.stderr
    assert [json.loads(x)["fields"]["x"] for x in shown.stdout.splitlines()] == [1]
