from __future__ import annotations

import numpy as np

from router.observability.drift import SCORE, DriftMonitor
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
