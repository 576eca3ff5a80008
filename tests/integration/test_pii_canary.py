"""Must-show (issue 8): PII canaries planted in requests during a load run through
the real router and Triton never appear raw in logs, spans, metrics, captures
(raw or decrypted) or the audit trail. The same run as ``python -m bench.pii_canary``."""

from __future__ import annotations

from pathlib import Path

from bench.pii_canary import run_canary

N = 200


def test_pii_canaries_never_leave_the_entry_point(demo_build: Path, tmp_path: Path) -> None:
    r = run_canary(demo_build, tmp_path / "canary", requests=N, concurrency=8)
    # Every sink was produced and searched, and none holds a planted value.
    assert all(n > 0 for n in r.scanned_bytes.values()), r.scanned_bytes
    assert r.raw_matches == dict.fromkeys(r.raw_matches, 0)
    # Controls: the search finds every planted value in what the client sent,
    # and the captures hold the planted emails as their expected tokens.
    assert r.control_matches == r.planted_values > N
    answered = r.codes["OK"]
    assert r.captures > 0 and r.captured_tokens_checked == r.captures
    # The mix exercised the error paths too (unknown tenant, PII in request_id,
    # bad feature), and the audit trail holds one verified record per scored call.
    kinds = [i % 20 for i in range(N)]
    assert r.codes["UNAUTHENTICATED"] == kinds.count(0)
    assert r.codes["INVALID_ARGUMENT"] == kinds.count(1) + kinds.count(2)
    assert answered == N - kinds.count(0) - kinds.count(1) - kinds.count(2) + kinds.count(3)
    assert r.audit_verified
    assert r.audit_predictions == N - kinds.count(1)  # id-refused calls never reach the pipeline
    # The router's own series (scraped before shutdown, so writers may lag a
    # little): nothing dropped, captures counted, the purge ran at start-up.
    m = r.compliance_metrics
    assert not any(v for k, v in m.items() if k.startswith("inferline_audit_dropped"))
    assert not any(v for k, v in m.items() if k.startswith("inferline_capture_dropped"))
    assert m["inferline_capture_purge_last_success_timestamp_seconds"] > 0
    counted = sum(v for k, v in m.items() if k.startswith("inferline_capture_records_total"))
    assert 0 < counted <= r.captures
