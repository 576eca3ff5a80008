"""Capture files and the retention purge.

Layout: ``<root>/<class>/<tenant>/<segment start, epoch s>.jsonl``, one sealed
record per line. A segment spans ``segment_s`` seconds, so the purge deletes
whole files: a segment goes once its newest possible record is past the
class's retention, i.e. a record lives at most retention + segment_s. Files of
a class with no configured retention are kept (and reported), never guessed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def safe_name(name: str) -> bool:
    """Tenant and class names become directory names: no separators, no dots first."""
    return bool(_SAFE_NAME.fullmatch(name))


@dataclass
class PurgeReport:
    now: float
    deleted_records: dict[str, int] = field(default_factory=dict)
    deleted_files: int = 0
    remaining_records: int = 0
    oldest_remaining_ts: float | None = None
    unmanaged_classes: list[str] = field(default_factory=list)

    def as_details(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "deleted_records": self.deleted_records,
            "deleted_files": self.deleted_files,
            "remaining_records": self.remaining_records,
            "oldest_remaining_ts": self.oldest_remaining_ts,
            "unmanaged_classes": self.unmanaged_classes,
        }


class CaptureStore:
    def __init__(self, root: Path, segment_s: float) -> None:
        self.root = root
        self.segment_s = segment_s

    def _segment(self, cls: str, tenant: str, ts: float) -> Path:
        start = int(ts // self.segment_s * self.segment_s)
        return self.root / cls / tenant / f"{start}.jsonl"

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append sealed records (each with "ts", "class", "tenant")."""
        by_file: dict[Path, list[bytes]] = {}
        for rec in records:
            path = self._segment(rec["class"], rec["tenant"], rec["ts"])
            line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
            by_file.setdefault(path, []).append(line)
        for path, lines in by_file.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(b"".join(lines))

    def segments(self) -> Iterator[tuple[str, str, float, Path]]:
        """(class, tenant, segment start, path) for every capture file."""
        if not self.root.is_dir():
            return
        for cls_dir in sorted(self.root.iterdir()):
            if not cls_dir.is_dir():
                continue
            for tenant_dir in sorted(cls_dir.iterdir()):
                if not tenant_dir.is_dir():
                    continue
                for seg in sorted(tenant_dir.glob("*.jsonl")):
                    try:
                        start = float(seg.stem)
                    except ValueError:
                        continue
                    yield cls_dir.name, tenant_dir.name, start, seg

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record; a torn line (a crash mid-append wrote part of one) is
        skipped: it holds no record."""
        for _, _, _, path in self.segments():
            with path.open("rb") as f:
                for line in f:
                    record = _parse(line)
                    if record is not None:
                        yield record

    def purge(self, retention_s: Mapping[str, float], now: float) -> PurgeReport:
        """Delete every segment whose records are all past their class's retention."""
        report = PurgeReport(now=now)
        for cls, _tenant, start, path in list(self.segments()):
            keep_s = retention_s.get(cls)
            try:
                count, first_ts = _scan(path)
            except FileNotFoundError:  # another purger (router worker, job) got there first
                continue
            if keep_s is not None and start + self.segment_s + keep_s <= now:
                path.unlink(missing_ok=True)
                report.deleted_files += 1
                report.deleted_records[cls] = report.deleted_records.get(cls, 0) + count
                continue
            if keep_s is None and cls not in report.unmanaged_classes:
                report.unmanaged_classes.append(cls)
            report.remaining_records += count
            if first_ts is not None and (
                report.oldest_remaining_ts is None or first_ts < report.oldest_remaining_ts
            ):
                report.oldest_remaining_ts = first_ts
        return report


def _parse(line: bytes) -> dict[str, Any] | None:
    """One line's record with its timestamp; None for a blank or torn line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
        float(record["ts"])
    except (ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def _scan(path: Path) -> tuple[int, float | None]:
    """(records, oldest timestamp) of one segment. Torn lines are not records:
    one must not stop the purge of this segment or any after it."""
    count, oldest = 0, None
    with path.open("rb") as f:
        for line in f:
            record = _parse(line)
            if record is None:
                continue
            ts = float(record["ts"])
            oldest = ts if oldest is None else min(oldest, ts)
            count += 1
    return count, oldest
