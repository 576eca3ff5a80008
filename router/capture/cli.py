"""``inferline capture purge|show``: the retention job and a debugging reader.

Defaults come from the router's own settings (``INFERLINE_CAPTURE__*``,
``INFERLINE_AUDIT__*``), so a CronJob with the router's environment purges
what the router wrote. ``purge`` deletes expired capture files and proves it
ran: it appends a ``capture.purge`` record (counts, oldest remaining record)
to the audit trail (the same hash chain; appends are flock'd), prints the
report as JSON and, with ``--prom-file``, writes the last-success timestamp
for a node-exporter textfile collector. ``show`` decrypts records (needs the
KMS keyset) and prints them as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag

from router.audit.store import JsonlAuditStore, checkpoint_path
from router.capture.envelope import open_fields
from router.capture.store import CaptureStore
from router.errors import ConfigError
from router.security.keyset import KeysetFile
from router.security.kms import LocalKeysetKms, UnwrapError
from router.settings import Settings, parse_duration


def _retention(items: list[str] | None, settings: Settings) -> dict[str, float]:
    if not items:
        return settings.capture.retention_s()
    out = {}
    for item in items:
        name, _, text = item.partition("=")
        out[name] = parse_duration(text)
    return out


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    root = args.dir or settings.capture.dir
    if root is None:
        print("error: no capture dir (--dir or INFERLINE_CAPTURE__DIR)", file=sys.stderr)
        return 2
    retention = _retention(args.retention, settings)
    now = args.now if args.now is not None else time.time()
    # The audit trail is opened before anything is deleted: a purge whose proof
    # cannot be written must not delete (its counts could not be recorded later).
    audit_path = args.audit or settings.audit.path
    store: JsonlAuditStore | None = None
    if audit_path is not None:
        key_file = args.audit_key_file or settings.audit.key_file
        keys = KeysetFile(key_file) if key_file else None
        store = JsonlAuditStore(
            audit_path,
            keys=(lambda: keys.current) if keys else lambda: None,
            checkpoint=settings.audit.checkpoint_path or checkpoint_path(audit_path),
            segment_bytes=settings.audit.segment_bytes,
        )
    report = CaptureStore(root, args.segment_s or settings.capture.segment_s).purge(retention, now)
    if store is not None:
        try:
            store.append(
                [
                    {
                        "actor": "job:capture-purge",
                        "action": "capture.purge",
                        "subject": str(root),
                        "details": report.as_details(),
                    }
                ],
                now=time.time(),
            )
        finally:
            store.close()
    if args.prom_file is not None:
        tmp = args.prom_file.with_name(f".{args.prom_file.name}.tmp")
        tmp.write_text(
            "# TYPE inferline_capture_purge_last_success_timestamp_seconds gauge\n"
            f"inferline_capture_purge_last_success_timestamp_seconds {report.now}\n"
        )
        tmp.replace(args.prom_file)
    print(json.dumps(report.as_details(), sort_keys=True))
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    root = args.dir or settings.capture.dir
    keyset = args.kms_keyset or settings.capture.kms_keyset_file
    if root is None or keyset is None:
        print("error: need --dir and --kms-keyset (or the settings)", file=sys.stderr)
        return 2
    kms = LocalKeysetKms(KeysetFile(keyset))
    unreadable = 0
    for n, rec in enumerate(CaptureStore(root, settings.capture.segment_s).records()):
        if args.limit and n >= args.limit:
            break
        meta = {k: v for k, v in rec.items() if k not in ("enc", "dek")}
        try:
            fields = open_fields(kms, rec)
        except (UnwrapError, InvalidTag, KeyError, TypeError, ValueError) as e:
            # Another keyset, a damaged or tampered record: say which, go on.
            unreadable += 1
            print(f"error: record {rec.get('id')!r} cannot be opened: {type(e).__name__}",
                  file=sys.stderr)  # fmt: skip
            continue
        print(json.dumps({**meta, "fields": fields}, sort_keys=True))
    return 1 if unreadable else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inferline capture", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    purge = sub.add_parser("purge", help="delete expired captures; audit the run")
    purge.add_argument("--dir", type=Path)
    purge.add_argument(
        "--retention", action="append", metavar="CLASS=DURATION", help="e.g. debug=7d"
    )
    purge.add_argument("--segment-s", type=float, default=None)
    purge.add_argument("--audit", type=Path, help="audit trail to record the run in")
    purge.add_argument("--audit-key-file", type=Path)
    purge.add_argument("--now", type=float, help="epoch seconds (tests, backfills)")
    purge.add_argument("--prom-file", type=Path, help="textfile-collector output")
    show = sub.add_parser("show", help="decrypt and print capture records")
    show.add_argument("--dir", type=Path)
    show.add_argument("--kms-keyset", type=Path)
    show.add_argument("--limit", type=int, default=0)
    args = p.parse_args(argv)
    try:
        settings = Settings()
        return _purge(args, settings) if args.cmd == "purge" else _show(args, settings)
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
