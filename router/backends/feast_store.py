"""Feast online store backend: batched reads through the store's own read path.

Feast's high-level ``get_online_features`` costs 8-12x a raw read here, so the
router builds entity-key protos itself and calls the configured online store's
``online_read`` (SQLite, run on one worker thread: the connection is shared)
or ``online_read_async`` (Redis: one pipelined HMGET per view, views read
concurrently). Values come back as plain floats so the pipeline never sees
Feast protos.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import get_online_store_from_config
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import PrimitiveFeastType
from redis.exceptions import RedisError

from router.backends.feast_redis import RedisRows
from router.backends.feast_values import blob_float, f32_run, to_float
from router.errors import ConfigError
from router.pipeline.features import (
    EntityKey,
    FeatureStoreUnavailable,
    Row,
    ViewInfo,
    ViewRead,
)


def _key_type(dtype: Any) -> type:
    if dtype in (PrimitiveFeastType.INT64, PrimitiveFeastType.INT32):
        return int
    if dtype == PrimitiveFeastType.STRING:
        return str
    raise ConfigError(f"unsupported entity key type {dtype}")


def _key_field(dtype: Any) -> str:
    """The ValueProto field Feast serializes a join key of ``dtype`` into: the
    entity key's bytes (and so the row it finds) depend on it."""
    if dtype == PrimitiveFeastType.INT32:
        return "int32_val"
    return "int64_val" if dtype == PrimitiveFeastType.INT64 else "string_val"


def _key_builder(
    join_keys: Sequence[str], fields: Sequence[str]
) -> Callable[[tuple[int | str, ...]], EntityKeyProto]:
    names = list(join_keys)

    def value(field: str, v: int | str) -> ValueProto:
        proto = ValueProto()
        setattr(proto, field, v)
        return proto

    return lambda key: EntityKeyProto(
        join_keys=names, entity_values=[value(f, v) for f, v in zip(fields, key, strict=True)]
    )


_KEY_CACHE = 65536


def _convert(
    rows: Sequence[tuple[datetime | None, dict[str, ValueProto] | None]],
    features: tuple[str, ...],
) -> list[Row]:
    out: list[Row] = []
    empty = ValueProto()
    for ts, values in rows:
        if ts is None or not values:
            out.append((None, None))
            continue
        floats = [to_float(values.get(f, empty)) for f in features]
        if all(x is None for x in floats):
            # Redis answers a missing key with empty values and a zero timestamp.
            out.append((None, None))
            continue
        out.append((ts.timestamp(), floats))
    return out


_MAX_LAYOUTS = 256


def _epoch(stored: int | float) -> float:
    """A stored event timestamp as a UTC epoch. Feast stores its naive-UTC
    datetimes as local-time epochs and reads them back with fromtimestamp():
    undo it the same way."""
    return datetime.fromtimestamp(int(stored)).replace(tzinfo=UTC).timestamp()


class _Layout:
    """One shape of an entity's rows, decoded without a Python step per feature.

    Every fully written entity of a view has the same rows, so SQLite can hand
    them over as one aggregate row: the feature names joined, and the stored
    values concatenated. When every value is a float32 the concatenation is one
    ``struct`` record (``feast_values.f32_run``) and the requested features are
    picked from it by index: one row object instead of 30, one C call per step
    instead of ~6 Python calls per feature.
    Anything else (a double, an int, a missing or repeated feature, a NaN, a
    NULL value or timestamp) takes the row-by-row path."""

    __slots__ = ("n", "pick")

    def __init__(self, n: int, index: list[int]) -> None:
        self.n = n
        self.pick = operator.itemgetter(*index)

    @classmethod
    def of(cls, names: tuple[str, ...], features: tuple[str, ...]) -> _Layout | None:
        position = {name: i for i, name in enumerate(names)}
        if len(position) != len(names) or not features or any(f not in position for f in features):
            return None
        return cls(len(names), [position[f] for f in features])

    def decode(self, blob: bytes) -> list[float | None] | None:
        """The requested features' values, or None (take the row-by-row path)."""
        values = f32_run(blob, self.n)
        if values is None:
            return None
        picked = self.pick(values)
        return list(picked) if isinstance(picked, tuple) else [picked]


_UNSEEN = object()
# An entity's rows as one: names and values in one visiting order (group_concat
# steps both aggregates over the same rows), one event time if min == max, and
# how many rows have none.
_AGGREGATES = (
    "group_concat(feature_name, char(31)), CAST(group_concat(value, '') AS BLOB), "
    "min(event_ts), max(event_ts), count(*) - count(event_ts)"
)


class _SqliteRows:
    """The SQLite online store's table read directly, for the inline read path.

    Same table, key serialization and timestamp reading as Feast's
    ``SqliteOnlineStore.online_read`` (its own helpers compute them), minus what
    costs there: Feast reads every feature row of the entity (one row per
    feature) through a connection that converts every row's timestamp, and builds
    a ``ValueProto`` dict per entity. Here only the requested features' rows are
    read and values go straight to floats. ~45% of the router's Python request
    path was Feast's read (docs/benchmarks.md).
    """

    def __init__(
        self,
        store: FeatureStore,
        online: Any,
        views: dict[str, FeatureView],
        busy_timeout_s: float,
    ) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.sqlite import _table_id

        config = store.config
        self._serialize = serialize_entity_key
        self._version = config.entity_key_serialization_version
        versioning = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        self._tables = {
            name: '"' + _table_id(config.project, fv, versioning).replace('"', '""') + '"'
            for name, fv in views.items()
        }
        path = online._get_db_path(config)
        # The read runs on the event loop: a writer's lock must not hold it for
        # sqlite3's default 5 s. Past ``busy_timeout_s`` the read fails (the
        # request degrades); in WAL mode readers never wait for a writer at all.
        self._conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=busy_timeout_s
        )
        self.journal_mode = str(self._conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        self._sql: dict[tuple[str, str, int], str] = {}  # (kind, view, entities)
        # Serialized entity keys (Feast's serializer builds protos: ~10 us a key).
        self._keys: dict[tuple[str, tuple[int | str, ...]], bytes] = {}
        self._wanted: dict[tuple[str, ...], frozenset[str]] = {}
        # (requested features, the entity's row names as read) -> how to decode
        # such an entity in one go (None: it cannot be).
        self._layouts: dict[tuple[tuple[str, ...], str], _Layout | None] = {}

    def read(
        self,
        view: str,
        keys: Sequence[tuple[int | str, ...]],
        proto: Callable[[tuple[int | str, ...]], EntityKeyProto],
        features: tuple[str, ...],
    ) -> list[Row]:
        """Rows for ``keys`` (join-key value tuples; ``proto`` builds Feast's key)."""
        ser = []
        for k in keys:
            blob = self._keys.get((view, k))
            if blob is None:
                blob = self._serialize(proto(k), entity_key_serialization_version=self._version)
                if len(self._keys) >= _KEY_CACHE:
                    self._keys.clear()  # bounded: hot keys come back at once
                self._keys[(view, k)] = blob
            ser.append(blob)
        wanted = self._wanted.get(features)
        if wanted is None:
            wanted = self._wanted[features] = frozenset(features)
        parsed = ValueProto()
        if len(ser) == 1:
            return [self._read_one(view, ser[0], features, wanted, parsed)]
        sql = self._sql.get(("agg", view, len(ser)))
        if sql is None:
            sql = self._sql[("agg", view, len(ser))] = (
                f"SELECT entity_key, {_AGGREGATES} FROM {self._tables[view]} "
                f"WHERE entity_key IN ({','.join('?' * len(ser))}) GROUP BY entity_key"
            )
        found: dict[bytes, Row] = {}
        irregular: list[bytes] = []
        for key, names, blob, first, last, no_ts in self._conn.execute(sql, ser):
            row = self._decoded(features, names, blob, first, last, no_ts)
            if row is None:
                irregular.append(key)
            else:
                found[key] = row
        if irregular:
            found.update(self._read_rows_many(view, irregular, features, wanted, parsed))
        return [found.get(key, (None, None)) for key in ser]

    def _read_rows_many(
        self,
        view: str,
        ser: list[bytes],
        features: tuple[str, ...],
        wanted: frozenset[str],
        parsed: ValueProto,
    ) -> dict[bytes, Row]:
        """Entities row by row (those the aggregate could not decode): any
        encoding, missing or null values."""
        sql = self._sql.get(("rows", view, len(ser)))
        if sql is None:
            # By entity key only: one index range scan per entity is ~40% cheaper
            # than probing (entity, feature) per feature; rows of features not
            # asked for are skipped before parsing.
            sql = self._sql[("rows", view, len(ser))] = (
                f"SELECT entity_key, feature_name, value, event_ts FROM {self._tables[view]} "
                f"WHERE entity_key IN ({','.join('?' * len(ser))})"
            )
        # Per entity: the last requested row's timestamp (as Feast's own read
        # reports it) and the values.
        found: dict[bytes, tuple[list[Any], dict[str, float | None]]] = {}
        for key, name, blob, ts in self._conn.execute(sql, ser):
            if name not in wanted:
                continue
            entry = found.get(key)
            if entry is None:
                entry = found[key] = ([ts], {})
            else:
                entry[0][0] = ts
            entry[1][name] = blob_float(blob, parsed)
        out: dict[bytes, Row] = {}
        for key in ser:
            hit = found.get(key)
            values = [hit[1].get(f) for f in features] if hit else []
            if hit is None or hit[0][0] is None or all(v is None for v in values):
                out[key] = (None, None)
            else:
                out[key] = (_epoch(hit[0][0]), values)
        return out

    def _decoded(
        self,
        features: tuple[str, ...],
        names: str,
        blob: bytes,
        first: Any,
        last: Any,
        no_ts: int,
    ) -> Row | None:
        """An entity's aggregate row (``_AGGREGATES``) decoded, or None when it is
        irregular (read it row by row)."""
        if first != last or no_ts:
            return None
        layout = self._layouts.get((features, names), _UNSEEN)
        if layout is _UNSEEN:
            layout = _Layout.of(tuple(names.split("\x1f")), features)
            if len(self._layouts) < _MAX_LAYOUTS:
                self._layouts[(features, names)] = layout
        if not isinstance(layout, _Layout):
            return None
        values = layout.decode(blob)
        return None if values is None else (_epoch(first), values)

    def _read_one(
        self,
        view: str,
        key: bytes,
        features: tuple[str, ...],
        wanted: frozenset[str],
        parsed: ValueProto,
    ) -> Row:
        """One entity (the common request): one aggregate row when its values
        fit a known layout (``_Layout``), else the entity's rows."""
        sql = self._sql.get(("agg", view, 0))
        if sql is None:
            sql = self._sql[("agg", view, 0)] = (
                f"SELECT {_AGGREGATES} FROM {self._tables[view]} WHERE entity_key = ?"
            )
        names, blob, first, last, no_ts = self._conn.execute(sql, (key,)).fetchone()
        if names is None:
            return (None, None)  # no rows: the entity was never written
        row = self._decoded(features, names, blob, first, last, no_ts)
        if row is not None:
            return row
        return self._read_rows_many(view, [key], features, wanted, parsed)[key]

    def close(self) -> None:
        self._conn.close()


class FeastFeatureStore:
    """Implements ``router.pipeline.features.FeatureReader`` over a Feast repo."""

    def __init__(
        self,
        repo_path: Path,
        *,
        inline_sync_reads: bool = True,
        direct_sqlite_reads: bool = True,
        direct_redis_reads: bool = True,
        busy_timeout_s: float = 0.008,
    ) -> None:
        self._repo_path = repo_path
        self._busy_timeout_s = busy_timeout_s
        self._inline_reads = inline_sync_reads
        self._direct = direct_sqlite_reads
        self._direct_redis = direct_redis_reads
        self._redis: RedisRows | None = None
        self._store: FeatureStore | None = None
        self._views: dict[str, FeatureView] = {}
        self._infos: dict[str, ViewInfo] = {}
        self._key_protos: dict[str, Callable[[tuple[int | str, ...]], EntityKeyProto]] = {}
        self._online: Any = None
        self._async = False
        self._executor: ThreadPoolExecutor | None = None
        self._sqlite: _SqliteRows | None = None

    def start(self) -> None:
        """Open the store and load feature-view definitions from its registry."""
        if not (self._repo_path / "feature_store.yaml").exists():
            raise ConfigError(f"no feature_store.yaml in {self._repo_path}")
        store = FeatureStore(repo_path=str(self._repo_path))
        self._store = store
        self._online = get_online_store_from_config(store.config.online_store)
        self._async = type(self._online).__name__ == "RedisOnlineStore"
        for fv in store.list_feature_views():
            self._views[fv.name] = fv
            cols = list(fv.entity_columns)
            self._infos[fv.name] = ViewInfo(
                name=fv.name,
                join_keys=tuple(c.name for c in cols),
                key_types=tuple(_key_type(c.dtype) for c in cols),
                ttl_s=fv.ttl.total_seconds() if fv.ttl else 0.0,
                features=frozenset(f.name for f in fv.features),
                int32_keys=frozenset(c.name for c in cols if c.dtype == PrimitiveFeastType.INT32),
            )
            self._key_protos[fv.name] = _key_builder(
                [c.name for c in cols], [_key_field(c.dtype) for c in cols]
            )
        if not self._async and not self._inline_reads:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast-read")
        sqlite = type(self._online).__name__ == "SqliteOnlineStore"
        if self._direct and self._inline_reads and sqlite:
            self._sqlite = _SqliteRows(store, self._online, self._views, self._busy_timeout_s)
        if self._direct_redis and self._async:
            from feast.infra.online_stores.redis import _versioned_fv_name

            names = {n: _versioned_fv_name(fv, store.config) for n, fv in self._views.items()}
            try:
                self._redis = RedisRows(store.config, self._online, names)
            except ValueError:  # TLS, Sentinel, Cluster...: Feast's client reads
                self._redis = None

    async def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        client = getattr(self._online, "_client_async", None)
        if client is not None:
            await client.aclose()

    @property
    def inline(self) -> bool:
        """A synchronous store read on the event loop (SQLite): it cannot suspend."""
        return self._inline_reads and not self._async

    @property
    def sqlite_journal_mode(self) -> str | None:
        """The SQLite online store's journal mode on the direct read path ("wal"
        is the one where a materialization never blocks a read); None otherwise."""
        return self._sqlite.journal_mode if self._sqlite is not None else None

    def view_info(self, name: str) -> ViewInfo:
        try:
            return self._infos[name]
        except KeyError as e:
            raise ConfigError(f"feature view {name!r} is not in the Feast registry") from e

    def view_schemas(self) -> dict[str, dict[str, str]]:
        """view -> {feature -> dtype, lowercase}: what registration checks a
        version's feature schema against (``router.registry.validation``)."""
        return {
            name: {f.name: str(f.dtype).lower() for f in fv.features}
            for name, fv in self._views.items()
        }

    def check_features(self, view: str, features: Sequence[str]) -> None:
        """Fail start-up if a model needs features the registry lacks."""
        missing = set(features) - self.view_info(view).features
        if missing:
            raise ConfigError(f"view {view!r} lacks features {sorted(missing)}")

    def _key_proto(self, view: str) -> Callable[[tuple[int | str, ...]], EntityKeyProto]:
        return self._key_protos[view]

    def _entity_keys(self, read: ViewRead) -> list[EntityKeyProto]:
        build = self._key_protos[read.view]
        return [build(key) for key in read.keys]

    def _read_sync(self, reads: Sequence[ViewRead]) -> list[list[Row]]:
        assert self._store is not None
        if self._sqlite is not None:
            fast = self._sqlite
            return [
                fast.read(r.view, r.keys, self._key_proto(r.view), tuple(r.features)) for r in reads
            ]
        config = self._store.config
        return [
            _convert(
                self._online.online_read(
                    config, self._views[r.view], self._entity_keys(r), list(r.features)
                ),
                r.features,
            )
            for r in reads
        ]

    async def _read_one_async(self, read: ViewRead) -> list[Row]:
        assert self._store is not None
        rows = await self._online.online_read_async(
            self._store.config, self._views[read.view], self._entity_keys(read), list(read.features)
        )
        return _convert(rows, read.features)

    async def read(self, reads: Sequence[ViewRead]) -> list[list[Row]]:
        try:
            if self._redis is not None:
                return await self._redis.read(
                    [(r.view, r.keys, self._key_proto(r.view), tuple(r.features)) for r in reads]
                )
            if self._async:
                if len(reads) == 1:
                    return [await self._read_one_async(reads[0])]
                return list(await asyncio.gather(*(self._read_one_async(r) for r in reads)))
            if self._inline_reads:
                return self._read_sync(reads)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._read_sync, reads)
        except (OSError, sqlite3.Error, RedisError) as e:
            # Store failures degrade the answer (defaults + freshness UNAVAILABLE).
            raise FeatureStoreUnavailable(type(e).__name__) from e


__all__ = ["EntityKey", "FeastFeatureStore"]
