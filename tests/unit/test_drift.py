from __future__ import annotations

import numpy as np
import pytest

from router.observability.drift import (
    ALERT,
    SCORE,
    WARN,
    DriftMonitor,
    VersionDrift,
    build_reference,
    level,
)
from router.observability.drift import psi as vpsi
from router.observability.profile import drift_reference, psi


def _monitor(train: np.ndarray, scores: np.ndarray, window: int = 2000) -> DriftMonitor:
    m = DriftMonitor(window=window, min_samples=200)
    m.register("m", 1, ["a", "b"], drift_reference(train, scores))
    return m


def test_undrifted_traffic_stays_below_warn_and_drifted_crosses_alert() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20_000, 2))
    scores = 1 / (1 + np.exp(-train[:, 0]))
    mon = _monitor(train, scores)
    for _ in range(100):
        x = rng.normal(size=(20, 2))
        mon.observe("m", 1, x, 1 / (1 + np.exp(-x[:, 0])))
    calm = mon.snapshot()[("m", 1)]
    assert max(calm.values()) < 0.1
    for _ in range(100):  # feature a shifted by 2 sigma; b untouched
        x = rng.normal(size=(20, 2))
        x[:, 0] += 2.0
        mon.observe("m", 1, x, 1 / (1 + np.exp(-x[:, 0])))
    drifted = mon.snapshot()[("m", 1)]
    assert drifted["a"] > 0.25 and drifted[SCORE] > 0.25
    assert drifted["b"] < 0.1


def test_window_forgets_old_rows() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(5000, 2))
    mon = _monitor(train, train[:, 0], window=500)
    x = rng.normal(size=(600, 2)) + 3
    mon.observe("m", 1, x, x[:, 0])
    assert mon.snapshot()[("m", 1)]["a"] > 0.25
    for _ in range(30):
        y = rng.normal(size=(20, 2))
        mon.observe("m", 1, y, y[:, 0])
    assert mon.snapshot()[("m", 1)]["a"] < 0.1  # the shifted rows fell out of the window


def test_psi_of_identical_distribution_is_zero_and_min_samples_gate() -> None:
    p = np.full(10, 0.1)
    assert psi(p, np.full(10, 50)) == 0.0
    mon = DriftMonitor(window=100, min_samples=50)
    assert mon.snapshot() == {}


def test_window_counts_equal_a_histogram_of_the_last_rows() -> None:
    """Ring + incremental counts == binning exactly the last ``window`` rows, for
    batches that wrap the ring, fill it exactly, or exceed it."""
    rng = np.random.default_rng(2)
    train = rng.normal(size=(5000, 3))
    ref = build_reference(train, train[:, 0], [{"name": n} for n in "abc"])
    vd = VersionDrift(["a", "b", "c"], ref, window=50)
    seen: list[np.ndarray] = []
    for rows in [1, 7, 20, 22, 1, 50, 3, 64, 49, 2, 1, 1, 30]:
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        vd.observe(x)
        seen.append(x)
        last = np.concatenate(seen)[-50:]
        for j, col in enumerate([*ref["features"], ref["score"]]):  # as build time bins
            bins = np.searchsorted(np.asarray(col["edges"]), last[:, j], side="right")
            expected = np.bincount(bins, minlength=len(col["proportions"]))
            got = vd.counts.reshape(4, -1)[j, : len(col["proportions"])]
            assert got.tolist() == expected.tolist(), (rows, j)
        assert vd.size == min(50, len(np.concatenate(seen)))


def test_reference_has_ten_quantile_bins_with_open_tails() -> None:
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=10_000), rng.integers(0, 2, 10_000)])
    ref = build_reference(x, rng.random(10_000), [{"name": "amount"}, {"name": "is_intl"}])
    cont, binary = ref["features"]
    assert ref["names"] == ["amount", "is_intl"] and ref["bins"] == 10
    assert len(cont["edges"]) == 9 and len(cont["proportions"]) == 10
    assert np.allclose(cont["proportions"], 0.1, atol=0.002)
    # Values beyond the training extremes fall in the first/last (open) bins.
    vd = VersionDrift(["amount", "is_intl"], ref, window=10)
    vd.observe(np.asarray([[-1e9, 0, 0.5], [1e9, 1, 0.5]], dtype=np.float32))
    assert vd.counts.reshape(3, -1)[0, [0, 9]].tolist() == [1, 1]
    # Repeated values collapse edges: a binary feature has bins "< 0" (empty),
    # [0, 1) and [1, inf), and live 0s and 1s land in the same bins as in training.
    assert binary["edges"] == [0.0, 1.0] and binary["proportions"][0] == 0.0
    assert vd.counts.reshape(3, -1)[1, :3].tolist() == [0, 1, 1]


def test_register_refuses_a_reference_for_other_columns() -> None:
    rng = np.random.default_rng(4)
    train = rng.normal(size=(1000, 2))
    ref = build_reference(train, train[:, 0], [{"name": "a"}, {"name": "b"}])
    mon = DriftMonitor(window=100, min_samples=1)
    assert not mon.register("m", 1, ["b", "a"], ref)  # same width, wrong order
    assert not mon.register("m", 1, ["a"], {k: v for k, v in ref.items() if k != "names"})
    assert not mon.register("m", 1, ["a", "b"], {})
    assert mon.register("m", 1, ["a", "b"], ref)
    mon.observe("m", 1, train[:5], train[:5, 0])
    assert set(mon.snapshot()[("m", 1)]) == {"a", "b", SCORE}
    mon.retain(set())
    assert mon.snapshot() == {}


def test_sampling_every_nth_request_and_levels() -> None:
    rng = np.random.default_rng(5)
    train = rng.normal(size=(1000, 1))
    mon = DriftMonitor(window=1000, min_samples=1, every=4)
    mon.register("m", 1, ["a"], build_reference(train, train[:, 0], [{"name": "a"}]))
    for _ in range(40):
        mon.observe("m", 1, train[:2], train[:2, 0])
    mon.flush()
    assert mon._versions[("m", 1)].size == 20  # 10 of 40 requests, 2 rows each
    assert [level(v) for v in (0.05, 0.1, 0.2, 0.26)] == ["ok", "ok", "warn", "alert"]
    assert (WARN, ALERT) == (0.1, 0.25)


def test_psi_is_vectorised_per_column_and_padding_is_neutral() -> None:
    expected = np.asarray([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    counts = np.asarray([[50, 50, 0], [20, 30, 50]])
    assert vpsi(expected, counts).tolist() == [0.0, 0.0]
    shifted = vpsi(expected, np.asarray([[90, 10, 0], [20, 30, 50]]))
    p, q = np.asarray([0.5, 0.5]), np.asarray([0.9, 0.1])
    assert shifted[0] == pytest.approx(float(np.sum((q - p) * np.log(q / p))))


def test_discrete_features_do_not_drift_against_themselves() -> None:
    """Counts, flags and hours: every value sits on a decile edge, so live rows must
    be binned exactly as the training rows were (PSI ~0, not ~10)."""
    rng = np.random.default_rng(6)
    train = np.column_stack([
        rng.integers(0, 2, 20_000),       # is_international
        rng.poisson(0.7, 20_000),         # txn_count_1h
        rng.integers(0, 24, 20_000),      # hour_of_day
    ]).astype(np.float32)  # fmt: skip
    names = ["is_international", "txn_count_1h", "hour_of_day"]
    mon = DriftMonitor(window=2000, min_samples=200)
    assert mon.register(
        "m", 1, names, build_reference(train, train[:, 1], [{"name": n} for n in names])
    )
    for _ in range(100):
        x = np.column_stack([
            rng.integers(0, 2, 20), rng.poisson(0.7, 20), rng.integers(0, 24, 20)
        ]).astype(np.float32)  # fmt: skip
        mon.observe("m", 1, x, x[:, 1])
    assert max(mon.snapshot()[("m", 1)].values()) < 0.02


def test_rows_are_added_in_batches_and_equal_per_request_updates() -> None:
    """Buffered rows reach the window in one (deferred) update per ``batch_rows``;
    the counts are those of adding each request at once; a snapshot flushes."""
    rng = np.random.default_rng(6)
    train = rng.normal(size=(1000, 2))
    ref = build_reference(train, train[:, 0], [{"name": "a"}, {"name": "b"}])
    batched = DriftMonitor(window=50, min_samples=1, batch_rows=8)
    direct = DriftMonitor(window=50, min_samples=1, batch_rows=1)
    for mon in (batched, direct):
        mon.register("m", 1, ["a", "b"], ref)
    deferred: list[tuple[object, ...]] = []
    live = rng.normal(size=(70, 2))
    for i in range(0, 69, 3):  # 23 requests of 3 rows
        rows = live[i : i + 3]
        batched.observe("m", 1, rows, rows[:, 1], defer=lambda *a: deferred.append(a))
        direct.observe("m", 1, rows, rows[:, 1])
    vd = batched._versions[("m", 1)]
    assert vd.size == 0 and len(deferred) == 7  # 9 rows per update (3 requests)
    for fn, *args in deferred:
        fn(*args)  # type: ignore[operator]
    assert vd.size == 50  # 63 rows added, the window keeps 50
    assert batched.snapshot() == direct.snapshot()  # flushes the last 6 rows
    assert vd.counts.tolist() == direct._versions[("m", 1)].counts.tolist()
    batched.observe("m", 1, live[:2], live[:2, 1])
    batched.retain(set())
    assert batched._pending == {} and batched.snapshot() == {}
