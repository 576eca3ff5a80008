"""triton_models.xgb_onnx: an XGBoost forest converted to an ONNX-ML tree
ensemble scores what ``Booster.inplace_predict(predict_type="value")`` scores,
and what it cannot translate is refused rather than scored wrongly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from triton_models.xgb_onnx import (
    PARITY_ATOL,
    OnnxForest,
    UnsupportedForest,
    agrees,
    forest_onnx,
    load_forest,
    probe_batches,
)

N_FEATURES = 9


def _data(seed: int = 7, n: int = 2_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan  # the trees learn default directions
    y = (x[:, 0] + 0.5 * np.nan_to_num(x[:, 1]) > 0).astype(np.float32)
    return x, y


def _train(params: dict[str, Any], rounds: int = 30) -> xgb.Booster:
    x, y = _data()
    return xgb.train({"nthread": 1, **params}, xgb.DMatrix(x, label=y), num_boost_round=rounds)


def _json(booster: xgb.Booster) -> dict[str, Any]:
    return json.loads(booster.save_raw("json"))  # type: ignore[no-any-return]


def _splits(model: dict[str, Any]) -> list[tuple[int, float]]:
    """(feature, threshold) of every split node of every tree."""
    return [
        (f, c)
        for tree in model["learner"]["gradient_booster"]["model"]["trees"]
        for f, c, left in zip(
            tree["split_indices"], tree["split_conditions"], tree["left_children"], strict=True
        )
        if left != -1
    ]


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    return _train({"objective": "binary:logistic", "max_depth": 5, "base_score": 0.3})


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def test_scores_match_xgboost_for_every_batch_size(booster: xgb.Booster) -> None:
    forest = OnnxForest(forest_onnx(_json(booster)))
    for n in (1, 2, 7, 16, 64, 65, 500):
        x = _rows(n, seed=n)
        got = forest(x)
        want = booster.inplace_predict(x, predict_type="value")
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
        assert ((got > 0) & (got < 1)).all()  # probabilities: the sigmoid applied


def test_split_thresholds_and_missing_values_route_like_xgboost(booster: xgb.Booster) -> None:
    """Rows exactly on every split threshold (x < t goes left, so x == t goes
    right) and rows of all-missing features (each node's default direction)."""
    model = _json(booster)
    thresholds = sorted(set(_splits(model)))
    x = np.zeros((len(thresholds) + 1, N_FEATURES), dtype=np.float32)
    for i, (f, c) in enumerate(thresholds):
        x[i, f] = np.float32(c)
    x[-1] = np.nan
    got = OnnxForest(forest_onnx(model))(x)
    np.testing.assert_allclose(got, booster.inplace_predict(x, predict_type="value"), atol=1e-6)


def test_base_score_written_as_a_one_element_list_is_read(booster: xgb.Booster) -> None:
    """XGBoost >= 3.1 writes ``"[3E-1]"``; the repository builder rewrites it as
    a scalar for FIL. Both forms give the same forest."""
    model = _json(booster)
    params = model["learner"]["learner_model_param"]
    scalar = str(params["base_score"]).strip("[]")
    x = _rows(32, seed=1)
    scores = []
    for form in (scalar, f"[{scalar}]"):
        params["base_score"] = form
        scores.append(OnnxForest(forest_onnx(model))(x))
    assert np.array_equal(scores[0], scores[1])


def test_reg_logistic_is_converted_too() -> None:
    b = _train({"objective": "reg:logistic", "max_depth": 3}, rounds=10)
    x = _rows(20, seed=2)
    got = OnnxForest(forest_onnx(_json(b)))(x)
    np.testing.assert_allclose(got, b.inplace_predict(x, predict_type="value"), atol=1e-6)


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"objective": "reg:squarederror"}, "objective"),
        ({"objective": "multi:softprob", "num_class": 3}, "objective"),
        ({"objective": "binary:logistic", "booster": "dart"}, "booster"),
    ],
)
def test_what_it_cannot_translate_is_refused(params: dict[str, Any], why: str) -> None:
    if params.get("num_class"):
        x, y = _data()
        b = xgb.train({"nthread": 1, **params}, xgb.DMatrix(x, label=(y * 2).astype(int) % 3), 3)
    else:
        b = _train(params, rounds=3)
    with pytest.raises(UnsupportedForest, match=why):
        forest_onnx(_json(b))


def test_categorical_splits_are_refused(booster: xgb.Booster) -> None:
    model = _json(booster)
    model["learner"]["gradient_booster"]["model"]["trees"][3]["split_type"][0] = 1
    with pytest.raises(UnsupportedForest, match="categorical"):
        forest_onnx(model)


def test_probe_batches_take_both_sides_of_real_splits(booster: xgb.Booster) -> None:
    model = _json(booster)
    batches = probe_batches(model, N_FEATURES, (1, 3, 64))
    assert [b.shape for b in batches] == [(1, N_FEATURES), (3, N_FEATURES), (64, N_FEATURES)]
    assert all(b.dtype == np.float32 for b in batches)
    x = batches[2]
    assert np.isnan(x).any()  # default directions are probed too
    # Every finite value sits on a threshold of its feature or just below one.
    splits = _splits(model)
    for j in range(N_FEATURES):
        ts = np.asarray([c for f, c in splits if f == j], dtype=np.float32)
        col = x[:, j][~np.isnan(x[:, j])]
        if len(ts) == 0:
            assert (col == 0).all()
            continue
        on = np.isin(col, ts)
        below = np.isin(np.nextafter(col, np.float32(np.inf)), ts)
        assert (on | below).all() and on.any() and below.any()


def test_agrees_reports_the_largest_difference(booster: xgb.Booster) -> None:
    forest = OnnxForest(forest_onnx(_json(booster)))
    batches = probe_batches(_json(booster), N_FEATURES)

    def reference(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(x, predict_type="value"))

    assert agrees(forest, reference, batches) <= 1e-6 < PARITY_ATOL

    def shifted(x: np.ndarray) -> np.ndarray:
        return reference(x) + 0.01

    assert agrees(forest, shifted, batches) == pytest.approx(0.01, abs=1e-6)

    def short(x: np.ndarray) -> np.ndarray:
        return reference(x)[:-1]

    with pytest.raises(ValueError, match="scores for"):
        agrees(forest, short, batches)


def _reference(booster: xgb.Booster) -> Any:
    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(booster.inplace_predict(x, predict_type="value"))

    return predict


def test_load_forest_serves_a_model_that_agrees(booster: xgb.Booster, tmp_path: Path) -> None:
    path = tmp_path / "xgboost.json"
    booster.save_model(str(path))
    forest, why = load_forest(str(path), _reference(booster), N_FEATURES)
    assert isinstance(forest, OnnxForest), why
    assert why.startswith("agrees with XGBoost within ")
    x = _rows(5, seed=9)
    np.testing.assert_allclose(forest(x), _reference(booster)(x), atol=1e-6)


def test_load_forest_never_raises_and_says_why(booster: xgb.Booster, tmp_path: Path) -> None:
    """What the model then serves through XGBoost: a forest it cannot translate,
    a file that is not what it expects, and a forest that disagrees."""
    ref = _reference(booster)
    linear = tmp_path / "linear.json"
    _train({"objective": "reg:squarederror"}, rounds=2).save_model(str(linear))
    assert load_forest(str(linear), ref, N_FEATURES) == (
        None,
        "unusable (UnsupportedForest: objective 'reg:squarederror')",
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"learner": {}}')
    forest, why = load_forest(str(broken), ref, N_FEATURES)
    assert forest is None and why.startswith("unusable (KeyError")
    forest, why = load_forest(str(tmp_path / "missing.json"), ref, N_FEATURES)
    assert forest is None and why.startswith("unusable (FileNotFoundError")
    path = tmp_path / "xgboost.json"
    booster.save_model(str(path))

    def off(x: np.ndarray) -> np.ndarray:
        return ref(x) + 1e-3

    forest, why = load_forest(str(path), off, N_FEATURES)
    assert forest is None and why.startswith("differs from XGBoost by 1.00e-03")
