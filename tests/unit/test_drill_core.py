"""bench.drill_core.summarize: what a drill reports from its requests' outcomes."""

from __future__ import annotations

import pytest

from bench import drill_core as dc
from inferline.v1 import inference_pb2 as pb

LKG = pb.FALLBACK_LEVEL_LAST_KNOWN_GOOD


def _ok(at: float, level: int = dc.PRIMARY, latency_s: float = 0.01) -> dc.Outcome:
    return dc.Outcome(at, latency_s, "OK", level)


def test_degrade_recover_and_counts() -> None:
    out = [_ok(0.0), _ok(0.5), _ok(1.1, LKG), _ok(1.6, LKG), _ok(2.2), _ok(2.7)]
    r = dc.summarize("drill", out, 0.25, fault_at=1.0, clear_at=2.0)
    assert (r.sent, r.ok, r.unanswered_at_deadline, r.errors) == (6, 6, 0, {})
    assert r.degraded_by_level == {"PRIMARY": 4, "LAST_KNOWN_GOOD": 2}
    assert r.time_to_degrade_s == pytest.approx(0.11)  # answered degraded at 1.11
    assert r.time_to_recover_s == pytest.approx(0.2)  # first clean primary sent at 2.2
    assert r.extra == {"sent_after_fault": 4}  # nothing lost: no unanswered keys


def test_unanswered_requests_say_when_they_were_sent() -> None:
    """A request past its deadline (an error, or an answer too late to use) is
    unanswered; the report says when each was sent, beside the fault's time,
    so a failing drill shows which phase lost it."""
    out = [
        _ok(0.0),
        dc.Outcome(1.234, 0.25, "DEADLINE_EXCEEDED"),
        _ok(1.5, latency_s=0.31),  # answered, but after deadline + grace
        _ok(1.8, latency_s=0.29),  # within the 50 ms grace
    ]
    r = dc.summarize("drill", out, 0.25, fault_at=1.0, clear_at=None)
    assert r.unanswered_at_deadline == 2
    assert r.errors == {"DEADLINE_EXCEEDED": 1} and r.ok == 3
    assert r.extra["unanswered_sent_at_s"] == [1.234, 1.5]
    assert r.extra["fault_at_s"] == 1.0


def test_no_recovery_says_what_answered_after_the_clear() -> None:
    out = [
        _ok(0.0),
        dc.Outcome(1.1, 0.02, "OK", dc.PRIMARY, ("feature_store_unavailable",)),
        dc.Outcome(2.1, 0.001, "OK", dc.PRIMARY, ("feature_store_unavailable",)),
        dc.Outcome(2.5, 0.001, "OK", dc.PRIMARY, ("feature_store_unavailable",)),
        dc.Outcome(2.9, 0.001, "OK", LKG),
    ]
    r = dc.summarize("drill", out, 0.25, fault_at=1.0, clear_at=2.0)
    assert r.time_to_recover_s is None
    assert r.extra["after_clear"] == {
        "OK:PRIMARY:feature_store_unavailable": 2,
        "OK:LAST_KNOWN_GOOD:-": 1,
    }
