"""``inferline keys rotate FILE``: add a fresh key to a keyset file and make it primary.

Creates the file (mode 0600) when absent. Running routers pick the new primary
up within their key reload interval and record the rotation in the audit
trail; older keys stay in the file so existing data can still be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router.errors import ConfigError
from router.security.keyset import rotate_keyset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inferline keys", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rotate", help="add a new primary key (creating the file if needed)")
    r.add_argument("path", type=Path)
    args = p.parse_args(argv)
    try:
        kid = rotate_keyset(args.path)
    except (ConfigError, OSError) as e:  # not a keyset, no such directory...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.path}: primary key is now {kid}")
    return 0
