"""One immutable snapshot of everything a request routes by.

The routing table and the catalog of the versions it references are swapped
together: a request reads ``holder.current`` once and keeps that snapshot to
the end, so it can never combine a new alias with an old version's schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from router.pipeline.catalog import ModelCatalog
from router.pipeline.experiment import Experiment, ShadowSpec
from router.pipeline.routing import RoutingTable


@dataclass(frozen=True, slots=True)
class Snapshot:
    table: RoutingTable
    catalog: ModelCatalog
    experiments: Mapping[str, Experiment] = field(default_factory=dict)
    """model -> the online experiment (canary or A/B) splitting its alias."""
    shadows: Mapping[str, ShadowSpec] = field(default_factory=dict)
    """model -> the candidate version mirrored traffic goes to."""

    @classmethod
    def load(cls, table: RoutingTable, repository: Path) -> Snapshot:
        wanted = [(m, v) for m, route in table.models.items() for v in route.versions]
        return cls(table=table, catalog=ModelCatalog.load(repository, wanted))


class SnapshotHolder:
    """Holds the current snapshot; ``swap`` replaces it in one assignment."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    @property
    def current(self) -> Snapshot:
        return self._snapshot

    def get(self) -> Snapshot:
        return self._snapshot

    def swap(self, snapshot: Snapshot) -> Snapshot:
        old, self._snapshot = self._snapshot, snapshot
        return old
