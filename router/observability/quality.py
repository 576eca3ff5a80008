"""Online data quality: live feature rows checked against the version's training profile.

Why: a model scores whatever it is given. A unit change upstream, a broken
feature pipeline or a client sending garbage produces confident, wrong scores
and no error. Each model version therefore carries a profile of what it was
trained on (``build_profile``, stored per feature in ``metadata.json``), and
every request's matrix is checked against it before inference.

Each cell gets at most one violation kind, the first that applies:

- ``null``: absent (presence mask) or NaN, where training had no nulls;
- ``type``: infinite, or fractional for a feature that was integral in training;
- ``range``: outside the training range widened by a margin;
- ``cardinality``: a value never seen for a low-cardinality feature.

and the feature's action: ``impute`` (a stored feature: the caller cannot fix the
feature store, so the cell gets the training default and the answer is marked
degraded) or ``reject`` (a request feature: the caller sent it, so the request
is refused, INVALID_ARGUMENT naming the feature). The training default is
always accepted: it is what missing and stale rows are imputed with upstream.

Pure numpy, vectorised over the whole [rows, features] matrix; a clean matrix
(the common case) costs a handful of array operations and no Python loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["null", "type", "range", "cardinality"]
Action = Literal["impute", "reject"]
KINDS: tuple[Kind, ...] = ("null", "type", "range", "cardinality")

MAX_CATEGORIES = 32
"""At most this many distinct training values makes a feature categorical-like."""
QUANTILES = (0.01, 0.99)
RANGE_MARGIN = 0.25
"""The range is the training [min, max] widened by this share of the
inter-quantile span: never narrower than what the model saw (a narrower range
would impute exactly the rare values that carry signal), and not inflated by a
single extreme training row as a share of the full span would be."""


def build_profile(
    x: np.ndarray, features: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Profile of each training column, keyed by feature name, for ``metadata.json``.

    ``features``: the schema entries (``name``, ``source``; ``default`` if known).
    Each profile keeps the keys the router's catalog reads today (``lo``, ``hi``,
    ``values``, ``action``) and adds ``allow_null``, ``null_rate``, ``integer``
    and the quantiles used.
    """
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ValueError(f"x has shape {x.shape}, expected [rows, {len(features)}]")
    out: dict[str, dict[str, Any]] = {}
    for j, f in enumerate(features):
        col = np.asarray(x[:, j], dtype=np.float64)
        nulls = ~np.isfinite(col)
        finite = col[~nulls]
        if finite.size == 0:
            raise ValueError(f"feature {f['name']!r} has no finite training values")
        lo, hi = float(finite.min()), float(finite.max())
        q_lo, q_hi = (float(v) for v in np.quantile(finite, QUANTILES))
        span = q_hi - q_lo or hi - lo or max(abs(lo), 1.0)
        values = np.unique(finite)
        out[str(f["name"])] = {
            "lo": lo - RANGE_MARGIN * span,
            "hi": hi + RANGE_MARGIN * span,
            "values": values.tolist() if len(values) <= MAX_CATEGORIES else None,
            "action": "reject" if f.get("source") == "request" else "impute",
            # A model trained with nulls (e.g. XGBoost's missing branch) handles them.
            "allow_null": bool(nulls.any()),
            "null_rate": float(nulls.mean()),
            "integer": bool(np.all(finite == np.round(finite))),
            "quantiles": {"q": list(QUANTILES), "values": [q_lo, q_hi]},
        }
    return out


@dataclass(frozen=True, slots=True)
class Violation:
    feature: str
    kind: Kind
    action: Action
    rows: int


@dataclass(slots=True)
class QualityResult:
    matrix: np.ndarray
    """The input (untouched) when clean; else a repaired copy, or the input
    repaired in place when ``check(..., inplace=True)``."""
    violations: list[Violation] = field(default_factory=list)

    @property
    def imputed(self) -> bool:
        """Some cell was replaced by its default: mark the answer degraded."""
        return any(v.action == "impute" for v in self.violations)

    @property
    def rejected(self) -> Violation | None:
        """The first violation of a reject feature: answer INVALID_ARGUMENT."""
        return next((v for v in self.violations if v.action == "reject"), None)

    def counts(self) -> dict[str, int]:
        """Rows per "feature:kind:action": what ``Metrics.observe_request`` and the log take."""
        return {f"{v.feature}:{v.kind}:{v.action}": v.rows for v in self.violations}


class QualityProfile:
    """A version's profiles compiled to arrays once (at load), checked per request."""

    def __init__(
        self,
        names: Sequence[str],
        profiles: Sequence[Mapping[str, Any]],
        defaults: Sequence[float],
    ) -> None:
        n = len(names)
        if not len(profiles) == len(defaults) == n:
            raise ValueError("names, profiles and defaults must have one entry per feature")
        self.names = tuple(names)
        # Bounds rounded outwards to float32 so a float32 cell equal to a float64
        # bound is never a violation.
        lo64 = np.asarray([p["lo"] for p in profiles], dtype=np.float64)
        hi64 = np.asarray([p["hi"] for p in profiles], dtype=np.float64)
        lo = lo64.astype(np.float32)
        hi = hi64.astype(np.float32)
        self.lo = np.where(lo > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
        self.hi = np.where(hi < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
        self.defaults = np.asarray(defaults, dtype=np.float32)
        self.reject = np.asarray([p.get("action", "impute") == "reject" for p in profiles])
        self.allow_null = np.asarray([bool(p.get("allow_null", False)) for p in profiles])
        self._int_cols = np.flatnonzero([bool(p.get("integer", False)) for p in profiles])
        self._int_defaults = self.defaults[self._int_cols]
        cats = [(j, p["values"]) for j, p in enumerate(profiles) if p.get("values") is not None]
        self._cat_cols = np.asarray([j for j, _ in cats], dtype=np.intp)
        width = max((len(v) + 1 for _, v in cats), default=1)
        # Allowed values per categorical column, padded with NaN (equal to nothing).
        self._allowed = np.full((len(cats), width), np.nan, dtype=np.float32)
        for i, (j, values) in enumerate(cats):
            allowed = np.asarray([*values, self.defaults[j]], dtype=np.float32)
            self._allowed[i, : len(allowed)] = allowed

    @classmethod
    def from_features(cls, features: Sequence[Mapping[str, Any]]) -> QualityProfile | None:
        """From ``metadata.json``'s feature list (None when a feature has no profile)."""
        if any(not f.get("profile") for f in features):
            return None
        return cls(
            [f["name"] for f in features],
            [f["profile"] for f in features],
            [float(f["default"]) for f in features],
        )

    def check(
        self, x: np.ndarray, present: np.ndarray | None = None, *, inplace: bool = False
    ) -> QualityResult:
        """Check a float32 [rows, features] matrix; ``present``: False where a
        value was absent (what the cell holds there is not judged)."""
        bad = ~((x >= self.lo) & (x <= self.hi))  # NaN fails both comparisons
        if present is not None:
            bad |= ~present
        nonint = None
        if self._int_cols.size:
            sub = x[:, self._int_cols]
            nonint = (sub != np.floor(sub)) & (sub != self._int_defaults)
        off = None
        if self._cat_cols.size:
            sub = x[:, self._cat_cols]
            off = ~(sub[:, :, None] == self._allowed[None, :, :]).any(axis=2)
        if not (
            bad.any() or (nonint is not None and nonint.any()) or (off is not None and off.any())
        ):
            return QualityResult(x)
        return self._classify(x, present, nonint, off, inplace)

    def _classify(
        self,
        x: np.ndarray,
        present: np.ndarray | None,
        nonint: np.ndarray | None,
        off: np.ndarray | None,
        inplace: bool,
    ) -> QualityResult:
        """The rare path: one kind per cell (null > type > range > cardinality).

        Only cells holding a value are judged for type, range and cardinality; an
        absent cell is a null violation or, for a nullable feature, nothing."""
        absent = np.isnan(x)
        if present is not None:
            absent |= ~present
        null = absent & ~self.allow_null
        valued = ~absent
        typ = np.isinf(x)
        if nonint is not None:
            typ[:, self._int_cols] |= nonint
        typ &= valued
        rng = ~((x >= self.lo) & (x <= self.hi)) & valued & ~typ
        card = np.zeros_like(null)
        if off is not None:
            card[:, self._cat_cols] = off
        card &= valued & ~typ & ~rng
        violations: list[Violation] = []
        for kind, mask in zip(KINDS, (null, typ, rng, card), strict=True):
            rows = mask.sum(axis=0)
            for j in np.flatnonzero(rows):
                action: Action = "reject" if self.reject[j] else "impute"
                violations.append(Violation(self.names[j], kind, action, int(rows[j])))
        impute = (null | typ | rng | card) & ~self.reject
        # An absent value of a nullable feature reaches the model as NaN (its
        # missing-value branch), whatever the buffer held: no violation.
        to_nan = absent & self.allow_null & ~np.isnan(x)
        out = x
        if impute.any() or to_nan.any():
            out = x if inplace else x.copy()
            r, c = np.nonzero(impute)
            out[r, c] = self.defaults[c]
            out[to_nan] = np.nan
        violations.sort(key=lambda v: (v.action != "reject", self.names.index(v.feature)))
        return QualityResult(out, violations)
