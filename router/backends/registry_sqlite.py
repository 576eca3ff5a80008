"""Registry store on SQLite (stdlib ``sqlite3``), the embedded default.

The schema is plain SQL a shared database (PostgreSQL) takes unchanged apart
from the immutability trigger's dialect: composite natural keys, TEXT JSON
columns, ISO-8601 UTC timestamps, a one-row revision table bumped inside every
release transaction. Versions are protected twice: the code never updates
them, and a trigger aborts any UPDATE or DELETE. Transactions are
``BEGIN IMMEDIATE`` so two admins changing aliases serialize instead of
interleaving. Calls are short and synchronous (admin-rate, ~0.1 ms each).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.pipeline.arms import JoinedOutcome
from router.pipeline.experiment import Experiment, ShadowSpec
from router.registry.errors import RegistrationError
from router.registry.models import (
    AliasKey,
    RegistryState,
    ReleaseChange,
    ReleaseEvent,
    VersionRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    artifact_file TEXT NOT NULL,
    artifact_sha256 TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    metadata_sha256 TEXT NOT NULL,
    schema_hash TEXT NOT NULL,
    schema_signature TEXT NOT NULL,
    training_data_sha256 TEXT NOT NULL,
    offline_metrics TEXT NOT NULL,
    provenance TEXT NOT NULL,
    drift_reference TEXT,
    dq_profile TEXT,
    registered_by TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TRIGGER IF NOT EXISTS model_versions_no_update BEFORE UPDATE ON model_versions
BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END;
CREATE TRIGGER IF NOT EXISTS model_versions_no_delete BEFORE DELETE ON model_versions
BEGIN SELECT RAISE(ABORT, 'model versions are immutable'); END;
CREATE TABLE IF NOT EXISTS aliases (
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    tenant TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (model, alias, tenant),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);
CREATE TABLE IF NOT EXISTS experiments (
    model TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shadows (
    model TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO registry_revision (id, revision) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS release_events (
    revision INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    model TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    request_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    arm TEXT NOT NULL,
    version INTEGER NOT NULL,
    score REAL NOT NULL,
    value REAL NOT NULL,
    at TEXT NOT NULL
);
"""

_VERSION_COLS = (
    "model, version, artifact_file, artifact_sha256, config_sha256, metadata_sha256, "
    "schema_hash, schema_signature, training_data_sha256, offline_metrics, provenance, "
    "drift_reference, dq_profile, registered_by, registered_at"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _row_to_record(row: sqlite3.Row) -> VersionRecord:
    return VersionRecord(
        model=row["model"],
        version=row["version"],
        artifact_file=row["artifact_file"],
        artifact_sha256=row["artifact_sha256"],
        config_sha256=row["config_sha256"],
        metadata_sha256=row["metadata_sha256"],
        schema_hash=row["schema_hash"],
        schema_signature=tuple(tuple(s) for s in json.loads(row["schema_signature"])),  # type: ignore[misc]
        training_data_sha256=row["training_data_sha256"],
        offline_metrics=json.loads(row["offline_metrics"]),
        provenance=json.loads(row["provenance"]),
        registered_by=row["registered_by"],
        registered_at=row["registered_at"],
        drift_reference=json.loads(row["drift_reference"]) if row["drift_reference"] else None,
        dq_profile=json.loads(row["dq_profile"]) if row["dq_profile"] else None,
    )


class SqliteRegistryStore:
    """Implements ``router.registry.store.RegistryStore``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.asynccontextmanager
    async def model_lock(self, model: str) -> AsyncIterator[None]:
        """Held while a router changes which versions of ``model`` Triton has
        loaded, across every router sharing this database: each load names the
        whole version set, so two registrations computing it at once would
        unload each other's version. A lock file beside the database (the
        routers already share its file system for SQLite's own locking)."""
        lock = self._path.with_name(f"{self._path.name}.{model}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            while True:  # polled, not a blocking thread: the caller may give up
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def insert_version(self, record: VersionRecord) -> VersionRecord:
        values = (
            record.model,
            record.version,
            record.artifact_file,
            record.artifact_sha256,
            record.config_sha256,
            record.metadata_sha256,
            record.schema_hash,
            _dump([list(s) for s in record.schema_signature]),
            record.training_data_sha256,
            _dump(dict(record.offline_metrics)),
            _dump(dict(record.provenance)),
            _dump(record.drift_reference),
            _dump(record.dq_profile),
            record.registered_by,
            record.registered_at,
        )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            existing = self.get_version(record.model, record.version)
            if existing is None:
                self._db.execute(
                    f"INSERT INTO model_versions ({_VERSION_COLS}) VALUES "
                    f"({', '.join('?' * len(values))})",
                    values,
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return existing or record

    def get_version(self, model: str, version: int) -> VersionRecord | None:
        row = self._db.execute(
            f"SELECT {_VERSION_COLS} FROM model_versions WHERE model = ? AND version = ?",
            (model, version),
        ).fetchone()
        return None if row is None else _row_to_record(row)

    def list_versions(self, model: str | None = None) -> list[VersionRecord]:
        sql = f"SELECT {_VERSION_COLS} FROM model_versions"
        args: tuple[Any, ...] = ()
        if model is not None:
            sql, args = sql + " WHERE model = ?", (model,)
        rows = self._db.execute(sql + " ORDER BY model, version", args).fetchall()
        return [_row_to_record(r) for r in rows]

    def commit(self, change: ReleaseChange) -> int:
        now, actor = _now(), change.actor
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if change.based_on is not None and self.revision() != change.based_on:
                raise RegistrationError(
                    "release_conflict",
                    "the registry changed while this action was being decided; "
                    "check the status and retry",
                )
            for key, version in change.set_aliases.items():
                if self.get_version(key.model, version) is None:
                    raise RegistrationError(
                        "alias_target", f"{key} -> {key.model}@{version}: version is not registered"
                    )
                self._db.execute(
                    "INSERT INTO aliases (model, alias, tenant, version, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (model, alias, tenant) DO UPDATE SET "
                    "version = excluded.version, updated_at = excluded.updated_at, "
                    "updated_by = excluded.updated_by",
                    (key.model, key.alias, key.tenant, version, now, actor),
                )
            for key in change.drop_aliases:
                self._db.execute(
                    "DELETE FROM aliases WHERE model = ? AND alias = ? AND tenant = ?",
                    (key.model, key.alias, key.tenant),
                )
            for table, items, drops in (
                ("experiments", change.set_experiments, change.drop_experiments),
                ("shadows", change.set_shadows, change.drop_shadows),
            ):
                for spec in items:
                    for v in _targets(spec):
                        if self.get_version(spec.model, v) is None:
                            raise RegistrationError(
                                "alias_target", f"{spec.model}@{v} is not registered"
                            )
                    self._db.execute(
                        f"INSERT INTO {table} (model, spec, updated_at, updated_by) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (model) DO UPDATE SET "
                        "spec = excluded.spec, updated_at = excluded.updated_at, "
                        "updated_by = excluded.updated_by",
                        (spec.model, spec.model_dump_json(), now, actor),
                    )
                for model in drops:
                    self._db.execute(f"DELETE FROM {table} WHERE model = ?", (model,))
            self._db.execute("UPDATE registry_revision SET revision = revision + 1 WHERE id = 1")
            revision = self.revision()
            model = str(change.detail.get("model", ""))
            self._db.execute(
                "INSERT INTO release_events (revision, at, actor, action, model, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (revision, now, actor, change.action, model, _dump(dict(change.detail))),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return revision

    def revision(self) -> int:
        row = self._db.execute("SELECT revision FROM registry_revision WHERE id = 1").fetchone()
        return int(row[0])

    def state(self) -> RegistryState:
        # One read transaction: aliases, experiments and revision agree.
        self._db.execute("BEGIN")
        try:
            versions: dict[str, list[int]] = {}
            for row in self._db.execute(
                "SELECT model, version FROM model_versions ORDER BY model, version"
            ):
                versions.setdefault(row[0], []).append(int(row[1]))
            aliases = {
                AliasKey(r["model"], r["alias"], r["tenant"]): int(r["version"])
                for r in self._db.execute("SELECT model, alias, tenant, version FROM aliases")
            }
            experiments = {
                r[0]: Experiment.model_validate_json(r[1])
                for r in self._db.execute("SELECT model, spec FROM experiments")
            }
            shadows = {
                r[0]: ShadowSpec.model_validate_json(r[1])
                for r in self._db.execute("SELECT model, spec FROM shadows")
            }
            revision = self.revision()
        finally:
            self._db.execute("COMMIT")
        return RegistryState(
            revision=revision,
            versions={m: tuple(v) for m, v in versions.items()},
            aliases=aliases,
            experiments=experiments,
            shadows=shadows,
        )

    def events(self, model: str | None = None, limit: int = 20) -> list[ReleaseEvent]:
        sql = "SELECT revision, at, actor, action, detail FROM release_events"
        args: tuple[Any, ...] = (limit,)
        if model is not None:
            sql, args = sql + " WHERE model = ?", (model, limit)
        rows = self._db.execute(sql + " ORDER BY revision DESC LIMIT ?", args).fetchall()
        return [ReleaseEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def record_outcomes(self, outcomes: Sequence[JoinedOutcome]) -> None:
        now = _now()
        self._db.executemany(
            "INSERT OR REPLACE INTO outcomes (request_id, model, arm, version, score, value, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(o.request_id, o.model, o.arm, o.version, o.score, o.value, now) for o in outcomes],
        )


def _targets(spec: Experiment | ShadowSpec) -> list[int]:
    """Every version the spec routes traffic to."""
    return [spec.version] if isinstance(spec, ShadowSpec) else [a.version for a in spec.arms]
