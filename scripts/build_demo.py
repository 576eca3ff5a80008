"""Build the demo features and models: ``python -m scripts.build_demo --out build``.

1. Feast: write ``<out>/feast/feature_store.yaml`` (SQLite online store by
   default, or Redis), the deterministic offline parquet tables, ``feast apply``
   the definitions and materialize into the online store (the real Feast path).
2. Models: train the fraud GBDT (versions 1 and 2) and the ranker MLP on the
   same feature tables and write the Triton model repository, choosing each
   model's backend by what the target Triton has: this machine's by default,
   or a cluster's (``--backends fil,onnxruntime,python`` for the NGC image).
Idempotent: rerunning overwrites. Artifacts are deterministic; only event
timestamps follow the build time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feast_repo.data import STALE_REMAINDER, VIEWS, generate_tables, write_tables
from feast_repo.definitions import TIMESTAMP_FIELD
from scripts import tritonpaths

FEATURE_STORE_YAML = """\
# Written by scripts/build_demo.py.
project: inferline
provider: local
registry: data/registry.db
online_store:
{online}
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def write_feature_store_yaml(repo: Path, online_store: str, redis_url: str | None) -> None:
    if online_store == "redis":
        if not redis_url:
            raise SystemExit("--redis-url is required with --online-store redis")
        online = f'  type: redis\n  connection_string: "{redis_url}"'
    else:
        online = "  type: sqlite\n  path: data/online_store.db"
    (repo / "feature_store.yaml").write_text(FEATURE_STORE_YAML.format(online=online))


def verify_online(store: Any, tables: dict[str, pd.DataFrame]) -> None:
    """Read back a fresh, a stale and a missing entity per view through the
    online store's own ``online_read`` (the router's read path) and check the
    values and event times round-tripped; raise on any mismatch."""
    from feast.infra.online_stores.helpers import get_online_store_from_config
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    online = get_online_store_from_config(store.config.online_store)
    for spec in VIEWS:
        fresh, stale, missing = 1, STALE_REMAINDER, spec.n_entities + 1
        keys = [
            EntityKey(join_keys=[spec.join_key], entity_values=[Value(int64_val=i)])
            for i in (fresh, stale, missing)
        ]
        fv = store.get_feature_view(spec.name)
        rows = online.online_read(store.config, fv, keys, list(spec.features))
        table = tables[spec.name].set_index(spec.join_key)
        for entity_id, (ts, values) in zip((fresh, stale), rows[:2], strict=True):
            if ts is None or not values:
                raise RuntimeError(f"{spec.name}: {spec.join_key}={entity_id} not materialized")
            want = table.loc[entity_id]
            got = np.array([values[f].float_val for f in spec.features], dtype=np.float32)
            if not np.array_equal(got, want[list(spec.features)].to_numpy(np.float32)):
                raise RuntimeError(f"{spec.name}: {spec.join_key}={entity_id} values differ")
            # SQLite keeps whole seconds of the event time.
            if abs(ts.timestamp() - want[TIMESTAMP_FIELD].timestamp()) >= 1.0:
                raise RuntimeError(f"{spec.name}: {spec.join_key}={entity_id} event time differs")
        # SQLite answers a missing key with (None, None), Redis with unset values.
        _, values = rows[2]
        if values and any(v.WhichOneof("val") is not None for v in values.values()):
            raise RuntimeError(f"{spec.name}: {spec.join_key}={missing} should be missing")


def use_wal(db: Path) -> None:
    """Put the SQLite online store in WAL mode (persistent, in the file): the
    router reads it on its event loop, and in the default rollback-journal mode
    every later materialization's commit would lock those reads out. In WAL
    mode readers see the last committed snapshot while a writer works, and
    Feast's writes need no change."""
    conn = sqlite3.connect(db)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        conn.close()
    if str(mode).lower() != "wal":
        raise RuntimeError(f"{db}: journal_mode is {mode!r}, not WAL")


def build_features(out: Path, online_store: str, redis_url: str | None) -> Path:
    from feast import FeatureStore

    from feast_repo.definitions import ENTITIES, FEATURE_VIEWS

    repo = out / "feast"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "data").mkdir(parents=True)
    write_feature_store_yaml(repo, online_store, redis_url)
    now = datetime.now(UTC)
    tables = generate_tables(now)
    write_tables(tables, repo / "data")
    store = FeatureStore(repo_path=str(repo))
    store.apply([*ENTITIES, *FEATURE_VIEWS])
    store.materialize(start_date=now - timedelta(days=30), end_date=now + timedelta(minutes=1))
    if online_store == "sqlite":
        use_wal(repo / "data" / "online_store.db")
    verify_online(store, tables)
    summary = {
        v.name: {
            "join_keys": [v.join_key],
            "ttl_seconds": int(v.ttl.total_seconds()),
            "entities": v.n_entities,
            "features": list(v.features),
        }
        for v in VIEWS
    }
    (repo / "features.json").write_text(json.dumps(summary, indent=2) + "\n")
    return repo


TRITON_BACKENDS = frozenset(
    {"python", "fil", "onnxruntime", "tensorrt", "pytorch", "tensorflow", "openvino"}
)


def backend_names(text: str) -> frozenset[str]:
    """``--backends``: a comma-separated list of Triton backend names; a name
    Triton does not have is an error, not a backend silently never chosen."""
    names = frozenset(b.strip() for b in text.split(",") if b.strip())
    unknown = sorted(names - TRITON_BACKENDS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown Triton backend(s) {unknown or [text]}; known: {sorted(TRITON_BACKENDS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("build"))
    p.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite")
    p.add_argument("--redis-url", help="host:port of the Redis online store")
    p.add_argument(
        "--gbdt-backend", choices=["auto", "fil", "onnxruntime", "python"], default="auto"
    )
    p.add_argument("--dnn-backend", choices=["auto", "onnxruntime", "python"], default="auto")
    p.add_argument(
        "--backends",
        type=backend_names,
        help="the target Triton's backends, comma-separated "
        "(default: those of this machine's Triton)",
    )
    p.add_argument("--features-only", action="store_true", help="skip model training")
    p.add_argument(
        "--response-cache",
        action="append",
        default=[],
        metavar="MODEL",
        help="enable Triton's response cache for MODEL (repeatable)",
    )
    args = p.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    build_features(out, args.online_store, args.redis_url)
    t1 = time.monotonic()
    print(f"features: {out / 'feast'} ({args.online_store}) in {t1 - t0:.1f}s", flush=True)
    if args.features_only:
        return 0
    from triton_models.build import build_repository

    installed = args.backends
    if installed is None:
        try:
            installed = tritonpaths.installed_backends()
        except tritonpaths.TritonNotInstalledError:
            installed = frozenset({"python"})
    repo = build_repository(
        out, installed, args.gbdt_backend, frozenset(args.response_cache), args.dnn_backend
    )
    print(f"models:   {repo} in {time.monotonic() - t1:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
