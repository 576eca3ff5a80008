"""Sliding-window drift (PSI) of live inputs and scores against training.

Why: a model's accuracy is only known weeks later (labels arrive late), but
its inputs are known now. If live feature or score distributions move away
from the training data, the model is extrapolating; PSI says how far.

Per model version, each feature column and the score are bucketed into the
training deciles stored in the version's metadata (``build_reference``: 10
quantile bins whose first and last are open-ended, fewer when a feature has
repeated values). The last ``window`` rows are kept as per-bin counts plus a
preallocated ring of the rows' bin indices (to subtract what falls out), so an
update is a few numpy operations on arrays of ``rows x columns``, independent
of the window, and PSI is only computed when metrics are scraped.

PSI = sum((q - p) * ln(q / p)) over bins, p the training share, q the live
share, both floored at ``EPS`` so an empty bin is finite. Rule of thumb (and the
alert thresholds): < 0.1 stable, 0.1-0.25 ``WARN``, > 0.25 ``ALERT``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from router.observability.profile import BINS, drift_reference

SCORE = "__score__"
WARN = 0.1
ALERT = 0.25
EPS = 1e-4


def build_reference(
    x: np.ndarray, scores: np.ndarray, features: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The PSI reference stored as ``drift_reference`` in ``metadata.json``.

    ``features``: the schema entries, in column order (their names are stored so
    a reference can never be applied to the wrong columns).
    """
    if x.ndim != 2 or x.shape[1] != len(features) or len(scores) != len(x):
        raise ValueError(f"x {x.shape} / scores {np.shape(scores)} do not match the schema")
    ref = drift_reference(x, scores)
    return {**ref, "names": [str(f["name"]) for f in features], "bins": BINS}


def psi(expected: np.ndarray, actual_counts: np.ndarray, eps: float = EPS) -> np.ndarray:
    """PSI of each row of counts against the matching row of reference shares.

    Padding bins (zero in both) contribute nothing.
    """
    total = actual_counts.sum(axis=-1, keepdims=True)
    q = np.clip(actual_counts / np.maximum(total, 1), eps, None)
    p = np.clip(expected, eps, None)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def level(value: float) -> str:
    """The PSI's band: "ok", "warn" or "alert"."""
    return "alert" if value > ALERT else "warn" if value > WARN else "ok"


class VersionDrift:
    """Window state of one model version: features + score as columns."""

    def __init__(self, names: Sequence[str], ref: Mapping[str, Any], window: int) -> None:
        cols = [*ref["features"], ref["score"]]
        self.names = [*names, SCORE]
        if len(self.names) != len(cols):
            raise ValueError(f"{len(names)} feature names for {len(cols) - 1} reference columns")
        self.window = window
        width = max(len(c["proportions"]) for c in cols)
        n = len(cols)
        self._width = width
        self.expected = np.zeros((n, width))
        # Edges padded to one rectangle with NaN (never compared true), so binning
        # every column is one broadcast comparison.
        edges = np.full((n, width - 1), np.nan)
        for i, c in enumerate(cols):
            self.expected[i, : len(c["proportions"])] = c["proportions"]
            edges[i, : len(c["edges"])] = c["edges"]
        # float32, rounded up: for a float32 value v, v >= e exactly when v >= the
        # smallest float32 >= e, so comparing in float32 changes no bin. Laid out
        # edges-first ([edges, 1, columns]) so the per-row count is a sum over the
        # leading axis (~5x faster than over a short trailing one).
        e32 = edges.astype(np.float32)
        e32 = np.where(e32 < edges, np.nextafter(e32, np.float32(np.inf)), e32)
        self._edges = np.ascontiguousarray(e32.T[:, None, :])
        self._offsets = np.arange(n, dtype=np.intp) * width
        self.counts = np.zeros(n * width, dtype=np.int64)
        self._ring = np.zeros((window, n), dtype=np.int32)
        self._pos = 0
        self.size = 0

    def observe(self, values: np.ndarray) -> None:
        """``values``: [rows, features + 1], the score last (float32, as the model's
        input tensor; float64 values are rounded to float32 first)."""
        if len(values) > self.window:
            values = values[-self.window :]
        rows = len(values)
        # bin = number of edges <= value, as the reference was counted
        # (searchsorted side="right"): a discrete feature's values sit on edges.
        v = values.astype(np.float32, copy=False)
        hits = (v[None] >= self._edges).view(np.uint8).sum(axis=0, dtype=np.uint8)
        flat = hits + self._offsets
        end = self._pos + rows
        slots: slice | np.ndarray
        if end <= self.window:
            slots = slice(self._pos, end)
            # Until the ring is full, _pos == size: the slots ahead are empty.
            old = self._ring[slots] if self.size == self.window else None
        else:
            slots = np.arange(self._pos, end) % self.window
            evict = self.size + rows - self.window
            # Empty slots (if any) come first in ``slots``, occupied ones last.
            old = self._ring[slots[rows - evict :]]
        if rows == 1:
            # One row touches one bin per column: distinct indices, plain indexing.
            self.counts[flat[0]] += 1
            if old is not None:
                self.counts[old[0]] -= 1
        else:
            n = len(self.counts)
            self.counts += np.bincount(flat.ravel(), minlength=n)
            if old is not None and len(old):
                self.counts -= np.bincount(old.ravel(), minlength=n)
        self._ring[slots] = flat
        self._pos = end % self.window
        self.size = min(self.window, self.size + rows)

    def psi(self) -> dict[str, float]:
        values = psi(self.expected, self.counts.reshape(len(self.names), self._width))
        return dict(zip(self.names, values.tolist(), strict=True))


def _flush(vd: VersionDrift, batch: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    matrices, scores = batch
    if len(matrices) == 1:
        vd.observe(np.column_stack((matrices[0], scores[0])))
    else:
        vd.observe(np.column_stack((np.concatenate(matrices), np.concatenate(scores))))


class DriftMonitor:
    """Drift windows of every registered (model, version).

    ``every``: observe one request in ``every`` (the window then spans more
    time for the same cost; sampling whole requests keeps the distribution).
    ``batch_rows``: observed rows are buffered per version and added to its
    window in one update once this many are waiting (and before every
    ``snapshot``): an update costs ~40-90 us of numpy calls whether it adds one
    row or a hundred, so per-request updates were ~3% of the router's CPU
    (docs/benchmarks.md). The window lags by under ``batch_rows`` rows; PSI never
    misses one.
    """

    def __init__(
        self, window: int, min_samples: int, *, every: int = 1, batch_rows: int = 64
    ) -> None:
        self.window = window
        self.min_samples = min_samples
        self.every = every
        self.batch_rows = batch_rows
        self._tick = 0
        self._versions: dict[tuple[str, int], VersionDrift] = {}
        # Per version: rows waiting for the next update, and how many.
        self._pending: dict[VersionDrift, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._pending_rows: dict[VersionDrift, int] = {}

    def register(self, model: str, version: int, names: list[str], ref: dict[str, Any]) -> bool:
        """Track a version (idempotent). False when ``ref`` is empty or does not
        match ``names`` (that version is then simply not monitored)."""
        if (model, version) in self._versions:
            return True
        if not ref or ref.get("names", names) != names:
            return False
        try:
            self._versions[(model, version)] = VersionDrift(names, ref, self.window)
        except (KeyError, ValueError):
            return False
        return True

    def retain(self, keys: set[tuple[str, int]]) -> None:
        """Forget versions no longer served (their PSI series disappear too)."""
        for key in set(self._versions) - keys:
            vd = self._versions.pop(key)
            self._pending.pop(vd, None)
            self._pending_rows.pop(vd, None)

    def observe(
        self,
        model: str,
        version: int,
        matrix: np.ndarray,
        scores: np.ndarray,
        *,
        defer: Callable[..., object] | None = None,
    ) -> None:
        """Add one request's rows (features [rows, f] and their scores [rows]).

        ``defer`` (e.g. ``loop.call_soon``) runs a due window update later, off
        the request's latency; the arrays must not change after this call."""
        vd = self._versions.get((model, version))
        if vd is None:
            return
        if self.every > 1:
            self._tick += 1
            if self._tick % self.every:
                return
        pending = self._pending.get(vd)
        if pending is None:
            pending = self._pending[vd] = ([], [])
        pending[0].append(matrix)
        pending[1].append(scores)
        rows = self._pending_rows.get(vd, 0) + len(matrix)
        if rows < self.batch_rows:
            self._pending_rows[vd] = rows
            return
        del self._pending[vd]
        self._pending_rows[vd] = 0
        if defer is None:
            _flush(vd, pending)
        else:
            defer(_flush, vd, pending)

    def flush(self) -> None:
        """Add every buffered row to its window now."""
        pending, self._pending = self._pending, {}
        self._pending_rows.clear()
        for vd, batch in pending.items():
            _flush(vd, batch)

    def snapshot(self) -> dict[tuple[str, int], dict[str, float]]:
        """PSI per feature (and score) for versions with enough observations."""
        self.flush()
        return {key: vd.psi() for key, vd in self._versions.items() if vd.size >= self.min_samples}
