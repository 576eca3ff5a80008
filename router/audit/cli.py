"""``inferline audit verify PATH``: check a trail's hash chain (and its checkpoint).

PATH is the active file; its rotated segments (``PATH.<first seq>``) are read
first, in order, so the whole chain from the genesis record is checked.

Exit 0 when every record continues the chain (and the head matches the
checkpoint, when there is one); 1 with the first bad seq otherwise; 2 when the
files cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from router.audit.chain import verify
from router.audit.store import checkpoint_path, segments
from router.errors import ConfigError
from router.security.keyset import load_keyset


def _lines(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with path.open("rb") as f:
            yield from f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inferline audit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="verify the hash chain of an audit trail")
    v.add_argument("path", type=Path, help="the active audit JSONL file")
    v.add_argument("--key-file", type=Path, help="audit HMAC keyset (when the trail is keyed)")
    v.add_argument(
        "--checkpoint", type=Path, help="head checkpoint (default: PATH.checkpoint if present)"
    )
    v.add_argument("--no-checkpoint", action="store_true", help="ignore any checkpoint")
    args = p.parse_args(argv)

    try:
        keys = load_keyset(args.key_file) if args.key_file else None
        cp_file = args.checkpoint or checkpoint_path(args.path)
        checkpoint = None
        if not args.no_checkpoint and (args.checkpoint or cp_file.exists()):
            checkpoint = json.loads(cp_file.read_text())
            if not isinstance(checkpoint, dict):
                # `null`, a list...: never "no checkpoint" (that would skip the
                # anchored head and pass a truncated trail): malformed.
                checkpoint = {}
        files = segments(args.path)
        if not files:
            raise FileNotFoundError(f"no audit trail at {args.path}")
        verdict = verify(_lines(files), keys=keys, checkpoint=checkpoint)
    except (OSError, ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if verdict.reason.startswith("record is keyed"):
        print(f"error: {verdict.reason}", file=sys.stderr)
        return 2
    anchored = " (checkpoint matches)" if checkpoint is not None else " (no checkpoint)"
    if verdict.ok:
        print(
            f"OK: {verdict.records} records, head seq {verdict.head_seq} "
            f"hash {verdict.head_hash[:16]}...{anchored}"
        )
        return 0
    where = f"first bad seq {verdict.first_bad_seq}" if verdict.first_bad_seq else "checkpoint"
    print(f"TAMPERED: {where}: {verdict.reason} ({verdict.records} records verified before it)")
    return 1
