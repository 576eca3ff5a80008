"""Backup and restore through the ``inferline dr`` CLI on real files and a live SQLite DB.

Round trip: configuration, a registry database being written to while the backup
runs, and an audit directory come back byte-identical (the database as a
consistent snapshot) under another region's paths. Tamper detection: an edited,
deleted, added or reordered-manifest file fails verification and nothing is restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from router.ops.dr import BackupError, backup, list_backups, restore, verify
from scripts.stack import ROOT


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INFERLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "dr", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def region_a(tmp_path: Path) -> Path:
    a = tmp_path / "region-a"
    (a / "audit" / "2026").mkdir(parents=True)
    (a / "routing.yaml").write_text((ROOT / "scripts" / "demo_routing.yaml").read_text())
    (a / "tenants.yaml").write_text((ROOT / "envoy" / "tenants.yaml").read_text())
    for i in range(3):
        (a / "audit" / "2026" / f"segment-{i}.jsonl").write_text(json.dumps({"seq": i}) + "\n")
    db = sqlite3.connect(a / "registry.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE changes (seq INTEGER PRIMARY KEY, what TEXT)")
    db.executemany("INSERT INTO changes VALUES (?, ?)", [(i, f"alias-{i}") for i in range(100)])
    db.commit()
    db.close()
    return a


def _env(a: Path, out: Path) -> dict[str, str]:
    return {
        "INFERLINE_ROUTING__TABLE_PATH": str(a / "routing.yaml"),
        "INFERLINE_DR__CONFIG_FILES": json.dumps([str(a / "tenants.yaml")]),
        "INFERLINE_DR__DATABASES": json.dumps([str(a / "registry.db")]),
        "INFERLINE_DR__DIRECTORIES": json.dumps([str(a / "audit")]),
        "INFERLINE_DR__BACKUP_DIR": str(out),
        "INFERLINE_REGION__NAME": "region-a",
    }


def test_cli_round_trip_under_concurrent_writes(region_a: Path, tmp_path: Path) -> None:
    out = tmp_path / "backups"
    stop = threading.Event()

    def writer() -> None:  # the registry keeps changing while the backup runs
        db = sqlite3.connect(region_a / "registry.db")
        seq = 1000
        while not stop.is_set():
            db.execute("INSERT INTO changes VALUES (?, ?)", (seq, "live"))
            db.commit()
            seq += 1
        db.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        made = _cli("backup", "--label", "drill", env=_env(region_a, out))
    finally:
        stop.set()
        t.join()
    assert made.returncode == 0, made.stderr
    [taken] = list_backups(out)
    assert Path(made.stdout.strip()) == taken
    assert _cli("verify", str(taken)).returncode == 0

    # Restore region A's backup into region B's paths.
    b = tmp_path / "region-b"
    (b / "audit").mkdir(parents=True)
    (b / "audit" / "stale.jsonl").write_text("left over\n")  # replaced, not merged
    done = _cli("restore", "latest", "--from", str(out), "--map", f"{region_a}={b}")
    assert done.returncode == 0, done.stderr
    assert (b / "routing.yaml").read_bytes() == (region_a / "routing.yaml").read_bytes()
    assert (b / "tenants.yaml").read_bytes() == (region_a / "tenants.yaml").read_bytes()
    assert sorted(p.name for p in (b / "audit").rglob("*.jsonl")) == [
        "segment-0.jsonl",
        "segment-1.jsonl",
        "segment-2.jsonl",
    ]
    [kept] = [p for p in b.iterdir() if p.name.startswith("audit.pre-restore-")]
    assert (kept / "stale.jsonl").read_text() == "left over\n"  # moved aside, not deleted
    db = sqlite3.connect(b / "registry.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    seqs = [r[0] for r in db.execute("SELECT seq FROM changes ORDER BY seq")]
    db.close()
    assert seqs[:100] == list(range(100))
    assert seqs[100:] == list(range(1000, 1000 + len(seqs) - 100))  # a consistent prefix


@pytest.mark.parametrize("tamper", ["edit", "delete", "add", "manifest"])
def test_tampered_backup_is_refused_and_nothing_restored(
    region_a: Path, tmp_path: Path, tamper: str
) -> None:
    key = b"k8s-secret-key"
    taken = backup(
        tmp_path / "backups",
        configs=[region_a / "routing.yaml"],
        databases=[region_a / "registry.db"],
        directories=[region_a / "audit"],
        region="region-a",
        signing_key=key,
    )
    verify(taken, signing_key=key)
    segment = next(p for p in (taken / "dir").rglob("segment-1.jsonl"))
    if tamper == "edit":
        segment.write_text(json.dumps({"seq": 1, "who": "mallory"}) + "\n")
    elif tamper == "delete":
        segment.unlink()
    elif tamper == "add":
        (segment.parent / "segment-9.jsonl").write_text("{}\n")
    else:  # edit a file and its checksum line: only the signature catches it
        segment.write_text("forged\n")
        m = json.loads((taken / "manifest.json").read_text())
        for e in m["entries"]:
            if e["stored"].endswith("segment-1.jsonl"):
                e["sha256"] = hashlib.sha256(b"forged\n").hexdigest()
                e["size"] = 7
        (taken / "manifest.json").write_text(json.dumps(m))
    target = tmp_path / "region-b"
    with pytest.raises(BackupError, match="failed verification"):
        restore(taken, mapping=[(str(region_a), str(target))], signing_key=key)
    assert not target.exists()
    if tamper != "manifest":
        bad = _cli("verify", str(taken))
        assert bad.returncode == 1 and "failed verification" in bad.stderr


def test_restore_only_config_leaves_regional_data(region_a: Path, tmp_path: Path) -> None:
    taken = backup(
        tmp_path / "backups",
        configs=[region_a / "routing.yaml"],
        directories=[region_a / "audit"],
    )
    target = tmp_path / "region-b"
    written = restore(taken, mapping=[(str(region_a), str(target))], only=["config"])
    assert written == [target / "routing.yaml"]
    assert not (target / "audit").exists()


def test_a_live_audit_trail_backs_up_to_a_copy_that_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append landing between the copies of a trail and its checkpoint (the
    router keeps writing during a backup) must not restore as tampered: the
    checkpoint is copied first, so it is never ahead of the trail's copy."""
    import shutil

    from router.audit.chain import verify as verify_chain
    from router.audit.store import JsonlAuditStore, checkpoint_path

    data = tmp_path / "audit"
    data.mkdir()
    trail = data / "audit.jsonl"
    store = JsonlAuditStore(trail, checkpoint=checkpoint_path(trail))
    store.append([{"action": "router.start"}], 1.0)
    real_copy = shutil.copyfile

    def copy_while_writing(src: Path, dst: Path) -> object:
        out = real_copy(src, dst)
        store.append([{"action": "predict"}], 2.0)  # lands between two file copies
        return out

    monkeypatch.setattr(shutil, "copyfile", copy_while_writing)
    made = backup(tmp_path / "backups", directories=[data])
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    store.close()
    verify(made)
    restore(made, mapping=[(str(data), str(tmp_path / "restored"))])
    restored = tmp_path / "restored" / "audit.jsonl"
    checkpoint = json.loads(checkpoint_path(restored).read_text())
    verdict = verify_chain(restored.read_bytes().splitlines(), checkpoint=checkpoint)
    assert verdict.ok, verdict.reason
