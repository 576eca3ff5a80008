"""Build the demo features and models: ``python -m scripts.build_demo --out build``.

1. Feast: write ``<out>/feast/feature_store.yaml`` (SQLite online store by
   default, or Redis), the deterministic offline parquet tables, ``feast apply``
   the definitions and materialize into the online store (the real Feast path).
2. Models: train the fraud GBDT (versions 1 and 2) and the ranker MLP on the
   same feature tables and write the Triton model repository, choosing the GBDT
   backend by what this Triton has installed.
Idempotent: rerunning overwrites. Artifacts are deterministic; only event
timestamps follow the build time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from feast_repo.data import VIEWS, generate_tables, write_tables
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


def build_features(out: Path, online_store: str, redis_url: str | None) -> Path:
    from feast import FeatureStore

    from feast_repo.definitions import ENTITIES, FEATURE_VIEWS

    repo = out / "feast"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "data").mkdir(parents=True)
    write_feature_store_yaml(repo, online_store, redis_url)
    now = datetime.now(UTC)
    write_tables(generate_tables(now), repo / "data")
    store = FeatureStore(repo_path=str(repo))
    store.apply([*ENTITIES, *FEATURE_VIEWS])
    store.materialize(start_date=now - timedelta(days=30), end_date=now + timedelta(minutes=1))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("build"))
    p.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite")
    p.add_argument("--redis-url", help="host:port of the Redis online store")
    p.add_argument("--gbdt-backend", choices=["auto", "fil", "python"], default="auto")
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

    try:
        installed = tritonpaths.installed_backends()
    except tritonpaths.TritonNotInstalledError:
        installed = frozenset({"python"})
    repo = build_repository(out, installed, args.gbdt_backend, frozenset(args.response_cache))
    print(f"models:   {repo} in {time.monotonic() - t1:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
