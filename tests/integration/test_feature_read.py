"""The router's direct SQLite and Redis reads return exactly what Feast's own
``online_read`` returns, on the demo store: same values, same
event times, same missing rows, for every view (stale and unknown ids included),
in any feature order."""

from __future__ import annotations

import sqlite3
import time
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
            await _damaged_blobs_read_as_missing(fast, redis.url)
            redis.stop()  # the store goes away: a clean, typed failure
            with pytest.raises(FeatureStoreUnavailable):
                await fast.read(reads[:1])
        finally:
            await fast.close()
            await feast.close()


async def _damaged_blobs_read_as_missing(fast: FeastFeatureStore, url: str) -> None:
    """Blobs that are no protobuf (written by something else, or damaged): a
    value reads as a NULL (the feature's default applies), an event time as a
    missing row; neither fails the read."""
    from feast.infra.online_stores.helpers import _mmh3

    from router.backends.feast_redis import RespClient, encode

    view = "account_features"
    feats = tuple(sorted(fast.view_info(view).features))
    read = [ViewRead(view, [(3,), (4,)], feats)]
    [[(ts3, before3), _]] = await fast.read(read)
    rows = fast._redis
    assert rows is not None and before3 is not None
    key = {i: rows._key(view, (i,), fast._key_proto(view)) for i in (3, 4)}
    host, _, port = url.rpartition(":")
    client = RespClient(host, int(port), password=None, db=0)
    try:
        await client.call(
            [
                encode(b"HSET", key[3], _mmh3(f"{view}:{feats[0]}"), b"\xff\xff"),
                encode(b"HSET", key[4], f"_ts:{view}".encode(), b"\xff\xff"),
            ]
        )
    finally:
        client.close()
    [[row3, row4]] = await fast.read(read)
    assert row3 == (ts3, [None, *before3[1:]])
    assert row4 == (None, None)


def _store_copy(demo_build: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the demo's Feast repo (tests below write to it)."""
    import shutil

    repo = tmp_path / "feast"
    shutil.copytree(demo_build / "feast", repo)
    return repo, repo / "data" / "online_store.db"


def _shift_event_times(conn: sqlite3.Connection, seconds: int) -> None:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for t in tables:
        conn.execute(f'UPDATE "{t}" SET event_ts = event_ts + ?', (seconds,))


async def test_a_materialization_in_progress_never_blocks_a_read(
    demo_build: Path, tmp_path: Path
) -> None:
    """build_demo leaves the store in WAL mode: while a writer holds an exclusive
    write transaction (a materialization's commit), inline reads on the event
    loop answer at once from the last committed snapshot, and see the new rows
    as soon as the writer commits."""
    repo, db = _store_copy(demo_build, tmp_path)
    store = FeastFeatureStore(repo, busy_timeout_s=2.0)
    store.start()
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        assert store.sqlite_journal_mode == "wal"
        read = [ViewRead("account_features", [(1,)], ("txn_count_7d", "avg_amount_30d"))]
        [[(before_ts, values)]] = await store.read(read)
        assert before_ts is not None and values is not None
        writer.execute("BEGIN EXCLUSIVE")
        _shift_event_times(writer, 3600)
        t0 = time.monotonic()
        [[during]] = await store.read(read)
        waited = time.monotonic() - t0
        assert during == (before_ts, values)  # the committed snapshot
        assert waited < 0.5  # not the 2 s busy timeout: no lock wait at all
        writer.execute("COMMIT")
        [[(after_ts, after_values)]] = await store.read(read)
        assert after_ts == before_ts + 3600 and after_values == values
    finally:
        writer.close()
        await store.close()


async def test_a_locked_rollback_journal_store_fails_fast_instead_of_stalling(
    demo_build: Path, tmp_path: Path
) -> None:
    """A store left in rollback-journal mode: a writer's exclusive lock shuts
    readers out. The inline read gives up after its busy timeout (the feature
    budget in the router, not sqlite3's default 5 s of a stalled event loop)
    with the typed store failure the pipeline degrades on."""
    from router.pipeline.features import FeatureStoreUnavailable

    repo, db = _store_copy(demo_build, tmp_path)
    conv = sqlite3.connect(db)
    assert conv.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    conv.close()
    store = FeastFeatureStore(repo, busy_timeout_s=0.05)
    store.start()
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        assert store.sqlite_journal_mode == "delete"
        read = [ViewRead("account_features", [(1,)], ("txn_count_7d",))]
        [[row]] = await store.read(read)
        writer.execute("BEGIN EXCLUSIVE")
        t0 = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable):
            await store.read(read)
        assert time.monotonic() - t0 < 1.0
        writer.execute("ROLLBACK")
        assert await store.read(read) == [[row]]  # and reads recover with the lock
    finally:
        writer.close()
        await store.close()


async def test_single_entity_reads_of_irregular_rows_match_feast(
    demo_build: Path, tmp_path: Path
) -> None:
    """Reads decode a regular entity (all float32 values, one event time) from
    one aggregate row; every irregular shape takes the row-by-row path and still
    answers what Feast's own read answers, alone or among others: a double,
    an int64, a NaN, a missing feature, an extra row, event times that differ
    across features. A NULL value (Feast's own read fails on it) reads as None."""
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    repo, db = _store_copy(demo_build, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    table = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%account_features'"
    ).fetchone()[0]
    probe = FeastFeatureStore(repo)
    probe.start()
    sqlite = probe._sqlite
    assert sqlite is not None
    feats = tuple(sorted(probe.view_info("account_features").features))
    a, b = feats[0], feats[1]
    orders = (feats, feats[::-1], (b, a))
    before = [await probe.read([ViewRead("account_features", [(14,)], o)]) for o in orders]

    def key(i: int) -> bytes:
        proto = probe._key_proto("account_features")((i,))
        return bytes(sqlite._serialize(proto, entity_key_serialization_version=sqlite._version))

    def set_value(i: int, name: str, value: bytes | None) -> None:
        conn.execute(
            f'UPDATE "{table}" SET value = ? WHERE entity_key = ? AND feature_name = ?',
            (value, key(i), name),
        )

    set_value(11, a, ValueProto(double_val=0.1).SerializeToString())
    set_value(12, a, ValueProto(int64_val=7).SerializeToString())
    set_value(13, a, ValueProto(float_val=float("nan")).SerializeToString())
    set_value(14, a, None)
    conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ? AND feature_name = ?', (key(15), a))
    conn.execute(
        f'INSERT INTO "{table}" (entity_key, feature_name, value, event_ts, created_ts) '
        "SELECT entity_key, 'not_in_view', value, event_ts, created_ts "
        f'FROM "{table}" WHERE entity_key = ? AND feature_name = ?',
        (key(16), a),
    )
    conn.execute(
        f'UPDATE "{table}" SET event_ts = event_ts - 60 WHERE entity_key = ? AND feature_name = ?',
        (key(17), b),
    )
    conn.close()
    await probe.close()

    fast = FeastFeatureStore(repo)
    feast = FeastFeatureStore(repo, direct_sqlite_reads=False)
    fast.start()
    feast.start()
    try:
        for order, [[(ts14, values14)]] in zip(orders, before, strict=True):
            for i in (10, 11, 12, 13, 15, 16, 17):
                read = [ViewRead("account_features", [(i,)], order)]
                got, want = await fast.read(read), await feast.read(read)
                assert got == want, (i, order)
            [[(ts, values)]] = await fast.read([ViewRead("account_features", [(14,)], order)])
            assert ts == ts14 and values is not None and values14 is not None
            assert values == [None if f == a else v for f, v in zip(order, values14, strict=True)]
            # The same entities in one read (aggregates, then rows for the irregular).
            ids = [(i,) for i in (10, 11, 12, 13, 15, 16, 17, 10**7, 18)]
            read = [ViewRead("account_features", ids, order)]
            assert await fast.read(read) == await feast.read(read)
            [rows] = await fast.read([ViewRead("account_features", [(14,), (10,)], order)])
            assert rows[0] == (ts, values)
        layouts = fast._sqlite._layouts  # type: ignore[union-attr]
        assert any(v is not None for v in layouts.values())  # the regular entity's
    finally:
        await fast.close()
        await feast.close()


async def test_int32_entity_keys_find_the_rows_feast_wrote(tmp_path: Path) -> None:
    """Feast keys an Int32 entity's rows by a 4-byte value: the router must build
    the same key (an int64 one finds nothing, and every candidate would be
    scored on defaults), on its direct path and through Feast's own read; a
    value that does not fit an int32 is the caller's error."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32, Int32

    from router.errors import InvalidArgument
    from router.pipeline.features import _entity_key
    from router.pipeline.types import CandidateIn
    from scripts.build_demo import write_feature_store_yaml

    repo = tmp_path / "feast"
    (repo / "data").mkdir(parents=True)
    write_feature_store_yaml(repo, "sqlite", None)
    shop = Entity(name="shop", join_keys=["shop_id"], value_type=ValueType.INT32)
    view = FeatureView(
        name="shop_features",
        entities=[shop],
        ttl=timedelta(days=1),
        schema=[Field(name="shop_id", dtype=Int32), Field(name="risk", dtype=Float32)],
        source=FileSource(
            name="shop_source", path="data/shop.parquet", timestamp_field="event_timestamp"
        ),
        online=True,
    )
    sdk = FeatureStore(repo_path=str(repo))
    sdk.apply([shop, view])
    now = datetime.now(UTC).replace(microsecond=0)
    rows = pd.DataFrame(
        {
            "shop_id": pd.Series([7, 8], dtype="int32"),
            "risk": pd.Series([0.25, 0.5], dtype="float32"),
            "event_timestamp": [now, now],
        }
    )
    sdk.write_to_online_store("shop_features", rows)

    fast = FeastFeatureStore(repo, inline_sync_reads=True)
    feast = FeastFeatureStore(repo, inline_sync_reads=True, direct_sqlite_reads=False)
    fast.start()
    feast.start()
    try:
        read = [ViewRead("shop_features", [(7,), (8,), (9,)], ("risk",))]
        got, want = await fast.read(read), await feast.read(read)
        assert got == want
        assert [r[1] for r in got[0]] == [[0.25], [0.5], None]
        assert got[0][0][0] == now.timestamp()
        info = fast.view_info("shop_features")
        too_big = CandidateIn("c", {"shop_id": 2**31}, {})
        with pytest.raises(InvalidArgument):
            _entity_key(too_big, info)
        assert _entity_key(CandidateIn("c", {"shop_id": 2**31 - 1}, {}), info) == (2**31 - 1,)
    finally:
        await fast.close()
        await feast.close()
