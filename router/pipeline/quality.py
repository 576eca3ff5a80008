"""Online data-quality checks against the version's training profile.

Runs on the assembled tensor, before inference. Each feature has an allowed
range (and, for low-cardinality features, an allowed value set) from training,
and an action: a request-time feature the caller sent out of profile is the
caller's error (INVALID_ARGUMENT, naming the feature); a stored feature out of
profile is imputed with the training default and the answer marked degraded
(`dq_imputed`), because the caller cannot fix the feature store. Nulls and
wrong types never reach this stage: transport and feature assembly handle them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from router.errors import InvalidArgument
from router.logging import bind_request
from router.pipeline.catalog import ModelVersion


@dataclass(slots=True)
class QualityReport:
    violations: dict[str, int] = field(default_factory=dict)
    """"<feature>:<kind>:<action>" -> rows (kind: range | cardinality)."""
    imputed: bool = False


def _out_of_range(rows: list[list[float]], lo: tuple[float, ...], hi: tuple[float, ...]) -> bool:
    """Any value outside [lo, hi] (NaN is not: as numpy's comparisons)."""
    for row in rows:
        for x, low, high in zip(row, lo, hi, strict=True):
            if x < low or x > high:
                return True
    return False


def check(version: ModelVersion, matrix: np.ndarray) -> QualityReport:
    """Validate (and repair in place) ``matrix``; raise for rejected features."""
    report = QualityReport()
    dq = version.dq
    if dq is None:
        return report
    rows = matrix.tolist()  # one conversion for both checks
    off_set: list[tuple[int, list[bool]]] = []
    for col, allowed in dq.categorical:
        if any(off := [r[col] not in allowed for r in rows]):
            off_set.append((col, off))
    if not off_set and not _out_of_range(rows, dq.lo_list, dq.hi_list):
        return report
    bad = (matrix < dq.lo) | (matrix > dq.hi)
    kinds = np.where(bad, 1, 0)
    for col, off in off_set:
        mask = np.asarray(off)
        kinds[:, col] = np.where(mask & ~bad[:, col], 2, kinds[:, col])
        bad[:, col] |= mask
    rows, cols = np.nonzero(bad)
    for c in np.unique(cols):
        action = "reject" if dq.reject[c] else "impute"
        for kind_id, kind in ((1, "range"), (2, "cardinality")):
            n = int(np.sum(kinds[:, c] == kind_id))
            if n:
                report.violations[f"{version.feature_names[c]}:{kind}:{action}"] = n
    bind_request(dq_violations=report.violations)
    rejected = [c for c in np.unique(cols) if dq.reject[c]]
    if rejected:
        c = int(rejected[0])
        raise InvalidArgument(
            f"feature '{version.feature_names[c]}' is outside the model's accepted range "
            f"[{dq.lo[c]:.6g}, {dq.hi[c]:.6g}]"
            + (" or value set" if any(col == c for col, _ in dq.categorical) else "")
        )
    defaults = np.asarray(version.defaults, dtype=np.float32)
    matrix[rows, cols] = defaults[cols]
    report.imputed = True
    return report
