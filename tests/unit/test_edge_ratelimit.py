"""Quota arithmetic of the rate-limit service (the Redis-backed path runs in
tests/integration/test_edge.py)."""

from __future__ import annotations

import base64

import pytest
from google.rpc import error_details_pb2, status_pb2

from inferline_edge.ratelimit import WINDOW_S, WindowState, quota_failure_details


def test_estimate_weights_previous_window() -> None:
    # 15 s into the window: 45/60 of the previous minute still overlaps.
    s = WindowState(admitted=True, prev=40, cur=5, elapsed_ms=15_000)
    assert s.estimate() == pytest.approx(40 * 0.75 + 5)


@pytest.mark.parametrize(
    ("prev", "cur", "elapsed_s", "limit"),
    [(40, 5, 15, 30), (0, 30, 10, 30), (30, 30, 59, 30), (100, 0, 0, 50), (10, 20, 30, 20)],
)
def test_retry_after_is_when_one_more_fits(prev: int, cur: int, elapsed_s: int, limit: int) -> None:
    s = WindowState(False, prev, cur, elapsed_s * 1000)
    wait = s.retry_after_s(limit)
    assert wait >= 0

    def estimate_at(t: float) -> float:  # the service's estimate `t` seconds from now
        e = elapsed_s + t
        if e < WINDOW_S:
            return prev * (WINDOW_S - e) / WINDOW_S + cur
        return cur * (2 * WINDOW_S - e) / WINDOW_S  # next window: cur becomes prev

    assert estimate_at(wait + 0.01) + 1 <= limit + 1e-6  # fits right after the wait
    if wait > 0.5:
        assert estimate_at(wait - 0.5) + 1 > limit  # and not much earlier


def test_quota_failure_details_round_trip() -> None:
    raw = quota_failure_details("acme", 20, 7.5, "tenant acme: quota exceeded")
    st = status_pb2.Status.FromString(base64.b64decode(raw))
    assert st.code == 8 and st.message == "tenant acme: quota exceeded"
    qf = error_details_pb2.QuotaFailure()
    assert st.details[0].Unpack(qf)
    assert qf.violations[0].subject == "tenant:acme"
    ri = error_details_pb2.RetryInfo()
    assert st.details[1].Unpack(ri)
    assert ri.retry_delay.seconds == 7 and ri.retry_delay.nanos == 500_000_000
