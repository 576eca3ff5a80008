"""A short DR drill: region A lost under load, region B serves from A's last backup.

Figures come from ``python -m bench.dr_drill`` (docs/reliability.md); this test
pins the behaviour: failover happens, the loss is bounded by the last backup and
counted exactly, B serves the restored table, and residency holds after failover.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.dr_drill import drill


@pytest.mark.slow
async def test_warm_standby_drill(
    demo_build: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    r = await drill(
        demo_build,
        tmp_path_factory.mktemp("dr"),
        rps=20,
        backup_every_s=1.5,
        change_every_s=0.2,
        kill_at_s=5.0,
        after_s=3.0,
    )
    assert r.rto_s is not None  # the client got answers from B after the loss
    assert r.codes.get("A:OK", 0) > 0 and r.codes.get("B:OK", 0) > 0
    made, restored = r.changes_made, r.changes_restored
    assert set(made) == {"routing_edits", "registry_rows", "audit"}
    for store, n in made.items():
        assert n > 0
        assert 0 <= r.lost[store] == n - restored[store]
    # What B holds is exactly the last backup: losses fit within one backup interval.
    assert r.last_backup_age_s is not None and r.last_backup_age_s <= 1.5 + 1.0
    assert max(r.lost.values()) <= (r.last_backup_age_s + 0.5) / 0.2 + 1
    assert r.b_serves_version == f"edit-{restored['routing_edits']}"
    assert r.pinned_tenant_on_b == "FAILED_PRECONDITION"
    assert r.unpinned_tenant_on_b == "OK"
