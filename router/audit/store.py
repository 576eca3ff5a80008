"""Where sealed audit records go: an append-only JSON-lines file by default.

``AuditStore`` is the pluggable part (a WORM bucket, a ledger database). The
default ``JsonlAuditStore`` appends one record per line under an exclusive
``flock`` (on ``<path>.lock``), so several writers (router workers, the purge
job) extend one chain: whoever holds the lock reads the current head (the last
line) if the file grew behind its back, seals its batch after it and appends.
With ``segment_bytes`` set, a full active file is renamed to
``<path>.<first seq, 12 digits>`` and the chain continues in a fresh one, so
old segments can be shipped to archive storage; ``segments()`` lists them in
chain order for verification. Durability: with
``fsync`` on (default), every append is fsynced before it returns, so an
acknowledged admin action survives a crash; prediction records are written in
batches by a background task, one fsync per batch. After each append the head
(seq, hash, and an HMAC of them when keyed) is written atomically to the
checkpoint file; keep that file somewhere a rewriter of the trail cannot
reach (another volume, a WORM store) to detect truncation of the tail.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from io import FileIO
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog

from router.audit.chain import GENESIS, canonical, checkpoint_mac, seal
from router.security.keyset import Keyset

log = structlog.get_logger("router.audit")


def iso_utc(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditStore(Protocol):
    def append(self, events: Sequence[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
        """Seal ``events`` after the current head, persist them, return the records.

        ``ts`` is ``now`` unless an event carries its own epoch time in "at"."""
        ...

    def close(self) -> None: ...


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoint")


def _last_line(f: FileIO | BinaryIO, size: int) -> bytes:
    """The last non-empty line of an open binary file of ``size`` bytes."""
    block = 4096
    pos, tail = size, b""
    while pos > 0:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
        stripped = tail.rstrip(b"\n")
        nl = stripped.rfind(b"\n")
        if nl >= 0:
            return stripped[nl + 1 :]
    return tail.strip(b"\n")


def segments(path: Path) -> list[Path]:
    """The trail's files in chain order: rotated segments ``<name>.<first seq>``, then
    the active file."""
    rotated = []
    for p in path.parent.glob(f"{path.name}.*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), p))
    files = [p for _, p in sorted(rotated)]
    return [*files, path] if path.exists() else files


def _first_seq(path: Path) -> int:
    with path.open("rb") as f:
        return int(json.loads(f.readline())["seq"])


class JsonlAuditStore:
    def __init__(
        self,
        path: Path,
        *,
        keys: Callable[[], Keyset | None] = lambda: None,
        fsync: bool = True,
        checkpoint: Path | None = None,
        segment_bytes: int | None = None,
    ) -> None:
        self.path = path
        self.checkpoint = checkpoint
        self.segment_bytes = segment_bytes
        self._keys = keys
        self._fsync = fsync
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Writers serialize on a lock file that is never rotated; the active
        # file is reopened whenever another writer rotated it away.
        self._lockfile = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o640)
        self._file = self._open()
        self._known_size = -1  # forces a head read on first append
        self._seq, self._head = 0, GENESIS

    def _open(self) -> FileIO:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        return FileIO(fd, "r+", closefd=True)

    def _ensure_current(self) -> None:
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            self._file.close()
            self._file = self._open()
            self._known_size = -1

    def _repair_torn_tail(self, size: int) -> int:
        """Cut a torn last line (a crash or a full disk stopped an append part-way;
        what it held was never acknowledged) off the trail, keeping its bytes in
        ``<name>.torn.<offset>`` for inspection, so the chain continues from the
        last whole record. Returns the new size."""
        self._file.seek(size - 1)
        if self._file.read(1) == b"\n":
            return size
        end = size
        while end > 0:
            start = max(0, end - 4096)
            self._file.seek(start)
            nl = self._file.read(end - start).rfind(b"\n")
            if nl >= 0:
                end = start + nl + 1
                break
            end = start
        self._file.seek(end)
        torn = self._file.read(size - end)
        with open(self.path.with_name(f"{self.path.name}.torn.{end}"), "wb") as f:
            f.write(torn)
        os.ftruncate(self._file.fileno(), end)
        log.error("audit.torn_tail_repaired", offset=end, torn_bytes=len(torn))
        return end

    def _sync_head(self, size: int) -> None:
        if size == self._known_size:
            return
        if size > 0:
            size = self._repair_torn_tail(size)
        if size > 0:
            last = json.loads(_last_line(self._file, size))
        else:  # a fresh active file continues the newest rotated segment
            rotated = segments(self.path)[:-1]
            last = None
            if rotated:
                with rotated[-1].open("rb") as f:
                    last = json.loads(_last_line(f, rotated[-1].stat().st_size))
        if last is None:
            self._seq, self._head = 0, GENESIS
        else:
            self._seq, self._head = int(last["seq"]), str(last["hash"])
        self._known_size = size

    def _rotate_if_full(self, size: int) -> None:
        if self.segment_bytes is None or size < self.segment_bytes:
            return
        first = _first_seq(self.path)
        os.rename(self.path, self.path.with_name(f"{self.path.name}.{first:012d}"))
        self._file.close()
        self._file = self._open()
        self._known_size = 0  # the head carries over from memory

    def append(self, events: Sequence[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
        if not events:
            return []
        keys = self._keys()
        ts = iso_utc(now)
        with self._lock:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX)
            try:
                self._ensure_current()
                self._sync_head(os.fstat(self._file.fileno()).st_size)
                self._rotate_if_full(self._known_size)
                records, lines = [], []
                seq, head = self._seq, self._head
                for event in events:
                    seq += 1
                    at = event.get("at")  # when it happened, if queued before this append
                    when = iso_utc(at) if isinstance(at, float) else ts
                    rec = seal(event, seq=seq, ts=when, prev_hash=head, keys=keys)
                    head = rec["hash"]
                    records.append(rec)
                    lines.append(canonical(rec) + b"\n")
                data = b"".join(lines)
                written = 0
                while written < len(data):
                    written += self._file.write(data[written:]) or 0
                if self._fsync:
                    os.fsync(self._file.fileno())
                self._known_size = os.fstat(self._file.fileno()).st_size
                self._seq, self._head = seq, head
                if self.checkpoint is not None:
                    self._write_checkpoint(seq, head, keys)
            finally:
                fcntl.flock(self._lockfile, fcntl.LOCK_UN)
        return records

    def _write_checkpoint(self, seq: int, head: str, keys: Keyset | None) -> None:
        assert self.checkpoint is not None
        body: dict[str, Any] = {"seq": seq, "hash": head}
        if keys is not None:
            body |= {"kid": keys.primary, "mac": checkpoint_mac(seq, head, keys)}
        tmp = self.checkpoint.with_name(f".{self.checkpoint.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(canonical(body))
            if self._fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint)

    def close(self) -> None:
        self._file.close()
        os.close(self._lockfile)
