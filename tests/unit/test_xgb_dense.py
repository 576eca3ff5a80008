"""triton_models.xgb_dense: the GBDT's direct C-API prediction returns exactly
what ``Booster.inplace_predict(predict_type="value")`` returns."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from triton_models.xgb_dense import DensePredictor

N_FEATURES = 9


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2_000, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan  # the trees learn default directions
    y = (x[:, 0] + 0.5 * np.nan_to_num(x[:, 1]) > 0).astype(np.float32)
    b = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "nthread": 1, "base_score": 0.3},
        xgb.DMatrix(x, label=y),
        num_boost_round=25,
    )
    return b


def test_direct_call_matches_inplace_predict_for_every_batch_size(booster: xgb.Booster) -> None:
    pred = DensePredictor(booster, N_FEATURES)
    assert pred.direct
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 63, 64, 65, 200):
        x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        x[rng.random(x.shape) < 0.1] = np.nan
        got = pred(x)
        want = booster.inplace_predict(x, predict_type="value")
        assert got.dtype == np.float32 and got.shape == (n,)
        assert np.array_equal(got, want)
        assert ((got > 0) & (got < 1)).all()  # probabilities: the sigmoid applied


def test_result_is_a_copy_not_the_boosters_buffer(booster: xgb.Booster) -> None:
    pred = DensePredictor(booster, N_FEATURES)
    a = pred(np.zeros((3, N_FEATURES), dtype=np.float32))
    first = a.copy()
    pred(np.ones((3, N_FEATURES), dtype=np.float32))  # reuses XGBoost's output buffer
    assert np.array_equal(a, first)
    a[0] = 5.0  # writable, like inplace_predict's result


def test_non_contiguous_and_float64_inputs_are_converted(booster: xgb.Booster) -> None:
    pred = DensePredictor(booster, N_FEATURES)
    wide = np.random.default_rng(1).normal(size=(8, 2 * N_FEATURES))
    x = wide[:, ::2]  # a strided float64 view
    want = booster.inplace_predict(np.ascontiguousarray(x, dtype=np.float32), predict_type="value")
    assert np.array_equal(pred(x), want)


def test_an_xgboost_error_surfaces_as_runtime_error(booster: xgb.Booster) -> None:
    pred = DensePredictor(booster, N_FEATURES)
    with pytest.raises(RuntimeError, match=r"(?i)feature|column"):
        pred(np.zeros((2, N_FEATURES + 3), dtype=np.float32))


def test_falls_back_to_inplace_predict_when_parity_fails(
    booster: xgb.Booster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Injected fault: a real XGBoost cannot be made to disagree with itself on
    # demand, so the direct call is replaced by one returning wrong scores.
    monkeypatch.setattr(DensePredictor, "_call", lambda self, x: np.zeros(len(x), dtype=np.float32))
    pred = DensePredictor(booster, N_FEATURES)
    assert not pred.direct
    x = np.random.default_rng(2).normal(size=(4, N_FEATURES)).astype(np.float32)
    assert np.array_equal(pred(x), booster.inplace_predict(x, predict_type="value"))


def test_direct_false_keeps_inplace_predict(booster: xgb.Booster) -> None:
    pred = DensePredictor(booster, N_FEATURES, direct=False)
    assert not pred.direct
    x = np.random.default_rng(5).normal(size=(3, N_FEATURES)).astype(np.float32)
    assert np.array_equal(pred(x), booster.inplace_predict(x, predict_type="value"))
