from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.errors import Code, InferlineError
from router.observability.metrics import Metrics
from router.observability.quality import (
    MAX_CATEGORIES,
    RANGE_MARGIN,
    QualityProfile,
    Violation,
    build_profile,
)
from router.pipeline.catalog import DataQuality, ModelVersion
from router.pipeline.quality import check


def _version() -> ModelVersion:
    dq = DataQuality(
        lo=np.asarray([0.0, 0.0, -1.0]),
        hi=np.asarray([10.0, 23.0, 1.0]),
        reject=np.asarray([False, True, True]),
        categorical=((1, frozenset(float(h) for h in range(24))),),
    )
    return ModelVersion(
        model="m",
        version=1,
        input_name="i",
        output_name="o",
        n_features=3,
        schema_hash="h",
        default_score=0.1,
        views=(),
        request_features=(),
        defaults=(5.0, 12.0, 0.0),
        assembled_hash="h",
        feature_names=("stored", "hour", "req"),
        dq=dq,
    )


def test_in_profile_passes_untouched() -> None:
    m = np.asarray([[1.0, 3.0, 0.5]], dtype=np.float32)
    report = check(_version(), m)
    assert not report.imputed and report.violations == {}
    assert m.tolist() == [[1.0, 3.0, 0.5]]


def test_stored_feature_out_of_range_is_imputed() -> None:
    m = np.asarray([[99.0, 3.0, 0.5], [2.0, 4.0, 0.0]], dtype=np.float32)
    report = check(_version(), m)
    assert report.imputed and report.violations == {"stored:range:impute": 1}
    assert m[:, 0].tolist() == [5.0, 2.0]


@pytest.mark.parametrize(("row", "name"), [([1.0, 3.5, 0.0], "hour"), ([1.0, 3.0, 7.0], "req")])
def test_request_feature_out_of_profile_is_rejected(row: list[float], name: str) -> None:
    with pytest.raises(InferlineError) as exc:
        check(_version(), np.asarray([row], dtype=np.float32))
    assert exc.value.code is Code.INVALID_ARGUMENT and f"'{name}'" in exc.value.public_message


# --- router.observability.quality: profiles built from training data, checked online --


FEATURES: list[dict[str, Any]] = [
    {"name": "txn_count_24h", "source": "feast", "default": 7.3},  # integral counts
    {"name": "amount", "source": "request", "default": 80.0},
    {"name": "hour_of_day", "source": "request", "default": 11.5},  # categorical-like
    {"name": "avg_amount_7d", "source": "feast", "default": 60.0},
]


def _train(rows: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.column_stack([
        rng.poisson(7, rows),
        rng.lognormal(4, 0.8, rows),
        rng.integers(0, 24, rows),
        rng.gamma(2, 30, rows),
    ]).astype(np.float32)  # fmt: skip


def _profile(x: np.ndarray | None = None) -> QualityProfile:
    x = _train() if x is None else x
    built = build_profile(x, FEATURES)
    feats = [{**f, "profile": built[f["name"]]} for f in FEATURES]
    qp = QualityProfile.from_features(feats)
    assert qp is not None
    return qp


def test_build_profile_keeps_the_catalog_keys_and_adds_policy() -> None:
    x = _train()
    p = build_profile(x, FEATURES)
    assert list(p) == [f["name"] for f in FEATURES]
    count, amount, hour = p["txn_count_24h"], p["amount"], p["hour_of_day"]
    # Never narrower than training; widened by a share of the 1%-99% span.
    q1, q99 = np.quantile(x[:, 1].astype(np.float64), [0.01, 0.99])
    assert amount["hi"] == pytest.approx(float(x[:, 1].max()) + RANGE_MARGIN * (q99 - q1))
    assert amount["lo"] < float(x[:, 1].min())
    assert (amount["action"], count["action"]) == ("reject", "impute")
    assert hour["values"] == [float(h) for h in range(24)] and amount["values"] is None
    assert count["integer"] and hour["integer"] and not amount["integer"]
    assert not count["allow_null"] and count["null_rate"] == 0.0
    assert len(hour["values"]) <= MAX_CATEGORIES


def test_margin_is_robust_to_one_extreme_training_row() -> None:
    x = _train()
    x[0, 3] = 1e6  # a corrupt row: it is in the range (the model saw it), but
    p = build_profile(x, FEATURES)["avg_amount_7d"]  # it does not inflate the margin
    assert p["hi"] < 1e6 + 0.01 * 1e6


def test_training_nulls_make_a_feature_nullable() -> None:
    x = _train().astype(np.float64)
    x[:50, 3] = np.nan
    p = build_profile(x, FEATURES)["avg_amount_7d"]
    assert p["allow_null"] and p["null_rate"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="expected"):
        build_profile(x[:, :3], FEATURES)


def test_clean_rows_pass_untouched_including_defaults() -> None:
    qp = _profile()
    x = np.asarray([[3, 120.5, 22, 44.1], [7.3, 80.0, 11.5, 60.0]], dtype=np.float32)
    r = qp.check(x)
    assert r.violations == [] and r.matrix is x and not r.imputed and r.rejected is None


def test_each_kind_is_found_with_its_action_and_imputes_are_repaired() -> None:
    qp = _profile()
    x = np.asarray(
        [
            [np.nan, 50.0, 3, 40.0],   # stored count null -> impute
            [4.5, 50.0, 3, 40.0],      # fractional count -> type, impute
            [5, 50.0, 3, 1e7],         # stored amount out of range -> impute
            [5, np.inf, 3, 40.0],      # infinite request amount -> type, reject
            [5, 50.0, 3.5, 40.0],      # fractional hour -> type, reject
            [5, -1e6, 3, 40.0],        # request amount out of range -> reject
        ],
        dtype=np.float32,
    )  # fmt: skip
    before = x.copy()
    r = qp.check(x)
    assert r.counts() == {
        "amount:type:reject": 1,
        "amount:range:reject": 1,
        "hour_of_day:type:reject": 1,
        "txn_count_24h:null:impute": 1,
        "txn_count_24h:type:impute": 1,
        "avg_amount_7d:range:impute": 1,
    }
    assert r.rejected == Violation("amount", "type", "reject", 1) and r.imputed
    np.testing.assert_array_equal(x, before)  # a copy is repaired, not the input
    assert r.matrix[:, 0].tolist()[:2] == pytest.approx([7.3, 7.3])
    assert r.matrix[2, 3] == 60.0
    assert r.matrix[3, 1] == np.inf  # rejected cells are not repaired: the request fails


def test_unseen_category_and_presence_mask() -> None:
    qp = _profile()
    x = np.asarray([[5, 50.0, 24, 40.0], [5, 50.0, 3, 40.0]], dtype=np.float32)
    present = np.ones_like(x, dtype=bool)
    present[1, 3] = False  # the feature store had no row for this entity
    r = qp.check(x, present, inplace=True)
    assert r.counts() == {"hour_of_day:cardinality:reject": 1, "avg_amount_7d:null:impute": 1}
    assert r.matrix is x and x[1, 3] == 60.0


def test_one_kind_per_cell_null_first() -> None:
    qp = _profile()
    x = np.asarray([[np.nan, 50.0, 3, 40.0]], dtype=np.float32)
    present = np.asarray([[False, True, True, True]])
    assert qp.check(x, present).counts() == {"txn_count_24h:null:impute": 1}


def test_nullable_feature_keeps_its_nulls() -> None:
    x = _train().astype(np.float64)
    x[:50, 3] = np.nan
    qp = _profile(x)
    row = np.asarray([[5, 50.0, 3, np.nan]], dtype=np.float32)
    r = qp.check(row)
    assert r.violations == [] and np.isnan(r.matrix[0, 3])


def test_profiles_from_existing_artifacts_still_load() -> None:
    """metadata.json written before ``build_profile`` (lo/hi/values/action only)."""
    feats = [
        {"name": "a", "default": 1.0, "profile": {"lo": 0.0, "hi": 2.0, "values": None,
                                                  "action": "impute"}},
        {"name": "b", "default": 0.5, "profile": {"lo": -0.1, "hi": 1.1, "values": [0.0, 1.0],
                                                  "action": "reject"}},
    ]  # fmt: skip
    qp = QualityProfile.from_features(feats)
    assert qp is not None
    r = qp.check(np.asarray([[1.5, 0.5], [3.0, 1.0], [1.0, 0.7]], dtype=np.float32))
    assert r.counts() == {"b:cardinality:reject": 1, "a:range:impute": 1}
    assert QualityProfile.from_features([{"name": "a", "default": 1.0}]) is None


def test_float32_cells_on_a_float64_bound_are_in_range() -> None:
    qp = QualityProfile(["a"], [{"lo": 0.1, "hi": 0.7, "action": "reject"}], [0.3])
    edge = np.asarray([[np.float32(0.1)], [np.float32(0.7)]], dtype=np.float32)
    assert qp.check(edge).violations == []


def test_counts_feed_the_dq_series() -> None:
    qp = _profile()
    r = qp.check(np.asarray([[5, 50.0, 3, 1e7], [5, 50.0, 3, 2e7]], dtype=np.float32))
    m = Metrics(lambda: (frozenset({"demo"}), frozenset({"fraud"})))
    m.observe_rpc("/x/Predict", "OK", 0.002, {"tenant": "demo", "model": "fraud", "version": 2,
                                             "dq_violations": r.counts()})  # fmt: skip
    text = m.render().decode()
    assert (
        'inferline_dq_violations_total{action="impute",feature="avg_amount_7d",kind="range",'
        'model="fraud"} 2.0' in text
    )


def test_nulls_in_a_nullable_integral_categorical_feature_are_not_type_errors() -> None:
    x = _train().astype(np.float64)
    x[:50, 2] = np.nan  # hour_of_day: integral, categorical-like, nullable
    qp = _profile(x)
    rows = np.asarray([[5, 50.0, np.nan, 40.0], [5, 50.0, 30, 40.0]], dtype=np.float32)
    present = np.asarray([[True] * 4, [True, True, True, True]])
    assert qp.check(rows, present).counts() == {"hour_of_day:range:reject": 1}
    absent = present.copy()
    absent[1, 2] = False  # absent: what the cell holds is not judged, and the
    r = qp.check(rows, absent)  # model gets NaN there (its missing-value branch)
    assert r.violations == [] and np.isnan(r.matrix[1, 2]) and rows[1, 2] == 30
