"""The registry's storage port: implemented by router/backends/registry_sqlite.py.

Versions are insert-only. Every release change (aliases, experiments, shadows)
is one transaction that also bumps a single revision number, which routers
poll to know when to rebuild their routing snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from router.pipeline.arms import JoinedOutcome
from router.registry.models import (
    RegistryState,
    ReleaseChange,
    ReleaseEvent,
    VersionRecord,
)


class RegistryStore(Protocol):
    def insert_version(self, record: VersionRecord) -> VersionRecord:
        """Insert, or return the existing record for (model, version) unchanged
        (the caller compares; the store never updates a version)."""
        ...

    def get_version(self, model: str, version: int) -> VersionRecord | None: ...

    def list_versions(self, model: str | None = None) -> list[VersionRecord]: ...

    def commit(self, change: ReleaseChange) -> int:
        """Apply ``change`` atomically; returns the new revision. Aliases may
        only point at registered versions (else ``RegistrationError``)."""
        ...

    def state(self) -> RegistryState: ...

    def revision(self) -> int: ...

    def events(self, model: str | None = None, limit: int = 20) -> list[ReleaseEvent]: ...

    def record_outcomes(self, outcomes: Sequence[JoinedOutcome]) -> None: ...

    def model_lock(self, model: str) -> AbstractAsyncContextManager[None]:
        """Exclusive, across routers, while ``model``'s loaded versions change."""
        ...

    def close(self) -> None: ...
