"""Training-time profiles stored with each model version.

Built once by the model builder from the training matrix and written into
``metadata.json``; the router checks live inputs against them.

- Data quality: an allowed range per feature (training min/max widened by 10%
  of the span: real traffic legitimately exceeds a finite sample a little),
  the allowed values of low-cardinality features, and an action on violation:
  ``reject`` (a caller-supplied request feature: the caller sent garbage, tell
  them) or ``impute`` (a stored feature: replace with the training default and
  mark the answer degraded).
- Drift: decile bin edges of each feature and of the training scores, with the
  training proportions, as the PSI reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BINS = 10
MAX_CATEGORIES = 32
RANGE_MARGIN = 0.10


def quality_profile(x: np.ndarray, features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for j, f in enumerate(features):
        col = x[:, j].astype(np.float64)
        lo, hi = float(col.min()), float(col.max())
        pad = (hi - lo) * RANGE_MARGIN
        values = np.unique(col)
        out.append(
            {
                "lo": lo - pad,
                "hi": hi + pad,
                "values": [float(v) for v in values] if len(values) <= MAX_CATEGORIES else None,
                "action": "reject" if f["source"] == "request" else "impute",
            }
        )
    return out


def reference(col: np.ndarray) -> dict[str, Any]:
    """Decile edges and training proportions for one column (PSI reference)."""
    col = np.asarray(col, dtype=np.float64)
    edges = np.unique(np.quantile(col, np.linspace(0, 1, BINS + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
    return {"edges": edges.tolist(), "proportions": (counts / counts.sum()).tolist()}


def drift_reference(x: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    return {
        "features": [reference(x[:, j]) for j in range(x.shape[1])],
        "score": reference(scores),
    }


def psi(expected: np.ndarray, actual_counts: np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index of observed counts against reference proportions."""
    total = actual_counts.sum()
    if total == 0:
        return 0.0
    q = np.clip(actual_counts / total, eps, None)
    p = np.clip(expected, eps, None)
    return float(np.sum((q - p) * np.log(q / p)))
