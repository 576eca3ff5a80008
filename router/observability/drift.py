"""Sliding-window drift (PSI) of live inputs and scores against training.

Per model version, each feature column and the score are bucketed into the
training deciles stored in the version's metadata. A window of the last
``window`` rows is kept as per-bin counts plus a ring of the rows' bin
indices (to subtract what falls out), so an update costs a few vectorised
numpy operations per request and PSI is only computed when metrics are
scraped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.observability.profile import psi

SCORE = "__score__"


@dataclass
class _Column:
    edges: np.ndarray
    expected: np.ndarray


@dataclass
class VersionDrift:
    names: list[str]
    columns: list[_Column]
    window: int
    counts: np.ndarray = field(init=False)
    ring: deque[np.ndarray] = field(default_factory=deque)
    size: int = 0

    def __post_init__(self) -> None:
        width = max(len(c.expected) for c in self.columns)
        self.counts = np.zeros((len(self.columns), width), dtype=np.int64)
        # Pad edges to one rectangular array (+inf never matches), so binning
        # all columns is one broadcast comparison.
        n_edges = width - 1
        self._edges = np.full((len(self.columns), n_edges), np.inf)
        for i, c in enumerate(self.columns):
            self._edges[i, : len(c.edges)] = c.edges

    def observe(self, values: np.ndarray) -> None:
        """``values``: [rows, features + 1] (the score is the last column)."""
        bins = (values[:, :, None] > self._edges[None, :, :]).sum(axis=2)
        np.add.at(self.counts, (np.arange(len(self.columns))[None, :], bins), 1)
        self.ring.append(bins)
        self.size += len(bins)
        while self.size - len(self.ring[0]) >= self.window:
            old = self.ring.popleft()
            self.size -= len(old)
            np.add.at(self.counts, (np.arange(len(self.columns))[None, :], old), -1)

    def psi(self) -> dict[str, float]:
        return {
            name: psi(col.expected, self.counts[i, : len(col.expected)])
            for i, (name, col) in enumerate(zip(self.names, self.columns, strict=True))
        }


class DriftMonitor:
    def __init__(self, window: int, min_samples: int) -> None:
        self.window = window
        self.min_samples = min_samples
        self._versions: dict[tuple[str, int], VersionDrift] = {}

    def register(self, model: str, version: int, names: list[str], ref: dict[str, Any]) -> None:
        if (model, version) in self._versions or not ref:
            return
        cols = [
            _Column(np.asarray(r["edges"], np.float64), np.asarray(r["proportions"], np.float64))
            for r in [*ref["features"], ref["score"]]
        ]
        self._versions[(model, version)] = VersionDrift([*names, SCORE], cols, self.window)

    def observe(self, model: str, version: int, matrix: np.ndarray, scores: np.ndarray) -> None:
        vd = self._versions.get((model, version))
        if vd is None:
            return
        vd.observe(np.column_stack([matrix.astype(np.float64), scores]))

    def snapshot(self) -> dict[tuple[str, int], dict[str, float]]:
        """PSI per feature (and score) for versions with enough observations."""
        return {key: vd.psi() for key, vd in self._versions.items() if vd.size >= self.min_samples}
