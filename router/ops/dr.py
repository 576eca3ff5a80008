"""Disaster recovery: consistent backups of configuration, databases and data directories.

``inferline dr backup`` writes one self-describing directory per backup:

    <backup_dir>/<UTC stamp>-<region>/
        manifest.json          what was copied, from where, sha256 + size of each copy
        config/<n>/<name>      configuration files (routing table, tenants file)
        db/<n>/<name>          SQLite databases (the model registry), via SQLite's online
                               backup API: a consistent copy while writers keep writing
        dir/<n>/<relative>     every file under a data directory (the audit trail)

Why checksums in a manifest: a restore must prove it is putting back exactly what
was saved. ``restore`` (and ``verify``) recompute every file's digest, refuse on any
mismatch, missing or extra file, and only then copy into place (temp file + rename
per file, so a crash mid-restore leaves whole files). With ``dr.signing_key_file``
the manifest carries an HMAC-SHA256, so editing a file *and* its manifest line is
caught too. What is backed up is named by settings (``INFERLINE_DR__*``) or flags,
generically: the registry and audit modules only have to live at those paths.

Residency: configuration holds no request data and may be copied to any region;
data directories under ``<data_root>/<region>/`` belong to that region
(``router.pipeline.residency``); ``restore --only`` lets a cross-region restore
take configuration and databases and leave regional data where it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from router.errors import InferlineError

Kind = Literal["config", "db", "dir"]
KINDS: tuple[Kind, ...] = ("config", "db", "dir")
MANIFEST = "manifest.json"
FORMAT = 1


class BackupError(InferlineError):
    """A backup could not be taken, or one failed verification (nothing restored)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: Kind
    source: str  # absolute path it came from (for a dir entry: the file inside it)
    root: str  # the configured path (file, database or directory) it belongs to
    stored: str  # path inside the backup
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    created_at: float  # unix time the backup was started
    region: str
    label: str
    entries: tuple[Entry, ...]
    roots: tuple[tuple[Kind, str], ...]  # every configured path, even an empty dir
    hmac: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "created_at": self.created_at,
            "region": self.region,
            "label": self.label,
            "roots": [list(r) for r in self.roots],
            "entries": [dataclasses.asdict(e) for e in self.entries],
        }

    @classmethod
    def read(cls, backup: Path) -> Manifest:
        try:
            raw = json.loads((backup / MANIFEST).read_text())
            if raw.get("format") != FORMAT:
                raise BackupError(f"unsupported backup format {raw.get('format')!r}")
            return cls(
                created_at=float(raw["created_at"]),
                region=str(raw["region"]),
                label=str(raw["label"]),
                entries=tuple(Entry(**e) for e in raw["entries"]),
                roots=tuple((r[0], r[1]) for r in raw["roots"]),
                hmac=raw.get("hmac"),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackupError(f"unreadable manifest in {backup}: {e}") from e


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _sign(body: dict[str, Any], key: bytes | None) -> str | None:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest() if key else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sqlite_copy(src: Path, dst: Path) -> None:
    """Online backup API: pages copied under SQLite's locking, so writers may run."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
            ok = target.execute("PRAGMA integrity_check").fetchone()
            if not ok or ok[0] != "ok":
                raise BackupError(f"integrity check of the copy of {src} failed: {ok}")
        finally:
            target.close()
    finally:
        source.close()


def backup(
    out_dir: Path,
    *,
    configs: Sequence[Path] = (),
    databases: Sequence[Path] = (),
    directories: Sequence[Path] = (),
    region: str = "local",
    label: str = "",
    signing_key: bytes | None = None,
) -> Path:
    """Take one backup under ``out_dir``; returns its directory (complete or absent)."""
    created = time.time()
    stamp = (
        time.strftime("%Y%m%dT%H%M%S", time.gmtime(created)) + f".{int(created * 1e6) % 10**6:06d}"
    )
    final = Path(out_dir) / f"{stamp}-{region}"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
    entries: list[Entry] = []
    roots: list[tuple[Kind, str]] = []
    try:
        for i, path in enumerate(configs):
            src = Path(path).resolve()
            roots.append(("config", str(src)))
            stored = Path("config") / str(i) / src.name
            (work / stored).parent.mkdir(parents=True)
            shutil.copyfile(src, work / stored)
            entries.append(_entry("config", src, src, stored, work))
        for i, path in enumerate(databases):
            src = Path(path).resolve()
            roots.append(("db", str(src)))
            if not src.is_file():
                raise BackupError(f"database {src} does not exist")
            stored = Path("db") / str(i) / src.name
            (work / stored).parent.mkdir(parents=True)
            _sqlite_copy(src, work / stored)
            entries.append(_entry("db", src, src, stored, work))
        for i, path in enumerate(directories):
            root = Path(path).resolve()
            roots.append(("dir", str(root)))
            files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
            # Checkpoints first: a live audit trail only grows, so a checkpoint
            # copied before its trail is never ahead of the copy (after, it may be).
            files.sort(key=lambda p: not p.name.endswith(".checkpoint"))
            for f in files:
                stored = Path("dir") / str(i) / f.relative_to(root)
                (work / stored).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, work / stored)
                entries.append(_entry("dir", f, root, stored, work))
        manifest = Manifest(created, region, label, tuple(entries), tuple(roots))
        body = manifest.body()
        sig = _sign(body, signing_key)
        (work / MANIFEST).write_text(json.dumps({**body, "hmac": sig}, indent=1))
        os.replace(work, final)  # the backup appears whole or not at all
    except (OSError, sqlite3.Error) as e:
        shutil.rmtree(work, ignore_errors=True)
        raise BackupError(f"backup failed: {e}") from e
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def _entry(kind: Kind, src: Path, root: Path, stored: Path, work: Path) -> Entry:
    copy = work / stored
    return Entry(kind, str(src), str(root), str(stored), sha256_file(copy), copy.stat().st_size)


def verify(backup_dir: Path, *, signing_key: bytes | None = None) -> Manifest:
    """Every file present, unchanged, and nothing extra; BackupError naming the first
    problems otherwise."""
    backup_dir = Path(backup_dir)
    m = Manifest.read(backup_dir)
    problems: list[str] = []
    if signing_key is not None:
        want = _sign(m.body(), signing_key)
        if m.hmac is None or not hmac.compare_digest(want or "", m.hmac):
            problems.append("manifest signature does not match (manifest edited or wrong key)")
    listed = set()
    for e in m.entries:
        listed.add(e.stored)
        f = backup_dir / e.stored
        if not f.is_file():
            problems.append(f"missing {e.stored}")
        elif f.stat().st_size != e.size or sha256_file(f) != e.sha256:
            problems.append(f"checksum mismatch {e.stored}")
    for f in backup_dir.rglob("*"):
        rel = str(f.relative_to(backup_dir))
        if f.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"unexpected file {rel}")
    if problems:
        raise BackupError(
            f"backup {backup_dir.name} failed verification: " + "; ".join(problems[:5])
        )
    return m


def _map(path: str, mapping: Sequence[tuple[str, str]]) -> Path:
    for old, new in mapping:
        if path == old or path.startswith(old.rstrip("/") + "/"):
            return Path(new + path[len(old) :])
    return Path(path)


def restore(
    backup_dir: Path,
    *,
    mapping: Sequence[tuple[str, str]] = (),
    only: Iterable[Kind] = KINDS,
    signing_key: bytes | None = None,
) -> list[Path]:
    """Verify the whole backup, then put its files back (``mapping`` rewrites path
    prefixes: restoring another region's backup into this region's paths).
    A data directory is replaced whole; the one it replaces is renamed
    ``<dir>.pre-restore-<time>``, not deleted."""
    m = verify(backup_dir, signing_key=signing_key)
    kinds = set(only)
    written: list[Path] = []
    stamp = time.strftime("%Y%m%dT%H%M%S") + f".{time.time_ns() % 10**9:09d}"
    for kind, root in m.roots:
        if kind == "dir" and kind in kinds:
            target = _map(root, mapping)
            if target.is_dir():  # kept, not deleted: a restore never destroys data
                target.rename(target.with_name(f"{target.name}.pre-restore-{stamp}"))
            target.mkdir(parents=True, exist_ok=True)
    for e in m.entries:
        if e.kind not in kinds:
            continue
        target = _map(e.source, mapping)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.restore-tmp")
        shutil.copyfile(Path(backup_dir) / e.stored, tmp)
        if e.kind == "db":
            for suffix in ("-wal", "-shm", "-journal"):  # stale sidecars would be replayed
                Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, target)
        written.append(target)
    return written


def list_backups(out_dir: Path) -> list[Path]:
    """Complete backups, oldest first (partial ones never have the final name)."""
    if not Path(out_dir).is_dir():
        return []
    return sorted(p for p in Path(out_dir).iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def prune(out_dir: Path, keep: int) -> list[Path]:
    backups = list_backups(out_dir)
    gone = backups[: max(0, len(backups) - keep)]
    for p in gone:
        shutil.rmtree(p)
    return gone


def _key(path: Path | None) -> bytes | None:
    return path.read_bytes().strip() if path is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    """``inferline dr backup|restore|verify|list``; defaults from ``INFERLINE_DR__*``."""
    from router.settings import Settings  # the CLI is its own composition root

    s = Settings()
    p = argparse.ArgumentParser(prog="inferline dr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup", help="take one backup")
    b.add_argument("--out", type=Path, default=s.dr.backup_dir)
    b.add_argument("--config", type=Path, action="append", default=None, help="repeatable")
    b.add_argument("--db", type=Path, action="append", default=None, help="SQLite; repeatable")
    b.add_argument("--dir", type=Path, action="append", default=None, help="repeatable")
    b.add_argument("--label", default="")
    b.add_argument("--keep", type=int, default=s.dr.keep)
    r = sub.add_parser("restore", help="verify, then restore")
    r.add_argument("backup", type=Path, help="a backup directory, or 'latest'")
    r.add_argument("--from", dest="from_dir", type=Path, default=s.dr.backup_dir)
    r.add_argument("--map", action="append", default=[], metavar="OLD=NEW", help="path prefix")
    r.add_argument("--only", action="append", choices=KINDS, default=None)
    v = sub.add_parser("verify", help="check a backup's checksums")
    v.add_argument("backup", type=Path)
    sub.add_parser("list", help="list complete backups").add_argument(
        "--from", dest="from_dir", type=Path, default=s.dr.backup_dir
    )
    args = p.parse_args(argv)
    key = _key(s.dr.signing_key_file)
    try:
        if args.cmd == "backup":
            configs = (
                args.config
                if args.config is not None
                else [s.routing.table_path, *s.dr.config_files]
            )
            out = backup(
                args.out,
                configs=configs,
                databases=args.db if args.db is not None else list(s.dr.databases),
                directories=args.dir if args.dir is not None else list(s.dr.directories),
                region=s.region.name,
                label=args.label,
                signing_key=key,
            )
            prune(args.out, args.keep)
            print(out)
        elif args.cmd == "restore":
            target = args.backup
            if str(target) == "latest":
                found = list_backups(args.from_dir)
                if not found:
                    raise BackupError(f"no backup in {args.from_dir}")
                target = found[-1]
            mapping = [tuple(m.split("=", 1)) for m in args.map]
            if any(len(m) != 2 for m in mapping):
                p.error("--map takes OLD=NEW")
            written = restore(target, mapping=mapping, only=args.only or KINDS, signing_key=key)
            print(f"restored {len(written)} files from {target}")
        elif args.cmd == "verify":
            m = verify(args.backup, signing_key=key)
            print(
                f"ok: {len(m.entries)} files, region {m.region}, taken {time.ctime(m.created_at)}"
            )
        else:
            for b_dir in list_backups(args.from_dir):
                print(b_dir)
    except BackupError as e:
        print(f"error: {e.public_message}", file=sys.stderr)
        return 1
    return 0
