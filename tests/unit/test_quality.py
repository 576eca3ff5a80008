from __future__ import annotations

import numpy as np
import pytest

from router.errors import Code, InferlineError
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
