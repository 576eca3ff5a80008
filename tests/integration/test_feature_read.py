"""The router's direct SQLite and Redis reads return exactly what Feast's own
``online_read`` returns, on the demo store: same values, same
event times, same missing rows, for every view (stale and unknown ids included),
in any feature order."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.backends.feast_store import FeastFeatureStore
from router.pipeline.features import ViewRead


def _reads(store: FeastFeatureStore) -> list[ViewRead]:
    """Every view: all features for many ids (stale ids % 50 == 7, an unknown id),
    five features in reverse order for a subset, and single-entity reads."""
    reads = []
    for name in ("account_features", "user_features", "item_features"):
        ids = [*range(1, 120), 7, 57, 10**7]
        feats = tuple(sorted(store.view_info(name).features))
        reads += [
            ViewRead(name, [(i,) for i in ids], feats),
            ViewRead(name, [(i,) for i in ids[::7]], feats[::-1][:5]),
            # One entity per read (the common request): its own query path.
            *(ViewRead(name, [(i,)], feats[::-1]) for i in (1, 7, 10**7)),
        ]
    return reads


async def test_direct_sqlite_read_matches_feast_online_read(demo_build: Path) -> None:
    fast = FeastFeatureStore(demo_build / "feast", inline_sync_reads=True)
    feast = FeastFeatureStore(
        demo_build / "feast", inline_sync_reads=True, direct_sqlite_reads=False
    )
    fast.start()
    feast.start()
    assert fast._sqlite is not None and feast._sqlite is None
    try:
        reads = _reads(fast)
        got, want = await fast.read(reads), await feast.read(reads)
        assert got == want
        flat = [row for rows in got for row in rows]
        assert any(r == (None, None) for r in flat)  # unknown ids come back missing
        assert sum(r[1] is not None for r in flat) > 300
    finally:
        await fast.close()
        await feast.close()


async def test_direct_redis_read_matches_feast_online_read(
    demo_build: Path, tmp_path: Path
) -> None:
    """Same parity for the Redis online store (a fresh redis-server, the demo's
    features materialized into it): values, event times, missing entities."""
    import asyncio

    from router.pipeline.features import FeatureStoreUnavailable
    from scripts.stack import RedisServer, build_demo_for_redis

    with RedisServer(tmp_path / "logs") as redis:
        repo = await asyncio.to_thread(build_demo_for_redis, tmp_path / "build", redis.url)
        fast = FeastFeatureStore(repo)
        feast = FeastFeatureStore(repo, direct_redis_reads=False)
        fast.start()
        feast.start()
        assert fast._redis is not None and feast._redis is None
        try:
            reads = _reads(fast)
            got, want = await fast.read(reads), await feast.read(reads)
            assert got == want
            flat = [row for rows in got for row in rows]
            assert any(r == (None, None) for r in flat)
            assert sum(r[1] is not None for r in flat) > 300
            redis.stop()  # the store goes away: a clean, typed failure
            with pytest.raises(FeatureStoreUnavailable):
                await fast.read(reads[:1])
        finally:
            await fast.close()
            await feast.close()
