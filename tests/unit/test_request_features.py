"""Request-time feature validation: types, NaN/Inf, presence."""

from __future__ import annotations

import math

import pytest

from router.errors import Code, InferlineError
from router.pipeline.catalog import ModelVersion, RequestFeature
from router.pipeline.features import fill_request_features
from router.pipeline.types import CandidateIn, Scalar


def _version() -> ModelVersion:
    return ModelVersion(
        model="m",
        version=1,
        input_name="i",
        output_name="o",
        n_features=2,
        schema_hash="h",
        default_score=0.1,
        views=(),
        request_features=(RequestFeature("amount", 0), RequestFeature("hour", 1)),
        defaults=(0.0, 0.0),
    )


def _cand(**features: Scalar) -> CandidateIn:
    return CandidateIn(candidate_id="c", entities={}, features=features)


def test_fills_columns_in_schema_order() -> None:
    rows = [[0.0, 0.0], [0.0, 0.0]]
    fill_request_features(_version(), [_cand(hour=3, amount=1.5), _cand(amount=2, hour=True)], rows)
    assert rows == [[1.5, 3.0], [2.0, 1.0]]


@pytest.mark.parametrize(
    "features",
    [
        {"amount": math.nan, "hour": 1},
        {"amount": math.inf, "hour": 1},
        {"amount": -math.inf, "hour": 1},
        {"amount": 1e39, "hour": 1},  # overflows float32
        {"amount": "12", "hour": 1},  # wrong type
        {"hour": 1},  # missing
    ],
)
def test_bad_request_features_are_invalid_argument(features: dict[str, Scalar]) -> None:
    with pytest.raises(InferlineError) as exc:
        fill_request_features(_version(), [_cand(**features)], [[0.0, 0.0]])
    assert exc.value.code is Code.INVALID_ARGUMENT
